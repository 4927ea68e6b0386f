//! The simulator binary against the real gateway binary and the test RabbitMQ.
//!
//! - RabbitMQ: `tests/services/rabbitmq.sh start`. The AMQP URL is
//!   `TRIBUTARY_TEST_AMQP_URL`, or when unset the one `tests/services/rabbitmq.sh env`
//!   prints. An unreachable broker fails the test and says how to start it.
//! - The gateway: `TRIBUTARY_GATEWAY_BIN` when set (e.g. a release build). Otherwise the
//!   test runs `cargo build -p tributary-gateway --bin tributary-gateway` into the target
//!   directory and profile this test was built in (a no-op when up to date; the first time
//!   takes minutes): cargo gives a package's tests only that package's own binaries.
//!   Each test starts its own gateway on ephemeral loopback ports (read back from its JSON
//!   log) and stops it (its own child process) at the end.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::{Argon2, PasswordHasher};
use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tributary_contract::gateway_config::{
    AuthConfig, BrokerConfig, DeliveryMode, GatewayConfig, Limits, Listeners, Route,
};
use tributary_simulator::payload::{payload, PayloadKind};

/// Upper bound for waiting on the gateway and the broker (not a timing assertion).
const DEADLINE: Duration = Duration::from_secs(60);
/// Upper bound for one simulator run.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The test broker's AMQP URL.
fn amqp_url() -> String {
    if let Ok(url) = std::env::var("TRIBUTARY_TEST_AMQP_URL") {
        if !url.is_empty() {
            return url;
        }
    }
    let script = repo_root().join("tests/services/rabbitmq.sh");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .arg("env")
        .output()
        .unwrap_or_else(|error| panic!("cannot run {} env: {error}", script.display()));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("export TRIBUTARY_TEST_AMQP_URL="))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            panic!(
                "{} env printed no TRIBUTARY_TEST_AMQP_URL",
                script.display()
            )
        })
}

/// Connects to the test broker or fails with instructions.
async fn amqp(url: &str) -> Connection {
    match tokio::time::timeout(DEADLINE, Connection::connect(url, ConnectionProperties::default()))
        .await
    {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => panic!(
            "cannot reach the test RabbitMQ ({error}): start it with \
             `bash tests/services/rabbitmq.sh start` (status: `bash tests/services/rabbitmq.sh status`)"
        ),
        Err(_) => panic!("timed out connecting to the test RabbitMQ"),
    }
}

/// A private directory for config and secrets, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("tributary-sim-{name}-{}", unique()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}

/// The gateway binary: `TRIBUTARY_GATEWAY_BIN`, or built next to this test's own binary.
fn gateway_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("TRIBUTARY_GATEWAY_BIN") {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "TRIBUTARY_GATEWAY_BIN={} is not a file",
                path.display()
            );
            return path;
        }
        // This test runs as <target>/<profile>/deps/against_gateway-<hash>.
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary under <target>/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target dir");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
        eprintln!(
            "building the gateway binary (cargo build -p tributary-gateway --profile {profile})"
        );
        let mut build = std::process::Command::new(cargo);
        // Drop what cargo set for this test: build scripts (ring's) watch some of these
        // variables, and different values would rebuild them on every other run.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let set_for_tests = [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|prefix| key.starts_with(prefix))
                || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"]
                    .contains(&key.as_ref());
            if set_for_tests {
                build.env_remove(key.as_ref());
            }
        }
        let status = build
            .args([
                "build",
                "-p",
                "tributary-gateway",
                "--bin",
                "tributary-gateway",
            ])
            .args(["--profile", profile])
            .arg("--manifest-path")
            .arg(repo_root().join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir)
            .stdout(Stdio::null())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p tributary-gateway failed");
        let binary = profile_dir.join("tributary-gateway");
        assert!(
            binary.is_file(),
            "no gateway binary at {}",
            binary.display()
        );
        binary
    })
}

/// A running gateway process (killed on drop) and the addresses it bound.
struct Gateway {
    _child: Child,
    mqtt: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts the gateway on ephemeral loopback ports and waits until it is ready
    /// (connected to the broker).
    async fn start(dir: &TempDir, passwords: &[(String, String)], routes: Vec<Route>) -> Self {
        let uri_file = dir.write("amqp-uri", &amqp_url());
        let mut lines = String::new();
        for (device, password) in passwords {
            lines.push_str(&format!("{device}:{}\n", cheap_hash(password)));
        }
        let password_file = dir.write("passwords", &lines);
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let config = GatewayConfig {
            tenant: "factory".into(),
            gateway: "line-1".into(),
            health_listen: any,
            listeners: Listeners {
                mqtt: Some(any),
                ..Listeners::default()
            },
            auth: AuthConfig {
                password_file: Some(password_file),
                ..AuthConfig::default()
            },
            permissions: vec!["factory/line-1/{device}/#".into()],
            routes,
            broker: BrokerConfig {
                uri_file,
                ca_file: None,
                reconnect_max_delay_ms: 500,
                confirm_timeout_ms: 10_000,
            },
            limits: Limits::default(),
            delivery: DeliveryMode::Confirmed,
            commands: Default::default(),
        };
        // JSON is YAML: the gateway reads it as is.
        let config_file = dir.write(
            "gateway.yaml",
            &serde_json::to_string_pretty(&config).expect("config as JSON"),
        );
        let mut child = Command::new(gateway_binary())
            .arg("--log-json")
            .arg("--config")
            .arg(&config_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the gateway binary");
        let stderr = child.stderr.take().expect("gateway stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (found_tx, mut found_rx) = tokio::sync::mpsc::unbounded_channel();
        let log_writer = log.clone();
        // Keep reading for the gateway's whole life so its stderr pipe never fills.
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                    let fields = &value["fields"];
                    if let (Some(message), Some(addr)) =
                        (fields["message"].as_str(), fields["addr"].as_str())
                    {
                        let _ = found_tx.send((message.to_owned(), addr.to_owned()));
                    }
                }
                log_writer.lock().expect("log").push(line);
            }
        });
        let mut mqtt = None;
        let mut health = None;
        let waited = tokio::time::timeout(DEADLINE, async {
            while mqtt.is_none() || health.is_none() {
                let Some((message, addr)) = found_rx.recv().await else {
                    return;
                };
                let addr: SocketAddr = addr.parse().expect("listen address");
                match message.as_str() {
                    "mqtt listening" => mqtt = Some(addr),
                    "health and metrics listening" => health = Some(addr),
                    _ => {}
                }
            }
        })
        .await;
        let dump = |log: &Arc<Mutex<Vec<String>>>| log.lock().expect("log").join("\n");
        let (Ok(()), Some(mqtt), Some(health)) = (waited, mqtt, health) else {
            panic!(
                "the gateway did not report its listeners; its log:\n{}",
                dump(&log)
            );
        };
        let ready = tokio::time::timeout(DEADLINE, async {
            while http_status(health, "/readyz").await != 200 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            ready.is_ok(),
            "the gateway never became ready (is the test RabbitMQ up?); its log:\n{}",
            dump(&log)
        );
        Self {
            _child: child,
            mqtt,
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }
}

/// A low-cost argon2id hash (as the gateway's own tests use): debug builds verify it fast.
fn cheap_hash(password: &str) -> String {
    let params = argon2::Params::new(1024, 1, 1, None).expect("argon2 params");
    Argon2::from(params)
        .hash_password(password.as_bytes())
        .expect("hash")
        .to_string()
}

async fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Runs the simulator binary with `args` and `TRIBUTARY_DEVICE_PASSWORD=password`.
async fn simulator(mqtt: SocketAddr, password: &str, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tributary-simulator"));
    command
        .args(["--host", "127.0.0.1", "--port", &mqtt.port().to_string()])
        .args(args)
        .env("TRIBUTARY_DEVICE_PASSWORD", password)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(RUN_DEADLINE, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => panic!("cannot run the simulator: {error}"),
        Err(_) => panic!("the simulator did not finish"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_devices_deliver_every_message_exactly_once() {
    let connection = amqp(&amqp_url()).await;
    let channel = connection.create_channel().await.expect("channel");
    let queue = format!("simulator-{}", unique());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare queue");
    let dir = TempDir::new("deliver");
    let passwords: Vec<(String, String)> = (1..=20)
        .map(|n| (format!("machine-{n}"), format!("secret-{n}")))
        .collect();
    let gateway = Gateway::start(
        &dir,
        &passwords,
        vec![Route {
            topic_filter: "factory/line-1/+/telemetry".into(),
            queue: queue.clone(),
        }],
    )
    .await;

    let output = simulator(
        gateway.mqtt,
        "secret-{n}",
        &[
            "--devices",
            "20",
            "--messages",
            "2000",
            "--topic",
            "factory/line-1/{device}/telemetry",
            "--json",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "simulator failed ({}); stderr:\n{stderr}\ngateway log:\n{}",
        output.status,
        gateway.log()
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("--json prints the summary as JSON");
    assert_eq!(summary["sent"], 2000, "{summary}");
    assert_eq!(summary["acknowledged"], 2000, "{summary}");
    assert_eq!(summary["duplicates_resent"], 0, "{summary}");
    assert_eq!(summary["ok"], true, "{summary}");

    // Every acknowledged message was confirmed by the broker before its PUBACK.
    let declared = channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    assert_eq!(declared.message_count(), 2000);

    let mut seen = BTreeSet::new();
    let mut wrong = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let envelope: serde_json::Value =
            serde_json::from_slice(&message.delivery.data).expect("envelope is JSON");
        let device = envelope["device"].as_str().expect("device").to_owned();
        let data = &envelope["payload"]["data"];
        let seq = data["seq"].as_u64().expect("seq");
        let n: u32 = device
            .strip_prefix("machine-")
            .and_then(|n| n.parse().ok())
            .expect("device id machine-N");
        let expected: serde_json::Value =
            serde_json::from_slice(&payload(PayloadKind::Factory, &device, n, seq, None))
                .expect("payload JSON");
        if envelope["payload"]["encoding"] != "json"
            || *data != expected
            || envelope["topic"] != format!("factory/line-1/{device}/telemetry")
        {
            wrong.push(envelope.to_string());
        }
        assert!(seen.insert((device, seq)), "duplicate: {envelope}");
    }
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    assert!(wrong.is_empty(), "unexpected messages: {wrong:?}");
    let expected: BTreeSet<(String, u64)> = (1..=20)
        .flat_map(|n| (1..=100).map(move |seq| (format!("machine-{n}"), seq)))
        .collect();
    assert_eq!(seen.len(), 2000);
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_exits_non_zero_and_says_why() {
    // The gateway needs the broker to become ready; say so plainly when it is down.
    drop(amqp(&amqp_url()).await);
    let dir = TempDir::new("refused");
    let passwords = vec![
        ("machine-1".to_owned(), "right-1".to_owned()),
        ("machine-2".to_owned(), "right-2".to_owned()),
    ];
    let gateway = Gateway::start(&dir, &passwords, Vec::new()).await;
    let wrong = "hunter2-wrong";

    let output = simulator(
        gateway.mqtt,
        wrong,
        &[
            "--devices",
            "2",
            "--messages",
            "10",
            "--topic",
            "factory/line-1/{device}/telemetry",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "exit 0 with a wrong password; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("connection refused")
            && stderr.contains("bad user name or password (CONNACK return code 4)"),
        "no clear refusal message; stderr:\n{stderr}"
    );
    // The first refusal names its device; the count covers both.
    assert!(stderr.contains("machine-"), "stderr:\n{stderr}");
    assert!(stderr.contains("2 time(s)"), "stderr:\n{stderr}");
    assert!(
        stdout.contains("acknowledged 0 ") && stdout.contains("FAILED: 10 of 10 messages"),
        "stdout:\n{stdout}"
    );
    let mut all = stdout.to_string();
    all.push_str(&stderr);
    assert!(!all.contains(wrong), "the password was printed:\n{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_dir_logs_each_device_in_with_its_own_password() {
    let connection = amqp(&amqp_url()).await;
    let channel = connection.create_channel().await.expect("channel");
    let queue = format!("simulator-dir-{}", unique());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare queue");
    let dir = TempDir::new("credentials-dir");
    // Unrelated passwords, as the operator generates them; the layout of a projected volume
    // (no line break) and of a shell dump (one line break).
    let passwords: Vec<(String, String)> = (1..=3)
        .map(|n| (format!("machine-{n}"), format!("gen-{}-{n}", unique())))
        .collect();
    for (index, (device, password)) in passwords.iter().enumerate() {
        std::fs::create_dir_all(dir.0.join("creds").join(device)).expect("device folder");
        let text = if index == 0 {
            format!("{password}\n")
        } else {
            password.clone()
        };
        dir.write(&format!("creds/{device}/password"), &text);
    }
    let gateway = Gateway::start(
        &dir,
        &passwords,
        vec![Route {
            topic_filter: "factory/line-1/+/telemetry".into(),
            queue: queue.clone(),
        }],
    )
    .await;
    let creds = dir.0.join("creds");
    // The template (TRIBUTARY_DEVICE_PASSWORD) is wrong for every device: the folder wins.
    let output = simulator(
        gateway.mqtt,
        "template-is-wrong",
        &[
            "--devices",
            "3",
            "--messages",
            "30",
            "--topic",
            "factory/line-1/{device}/telemetry",
            "--credentials-dir",
            creds.to_str().expect("utf-8 path"),
            "--json",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    assert!(
        output.status.success(),
        "simulator failed ({}); stderr:\n{stderr}\ngateway log:\n{}",
        output.status,
        gateway.log()
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("--json prints the summary as JSON");
    assert_eq!(summary["acknowledged"], 30, "{summary}");
    for (_, password) in &passwords {
        assert!(
            !stderr.contains(password.as_str()),
            "a password was printed"
        );
    }
}
