//! BENCH_MODE=storm: a reconnect storm. BENCH_STORM_DEVICES (10000) devices connect at
//! once to one fresh gateway, each from its own loopback address (127.64.0.0/10), and
//! retry with a jittered exponential backoff (100 ms doubling to 2 s) whenever the gateway
//! closes them unauthenticated or answers "server unavailable", as devices do after a
//! gateway restart. Measured: the time until
//! the last one is connected, and the gateway's peak resident memory (`VmHWM`).
//!
//! Twice, on a fresh gateway each: devices of the device table with generated secrets
//! (HMAC-SHA256), then devices of the password file with argon2id at the default cost
//! (19 MiB, two check slots). The argon2 run uses BENCH_STORM_ARGON2_DEVICES (default: the
//! same count); when that is smaller, its time is also extrapolated linearly to the full
//! fleet and printed as such (`extrapolated_from=N`).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::servers::{self, status_kib, Servers};
use crate::wire::{connect_packet, read_packet};
use crate::{bench_line, env_usize};

/// What one storm measured.
struct Storm {
    devices: usize,
    seconds: f64,
    peak_kib: u64,
    retries: u64,
}

/// Device `index`'s generated secret (the benchmark knows them all; a device knows its own).
fn secret(index: usize) -> String {
    format!("generated-secret-{index:05}-0123456789abcdef")
}

/// Device `index`'s loopback source address: 127.64.x.y, never 127.0.0.1.
fn source(index: usize) -> Ipv4Addr {
    let n = u32::try_from(index).unwrap();
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 64, 0, 1)) + n)
}

/// The pause before retry `attempt` (1, 2, …): 100 ms doubling to 2 s, with ±50 % jitter
/// different per device and attempt, as device SDKs back off.
fn backoff(index: usize, attempt: u64) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let base = (100u64 << attempt.saturating_sub(1).min(5)).min(2_000);
    let jitter = RandomState::new().hash_one((index, attempt)) % base;
    Duration::from_millis(base / 2 + jitter)
}

/// Connects device `index` until the gateway accepts it; the open connection and retries.
async fn connect_until_accepted(
    addr: SocketAddr,
    index: usize,
    password: String,
) -> (TcpStream, u64) {
    let user = format!("dev-{index}");
    let mut attempt = 0u64;
    loop {
        if let Some(stream) = try_connect(addr, index, &user, &password).await {
            return (stream, attempt);
        }
        attempt += 1;
        tokio::time::sleep(backoff(index, attempt)).await;
    }
}

async fn try_connect(
    addr: SocketAddr,
    index: usize,
    user: &str,
    password: &str,
) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(source(index).into(), 0)).ok()?;
    let mut stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
        .await
        .ok()?
        .ok()?;
    stream
        .write_all(&connect_packet(user, user, password))
        .await
        .ok()?;
    let connack = tokio::time::timeout(Duration::from_secs(30), read_packet(&mut stream))
        .await
        .ok()?
        .ok()?;
    (connack.get(2) == Some(&0)).then_some(stream)
}

/// Runs one storm of `count` devices against the gateway at `mqtt`, process `pid`.
async fn storm(mqtt: &str, pid: u32, count: usize, password: fn(usize) -> String) -> Storm {
    let addr: SocketAddr = mqtt.parse().unwrap();
    let start = Instant::now();
    let tasks: Vec<_> = (0..count)
        .map(|index| tokio::spawn(connect_until_accepted(addr, index, password(index))))
        .collect();
    let mut connections = Vec::with_capacity(count);
    let mut retries = 0;
    for task in tasks {
        let (stream, attempts) = task.await.unwrap();
        retries += attempts;
        connections.push(stream);
    }
    let seconds = start.elapsed().as_secs_f64();
    let peak_kib = status_kib(pid, "VmHWM");
    drop(connections);
    Storm {
        devices: count,
        seconds,
        peak_kib,
        retries,
    }
}

/// The registry files for `count` devices with generated secrets; the gateway's `auth`
/// lines.
fn registry_auth(count: usize) -> String {
    let dir = servers::temp_dir("storm-registry");
    let key = b"benchmark verifier key 0123456789abcdef";
    std::fs::write(dir.join("verifier-key"), key).unwrap();
    std::fs::write(dir.join("sync-token"), "benchmark-sync-token").unwrap();
    let devices: Vec<serde_json::Value> = (0..count)
        .map(|index| {
            let verifier = tributary_gateway::registry::verify::verifier_for(key, secret(index).as_bytes());
            serde_json::json!({"id": format!("dev-{index}"), "credentials": [{"type": "generated", "verifier": verifier}]})
        })
        .collect();
    let table = serde_json::json!({"issuedAtMs": 1, "devices": devices});
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(table.to_string().as_bytes()).unwrap();
    std::fs::write(dir.join("devices.json.gz"), gzip.finish().unwrap()).unwrap();
    let path = |name: &str| dir.join(name).display().to_string();
    format!(
        "  registry:\n    tableFile: {}\n    verifierKeyFile: {}\n    syncTokenFile: {}\n",
        path("devices.json.gz"),
        path("verifier-key"),
        path("sync-token")
    )
}

/// The password file (argon2id, default cost, one hash shared by every device); the
/// gateway's `auth` lines.
fn password_auth(count: usize) -> String {
    let dir = servers::temp_dir("storm-passwords");
    let hash = tributary_gateway::auth::hash_password(crate::wire::PASSWORD.as_bytes()).unwrap();
    let file: String = (0..count)
        .map(|index| format!("dev-{index}:{hash}\n"))
        .collect();
    std::fs::write(dir.join("passwords"), file).unwrap();
    format!("  passwordFile: {}/passwords\n", dir.display())
}

async fn run_one(
    set: u16,
    amqp_url: &str,
    auth: &str,
    count: usize,
    password: fn(usize) -> String,
) -> Storm {
    let ports = servers::ports(set);
    let gateway = servers::start_gateway_with(&ports, amqp_url, "bench-gateway", auth);
    let servers = Servers(vec![gateway]);
    servers::wait_ready(&ports.gateway_health).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let result = storm(&ports.gateway_mqtt, servers.0[0].id(), count, password).await;
    drop(servers);
    result
}

fn report(name: &str, run: &Storm) {
    let mib = run.peak_kib as f64 / 1024.0;
    println!(
        "storm {name:<18} {} devices connected in {:.2} s ({} retries), peak RSS {mib:.1} MiB",
        run.devices, run.seconds, run.retries
    );
}

/// Both storms, side by side.
pub async fn run(amqp_url: &str) {
    let count = env_usize("BENCH_STORM_DEVICES", 10_000);
    let argon2_count = env_usize("BENCH_STORM_ARGON2_DEVICES", count).min(count);
    let generated = run_one(2, amqp_url, &registry_auth(count), count, secret).await;
    report("generated (table)", &generated);
    let password = |_| crate::wire::PASSWORD.to_owned();
    let argon2 = run_one(
        3,
        amqp_url,
        &password_auth(argon2_count),
        argon2_count,
        password,
    )
    .await;
    report("argon2 (file)", &argon2);
    let extra = format!("devices={count}");
    bench_line(
        "storm_seconds",
        "gateway-generated",
        generated.seconds,
        "s",
        &extra,
    );
    bench_line(
        "storm_rss_peak",
        "gateway-generated",
        generated.peak_kib as f64 / 1024.0,
        "MiB",
        &extra,
    );
    let argon2_seconds = argon2.seconds * count as f64 / argon2_count as f64;
    if argon2_count < count {
        println!(
            "storm argon2 (file): {argon2_count} devices measured; {count} devices extrapolated linearly: {argon2_seconds:.1} s (peak RSS measured with {argon2_count} devices)"
        );
    }
    let extra = format!("devices={count} measured_devices={argon2_count}");
    bench_line(
        "storm_seconds",
        "gateway-argon2",
        argon2_seconds,
        "s",
        &extra,
    );
    bench_line(
        "storm_rss_peak",
        "gateway-argon2",
        argon2.peak_kib as f64 / 1024.0,
        "MiB",
        &extra,
    );
    println!(
        "ratio generated / argon2: time {:.3}, peak RSS {:.2}",
        generated.seconds / argon2_seconds.max(f64::MIN_POSITIVE),
        generated.peak_kib as f64 / argon2.peak_kib.max(1) as f64
    );
}
