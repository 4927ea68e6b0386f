//! Command line arguments and the validated settings a run uses.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{ArgGroup, Parser};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use thiserror::Error;

use crate::credentials::{self, CredentialsError, Passwords, Secret};
use crate::payload::PayloadKind;
use crate::plan;
use crate::template::{self, TemplateError};

/// Simulated devices: each connects to the gateway over MQTT, publishes JSON readings at
/// QoS 1 and counts PUBACKs. Exits 0 only when every message was acknowledged.
#[derive(Parser, Debug)]
#[command(name = "tributary-simulator", version, about, long_about = None)]
#[command(group(ArgGroup::new("amount").required(true).args(["messages", "duration_seconds"])))]
pub struct Cli {
    /// The gateway's host name or address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The gateway's MQTT port (usually 1883, or 8883 with --tls).
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// How many devices connect at once.
    #[arg(long, default_value_t = 1)]
    pub devices: u32,
    /// Messages in total, spread evenly over the devices.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Instead of a total: send for this many seconds, then wait for outstanding PUBACKs.
    #[arg(long)]
    pub duration_seconds: Option<u64>,
    /// Messages per second across all devices; 0 sends as fast as PUBACKs allow.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// MQTT QoS of each publish; only 1 (at least once) is supported.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=1))]
    pub qos: u8,
    // Help texts never spell the plain number placeholder: clap turns it into a line break.
    /// Topic template: `{device}` is the device id; the device number placeholders are
    /// those of --username-template.
    #[arg(long, default_value = "devices/{device}/telemetry")]
    pub topic: String,
    /// Device id (MQTT user name and client id) template: the device number from 1, plain
    /// as in the default, or `{n:0W}` zero-padded to W digits.
    #[arg(long, default_value = "machine-{n}")]
    pub username_template: String,
    /// Password, or a password template with the placeholders of --topic. Prefer the
    /// environment variable: command lines are visible to other users.
    #[arg(
        long,
        env = "TRIBUTARY_DEVICE_PASSWORD",
        hide_env_values = true,
        value_name = "TEMPLATE"
    )]
    pub password_template: Option<String>,
    /// A file of `username:password` lines (`#` comments); takes precedence over the
    /// password template.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// A directory with one `DEVICE/password` file per device, such as a projected volume
    /// of the Device resources' `<name>-credentials` Secrets; wins over --password-file and
    /// the password template, which remain for the devices it does not hold.
    #[arg(long, value_name = "DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// Unacknowledged messages per device at most.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub max_inflight: u16,
    /// The kind of readings devices send.
    #[arg(long, value_enum, default_value = "factory")]
    pub payload: PayloadKind,
    /// Make every K-th reading of each device out of range (see the README).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
    pub out_of_range_every: Option<u64>,
    /// Connect with TLS.
    #[arg(long)]
    pub tls: bool,
    /// PEM file of the CA(s) that sign the gateway's certificate (default: system roots).
    #[arg(long, requires = "tls")]
    pub ca_file: Option<PathBuf>,
    /// Longest wait for the TCP/TLS connection and the CONNACK (gateways check passwords
    /// with a deliberately slow hash, so many devices connecting at once queue up).
    #[arg(long, default_value_t = 30)]
    pub connect_timeout_seconds: u64,
    /// A connection whose oldest unacknowledged message waits this long is dropped and its
    /// messages sent again.
    #[arg(long, default_value_t = 30)]
    pub ack_timeout_seconds: u64,
    /// A device whose messages wait this long without any PUBACK (across reconnects, or
    /// failing to connect) gives up.
    #[arg(long, default_value_t = 60)]
    pub give_up_seconds: u64,
    /// Print the final summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write every acknowledged message to this file as a `device-id seq` line (created or
    /// truncated), to reconcile exactly what reached storage with what was acknowledged.
    #[arg(long, value_name = "FILE")]
    pub ack_log: Option<PathBuf>,
}

/// Why the arguments do not make a run.
#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("--devices must be at least 1")]
    NoDevices,
    #[error("--rate must be a number ≥ 0")]
    BadRate,
    #[error("--username-template: {0}")]
    Username(TemplateError),
    #[error("--topic: {0}")]
    Topic(TemplateError),
    #[error("--username-template gives device {n} the id {id:?} of another device; use {{n}}")]
    DuplicateId { n: u32, id: String },
    #[error(
        "no password: set TRIBUTARY_DEVICE_PASSWORD (or --password-template), --password-file or --credentials-dir"
    )]
    NoPassword,
    #[error("{0}")]
    Credentials(#[from] CredentialsError),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("creating {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
}

/// One simulated device.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// 0-based position among the devices (for pacing).
    pub index: u32,
    /// The device number (`{n}`), from 1.
    pub n: u32,
    /// Device id: MQTT user name and client id.
    pub id: String,
    /// The topic it publishes to.
    pub topic: String,
    /// Its password.
    pub password: Secret,
    /// How many messages it sends; `None` in a timed run.
    pub messages: Option<u64>,
}

/// Everything a run needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    /// The TLS client configuration, with `--tls`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub devices: Vec<DeviceSpec>,
    /// The planned total (`--messages`).
    pub total: Option<u64>,
    /// The sending time (`--duration-seconds`).
    pub duration: Option<Duration>,
    pub rate: f64,
    pub max_inflight: u16,
    pub payload: PayloadKind,
    pub out_of_range_every: Option<u64>,
    pub connect_timeout: Duration,
    pub ack_timeout: Duration,
    pub give_up: Duration,
    pub json: bool,
    /// Where acknowledged messages are written (`--ack-log`).
    pub ack_log: Option<AckLog>,
}

/// The `--ack-log` file: one `device-id seq` line per acknowledged message.
#[derive(Debug, Clone)]
pub struct AckLog {
    path: String,
    file: Arc<Mutex<BufWriter<File>>>,
}

impl AckLog {
    /// Creates (or truncates) the file.
    pub fn create(path: &Path) -> Result<Self, SettingsError> {
        let file = File::create(path).map_err(|source| SettingsError::Create {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            path: path.display().to_string(),
            file: Arc::new(Mutex::new(BufWriter::new(file))),
        })
    }

    /// Records that `device` had message `seq` acknowledged.
    pub fn record(&self, device: &str, seq: u64) -> std::io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        writeln!(file, "{device} {seq}")
    }

    /// Writes out what is buffered; the error names the file.
    pub fn flush(&self) -> Result<(), String> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.flush()
            .map_err(|e| format!("writing {}: {e}", self.path))
    }
}

/// Where the passwords come from: the credentials directory first, then the password
/// file, then the template.
fn passwords(cli: &Cli) -> Result<Passwords, SettingsError> {
    let fallback = match (&cli.password_file, &cli.password_template) {
        (Some(path), _) => Some(Passwords::File(credentials::parse_password_file(&read(
            path,
        )?)?)),
        (None, Some(template)) => Some(Passwords::Template(Secret::new(template.as_str()))),
        (None, None) => None,
    };
    match (&cli.credentials_dir, fallback) {
        (Some(dir), fallback) => {
            if !dir.is_dir() {
                return Err(SettingsError::Read {
                    path: dir.display().to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "--credentials-dir is not a directory",
                    ),
                });
            }
            Ok(Passwords::Directory {
                dir: dir.clone(),
                fallback: fallback.map(Box::new),
            })
        }
        (None, Some(fallback)) => Ok(fallback),
        (None, None) => Err(SettingsError::NoPassword),
    }
}

impl Settings {
    /// Checks the arguments, expands every template and reads the files they name.
    pub fn from_cli(cli: Cli) -> Result<Self, SettingsError> {
        if cli.devices == 0 {
            return Err(SettingsError::NoDevices);
        }
        if !(cli.rate.is_finite() && cli.rate >= 0.0) {
            return Err(SettingsError::BadRate);
        }
        let passwords = passwords(&cli)?;
        let mut seen = HashSet::new();
        let mut devices = Vec::with_capacity(cli.devices as usize);
        for index in 0..cli.devices {
            let n = index + 1;
            let id =
                template::device_id(&cli.username_template, n).map_err(SettingsError::Username)?;
            if !seen.insert(id.clone()) {
                return Err(SettingsError::DuplicateId { n, id });
            }
            let topic = template::topic(&cli.topic, n, &id).map_err(SettingsError::Topic)?;
            let password = passwords.for_device(n, &id)?;
            let messages = cli
                .messages
                .map(|total| plan::messages_for_device(total, cli.devices, index));
            devices.push(DeviceSpec {
                index,
                n,
                id,
                topic,
                password,
                messages,
            });
        }
        let tls = if cli.tls {
            Some(tls_config(cli.ca_file.as_deref())?)
        } else {
            None
        };
        Ok(Self {
            host: cli.host,
            port: cli.port,
            tls,
            devices,
            total: cli.messages,
            duration: cli.duration_seconds.map(Duration::from_secs),
            rate: cli.rate,
            max_inflight: cli.max_inflight,
            payload: cli.payload,
            out_of_range_every: cli.out_of_range_every,
            connect_timeout: Duration::from_secs(cli.connect_timeout_seconds.max(1)),
            ack_timeout: Duration::from_secs(cli.ack_timeout_seconds.max(1)),
            give_up: Duration::from_secs(cli.give_up_seconds.max(1)),
            json: cli.json,
            ack_log: cli.ack_log.as_deref().map(AckLog::create).transpose()?,
        })
    }
}

fn read(path: &Path) -> Result<String, SettingsError> {
    std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// A TLS client config trusting `ca_file`, or the system's roots without one.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, SettingsError> {
    let tls = |text: String| SettingsError::Tls(text);
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| tls(format!("{}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| tls(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            // Unreadable system certificates are skipped; an empty store is refused below.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(tls("no CA certificates to trust".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["tributary-simulator"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("arguments parse")
    }

    #[test]
    fn devices_get_ids_topics_passwords_and_their_share() {
        let settings = Settings::from_cli(cli(&[
            "--devices",
            "3",
            "--messages",
            "10",
            "--password-template",
            "pw-{n}",
            "--topic",
            "factory/line-1/{device}/telemetry",
        ]))
        .expect("settings");
        let device = &settings.devices[2];
        assert_eq!(device.id, "machine-3");
        assert_eq!(device.topic, "factory/line-1/machine-3/telemetry");
        assert_eq!(device.password.expose(), "pw-3");
        let shares: Vec<Option<u64>> = settings.devices.iter().map(|d| d.messages).collect();
        assert_eq!(shares, vec![Some(4), Some(3), Some(3)]);
    }

    #[test]
    fn a_total_or_a_duration_is_required_but_not_both() {
        let base = ["tributary-simulator", "--password-template", "x"];
        assert!(Cli::try_parse_from(base).is_err());
        let both = [&base[..], &["--messages", "1", "--duration-seconds", "1"]].concat();
        assert!(Cli::try_parse_from(both).is_err());
    }

    #[test]
    fn only_qos_1_is_accepted() {
        let args = ["tributary-simulator", "--messages", "1", "--qos", "2"];
        assert!(Cli::try_parse_from(args).is_err());
    }

    #[test]
    fn same_id_for_two_devices_is_refused() {
        let result = Settings::from_cli(cli(&[
            "--devices",
            "2",
            "--messages",
            "2",
            "--username-template",
            "press",
            "--password-template",
            "x",
        ]));
        assert!(matches!(
            result,
            Err(SettingsError::DuplicateId { n: 2, .. })
        ));
    }

    #[test]
    fn ack_log_gets_one_line_per_acknowledged_message() {
        let path = std::env::temp_dir().join(format!("ack-log-{}.txt", std::process::id()));
        let settings = Settings::from_cli(cli(&[
            "--messages",
            "2",
            "--password-template",
            "x",
            "--ack-log",
            path.to_str().expect("utf-8 path"),
        ]))
        .expect("settings");
        let log = settings.ack_log.expect("ack log");
        log.record("machine-1", 1).expect("record");
        log.record("machine-1", 2).expect("record");
        log.flush().expect("flush");
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::remove_file(&path).ok();
        assert_eq!(text, "machine-1 1\nmachine-1 2\n");
    }

    #[test]
    fn credentials_dir_gives_each_device_its_generated_password() {
        let dir = std::env::temp_dir().join(format!("credentials-dir-{}", std::process::id()));
        for n in 1..=2 {
            std::fs::create_dir_all(dir.join(format!("machine-{n}"))).expect("folder");
            std::fs::write(
                dir.join(format!("machine-{n}/password")),
                format!("gen-{n}"),
            )
            .expect("write");
        }
        let path = dir.to_str().expect("utf-8 path");
        let mut args = cli(&[
            "--devices",
            "3",
            "--messages",
            "3",
            "--credentials-dir",
            path,
        ]);
        args.password_template = None; // whatever the environment holds
        let error = Settings::from_cli(args).expect_err("machine-3 has none");
        assert!(error.to_string().contains("\"machine-3\""), "{error}");
        let mut args = cli(&[
            "--devices",
            "2",
            "--messages",
            "2",
            "--credentials-dir",
            path,
        ]);
        args.password_template = Some("template".into());
        let settings = Settings::from_cli(args).expect("settings");
        std::fs::remove_dir_all(&dir).ok();
        let passwords: Vec<&str> = settings
            .devices
            .iter()
            .map(|d| d.password.expose())
            .collect();
        assert_eq!(passwords, ["gen-1", "gen-2"]);
        let missing = cli(&["--messages", "1", "--credentials-dir", "/nonexistent/dir"]);
        let error = Settings::from_cli(missing).expect_err("no directory");
        assert!(error.to_string().contains("/nonexistent/dir"), "{error}");
    }

    #[test]
    fn missing_password_is_a_clear_error() {
        let mut args = cli(&["--messages", "1"]);
        args.password_template = None; // whatever the environment holds
        let error = Settings::from_cli(args).expect_err("no password");
        assert!(error.to_string().contains("TRIBUTARY_DEVICE_PASSWORD"));
    }
}
