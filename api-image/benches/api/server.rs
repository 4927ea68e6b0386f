//! The `tributary-api` process the benchmark starts (the release binary, on a free loopback
//! port), its config, and its CPU time and memory as the kernel reports them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tributary_api::keys::hash_key;

use crate::BenchResult;

/// The one API key of the benchmark (all devices, no effective rate limit).
pub const KEY: &str = "bench-key-0123456789abcdef";

/// A private directory for the secret files (the servers' URLs), under the build's own
/// temporary directory rather than the shared /tmp.
pub fn secrets_dir(name: &str) -> BenchResult<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("api-bench-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A loopback port nobody listens on now.
fn free_port() -> BenchResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The API's config: `table` read through `pg_url`, and when `live` is given (AMQP URI,
/// exchange) the live source on that exchange, declared by the API itself.
pub fn config(
    dir: &std::path::Path,
    port: u16,
    pg_url: &str,
    table: &str,
    live: Option<(&str, &str)>,
) -> BenchResult<String> {
    std::fs::write(dir.join("postgres-url"), pg_url)?;
    let mut text = format!(
        "listen: 127.0.0.1:{port}\n\
         postgres: {{urlFile: {dir}/postgres-url, table: {table}}}\n\
         apiKeys:\n  - {{name: bench, sha256: {hash}, scope: all, \
         rateLimit: {{requestsPerSecond: 1000000, burst: 1000000}}}}\n",
        dir = dir.display(),
        hash = hash_key(KEY),
    );
    if let Some((uri, exchange)) = live {
        std::fs::write(dir.join("amqp-uri"), uri)?;
        text.push_str(&format!(
            "live: {{uriFile: {dir}/amqp-uri, exchange: {exchange}, declareExchange: true}}\n",
            dir = dir.display()
        ));
    }
    Ok(text)
}

/// The running API; SIGTERM to exactly its PID when dropped (also when the benchmark fails).
pub struct ApiProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl ApiProcess {
    /// Starts the release binary with a config made by `make_config(port)` and waits until
    /// `/readyz` answers 200 (the database answers).
    pub async fn start(
        dir: &std::path::Path,
        make_config: impl FnOnce(u16) -> BenchResult<String>,
    ) -> BenchResult<Self> {
        let port = free_port()?;
        std::fs::write(dir.join("api.yaml"), make_config(port)?)?;
        let child = Command::new(env!("CARGO_BIN_EXE_tributary-api"))
            .arg("--config")
            .arg(dir.join("api.yaml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?;
        let api = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http.get(format!("{}/readyz", api.base)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(api);
            }
            if Instant::now() > deadline {
                return Err("tributary-api was not ready within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The value of one series of `/metrics` (exact name with labels), or 0.
    pub async fn metric(&self, http: &reqwest::Client, series: &str) -> f64 {
        let Ok(response) = http.get(format!("{}/metrics", self.base)).send().await else {
            return 0.0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok())?
            })
            .unwrap_or(0.0)
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Clock ticks per second of `/proc/PID/stat` (`getconf CLK_TCK`, 100 when unknown).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// User plus system CPU time of a process so far, in clock ticks (0 when it is gone).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14,
    // stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| -> u64 { fields.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
    field(14) + field(15)
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
