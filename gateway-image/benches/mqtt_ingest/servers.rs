//! The server processes the benchmark starts on loopback (our gateway, Mosquitto), their
//! ports, and their memory as the kernel reports it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Loopback addresses of one gateway and one Mosquitto.
pub struct Ports {
    pub gateway_mqtt: String,
    pub gateway_health: String,
    pub mosquitto: String,
}

/// The addresses of server set `set` (0, 1, …): three ports each from BENCH_PORT_BASE
/// (default 28830, apart from the test suite's 18830+).
pub fn ports(set: u16) -> Ports {
    let base: u16 = std::env::var("BENCH_PORT_BASE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(28_830);
    let at = |offset: u16| format!("127.0.0.1:{}", base + set * 3 + offset);
    Ports {
        gateway_mqtt: at(0),
        mosquitto: at(1),
        gateway_health: at(2),
    }
}

/// A fresh directory for one server's files.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tributary-bench-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts our own gateway process (the release binary) on loopback, with `passwords` as
/// its password file (lines `user:argon2-PHC`).
pub fn start_gateway(ports: &Ports, amqp_url: &str, queue: &str, passwords: &str) -> Child {
    let dir = temp_dir("gateway");
    std::fs::write(dir.join("passwords"), passwords).unwrap();
    let auth = format!(
        "  passwordFile: {}/passwords\n  allowAnonymous: true\n",
        dir.display()
    );
    start_gateway_with(ports, amqp_url, queue, &auth)
}

/// The gateway binary: BENCH_GATEWAY_BIN (another build, e.g. an earlier commit's, for a
/// before/after comparison in the same run conditions), or this build's.
fn gateway_binary() -> PathBuf {
    std::env::var_os("BENCH_GATEWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tributary-gateway")))
}

/// Starts our own gateway process with `auth` as the lines of its `auth:` section.
pub fn start_gateway_with(ports: &Ports, amqp_url: &str, queue: &str, auth: &str) -> Child {
    let dir = temp_dir(&format!(
        "gateway-{}",
        ports.gateway_mqtt.replace([':', '.'], "-")
    ));
    std::fs::write(dir.join("amqp-uri"), amqp_url).unwrap();
    let config = format!(
        "tenant: bench\ngateway: bench\nhealthListen: {health}\nlisteners:\n  mqtt: {mqtt}\n\
         auth:\n{auth}broker:\n  uriFile: {dir}/amqp-uri\n\
         permissions: [\"gw/#\"]\nroutes:\n  - topicFilter: gw/#\n    queue: {queue}\n\
         limits:\n  messagesPerSecond: 1000000\n  burst: 1000000\n  maxConnections: 100000\n  maxConnectionsPerDevice: 100000\n  maxInFlightPerConnection: 1000\n",
        health = ports.gateway_health,
        mqtt = ports.gateway_mqtt,
        dir = dir.display()
    );
    std::fs::write(dir.join("gateway.yaml"), config).unwrap();
    Command::new(gateway_binary())
        .arg("--config")
        .arg(dir.join("gateway.yaml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start gateway")
}

/// Starts Mosquitto on loopback: anonymous, or with `password_file` (made by
/// `mosquitto_passwd`) and anonymous logins refused; Nagle off like the other servers
/// (its default would add ~40 ms to every round trip of a lone small message).
pub fn start_mosquitto(addr: &str, password_file: Option<&Path>) -> Child {
    let dir = temp_dir("mosquitto");
    let (host, port) = addr.split_once(':').unwrap();
    let auth = match password_file {
        Some(path) => format!("allow_anonymous false\npassword_file {}\n", path.display()),
        None => "allow_anonymous true\n".to_owned(),
    };
    let name = format!("mosquitto-{port}.conf");
    std::fs::write(
        dir.join(&name),
        format!("listener {port} {host}\n{auth}persistence false\nmax_inflight_messages 0\nmax_connections -1\nset_tcp_nodelay true\nlog_dest none\n"),
    )
    .unwrap();
    Command::new("mosquitto")
        .arg("-c")
        .arg(dir.join(&name))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto (Debian package `mosquitto`)")
}

/// Waits until `addr` accepts TCP connections (30 s at most).
pub async fn wait_port(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{addr} did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the gateway's `/readyz` at `health` answers 200 (30 s at most).
pub async fn wait_ready(health: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut stream) = TcpStream::connect(health).await {
            let _ = stream
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text).await;
            if text.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "gateway not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `/proc/PID/status` field in KiB (`VmRSS`: resident now, `VmHWM`: highest resident
/// since the process started); 0 when the process is gone.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let prefix = format!("{field}:");
    status
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resident memory now, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// The server processes this benchmark started; SIGTERM to exactly those PIDs when done,
/// also when the benchmark panics.
pub struct Servers(pub Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}
