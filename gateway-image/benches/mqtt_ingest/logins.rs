//! BENCH_MODE=logins: the server's resident memory around a burst of MQTT password logins,
//! our gateway (argon2 password file) beside Mosquitto (`password_file` made by
//! `mosquitto_passwd`), each on a fresh process of its own.
//!
//! BENCH_LOGINS (1000) logins, every other one with a wrong password, each as a different
//! device of the password file, BENCH_LOGIN_PARALLEL (8) at a time. Memory before the burst,
//! at its peak (the kernel's high-water mark `VmHWM`, and samples every 50 ms) and
//! BENCH_LOGIN_SETTLE_SECONDS (10) after it. With BENCH_SAMPLES_DIR set, the samples go to
//! `logins-rss.csv` there, for the report's chart.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::servers::{self, rss_kib, status_kib, Servers};
use crate::wire::{self, PASSWORD};
use crate::{bench_line, env_usize};

/// What one server's burst measured.
struct Burst {
    before_kib: u64,
    peak_kib: u64,
    after_kib: u64,
    seconds: f64,
    accepted: usize,
    samples: Vec<(f64, u64)>,
}

/// Device `index`'s name and the password this burst logs in with (wrong for odd indices).
fn credentials(index: usize) -> (String, String) {
    let password = if index.is_multiple_of(2) {
        PASSWORD.to_owned()
    } else {
        format!("wrong-{index}")
    };
    (format!("dev-{index}"), password)
}

/// The gateway's password file: every device with the same argon2 hash of the benchmark
/// password, at the recommended cost (what `tributary-gateway hash-password` writes) unless
/// BENCH_LOGIN_HASH=cheap.
fn gateway_passwords(count: usize) -> String {
    let cheap = std::env::var("BENCH_LOGIN_HASH").is_ok_and(|v| v == "cheap");
    let hash = if cheap {
        tributary_gateway::auth::hash_password_cheap(PASSWORD.as_bytes())
    } else {
        tributary_gateway::auth::hash_password(PASSWORD.as_bytes())
    }
    .unwrap();
    (0..count)
        .map(|index| format!("dev-{index}:{hash}\n"))
        .collect()
}

/// Mosquitto's password file for the same devices, hashed by `mosquitto_passwd -U`.
fn mosquitto_passwords(count: usize) -> std::path::PathBuf {
    let path = servers::temp_dir("mosquitto-logins").join("passwords");
    let plain: String = (0..count)
        .map(|index| format!("dev-{index}:{PASSWORD}\n"))
        .collect();
    std::fs::write(&path, plain).unwrap();
    let status = Command::new("mosquitto_passwd")
        .arg("-U")
        .arg(&path)
        .status()
        .expect("mosquitto_passwd (Debian package `mosquitto`)");
    assert!(status.success(), "mosquitto_passwd -U failed");
    path
}

/// Samples `pid`'s resident memory every 50 ms until `stop`; (seconds since `start`, KiB).
async fn sample(pid: u32, start: Instant, stop: Arc<AtomicBool>) -> Vec<(f64, u64)> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        samples.push((start.elapsed().as_secs_f64(), rss_kib(pid)));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    samples
}

/// Runs the burst against `addr`, served by process `pid`.
async fn burst(addr: &str, pid: u32, count: usize) -> Burst {
    let parallel = env_usize("BENCH_LOGIN_PARALLEL", 8);
    let settle = Duration::from_secs(env_usize("BENCH_LOGIN_SETTLE_SECONDS", 10) as u64);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_kib = rss_kib(pid);
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample(pid, start, stop.clone()));
    let codes: Vec<u8> = futures::stream::iter(0..count)
        .map(|index| async move {
            let (user, password) = credentials(index);
            let code = wire::login(addr, &format!("login-{index}"), &user, &password).await;
            code.unwrap_or_else(|error| panic!("login {index} to {addr}: {error}"))
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let seconds = start.elapsed().as_secs_f64();
    let hwm_kib = status_kib(pid, "VmHWM");
    tokio::time::sleep(settle).await;
    let after_kib = rss_kib(pid);
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap();
    let sampled_peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    Burst {
        before_kib,
        peak_kib: hwm_kib.max(sampled_peak),
        after_kib,
        seconds,
        accepted: codes.iter().filter(|code| **code == 0).count(),
        samples,
    }
}

fn write_samples(dir: &Path, runs: &[(&str, &Burst)]) {
    let path = dir.join("logins-rss.csv");
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "server,seconds,rss_kib").unwrap();
    for (name, run) in runs {
        for (seconds, kib) in &run.samples {
            writeln!(file, "{name},{seconds:.3},{kib}").unwrap();
        }
    }
    eprintln!("bench: login memory samples in {}", path.display());
}

fn report(name: &str, run: &Burst, count: usize) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "logins {name:<10} {count} logins in {:.1} s ({} accepted): RSS before {:.1} MiB, peak {:.1} MiB, {:.1} MiB after",
        run.seconds,
        run.accepted,
        mib(run.before_kib),
        mib(run.peak_kib),
        mib(run.after_kib)
    );
    if run.accepted != count.div_ceil(2) {
        eprintln!(
            "bench: WARNING {name} accepted {} logins, expected {}",
            run.accepted,
            count.div_ceil(2)
        );
    }
    let extra = format!("logins={count}");
    bench_line("login_rss_before", name, mib(run.before_kib), "MiB", &extra);
    bench_line("login_rss_peak", name, mib(run.peak_kib), "MiB", &extra);
    bench_line("login_rss_after", name, mib(run.after_kib), "MiB", &extra);
    bench_line("login_burst_seconds", name, run.seconds, "s", &extra);
}

/// Starts a fresh gateway and a fresh Mosquitto with password files, bursts logins at
/// each in turn (never both at once), prints the figures and the ratios.
pub async fn run(amqp_url: &str) {
    let count = env_usize("BENCH_LOGINS", 1000);
    let ports = servers::ports(1);
    let mosquitto_file = mosquitto_passwords(count);
    let servers = Servers(vec![
        servers::start_gateway(&ports, amqp_url, "bench-gateway", &gateway_passwords(count)),
        servers::start_mosquitto(&ports.mosquitto, Some(&mosquitto_file)),
    ]);
    servers::wait_ready(&ports.gateway_health).await;
    servers::wait_port(&ports.mosquitto).await;
    let gateway = burst(&ports.gateway_mqtt, servers.0[0].id(), count).await;
    let mosquitto = burst(&ports.mosquitto, servers.0[1].id(), count).await;
    drop(servers);
    report("gateway", &gateway, count);
    report("mosquitto", &mosquitto, count);
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    println!(
        "ratio gateway / mosquitto RSS: before {:.1}, peak {:.1}, after {:.1}",
        ratio(gateway.before_kib, mosquitto.before_kib),
        ratio(gateway.peak_kib, mosquitto.peak_kib),
        ratio(gateway.after_kib, mosquitto.after_kib)
    );
    if let Ok(dir) = std::env::var("BENCH_SAMPLES_DIR") {
        write_samples(
            Path::new(&dir),
            &[("gateway", &gateway), ("mosquitto", &mosquitto)],
        );
    }
}
