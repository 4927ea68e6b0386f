//! Password logins cannot grow the gateway: checks run in a fixed number of slots whose
//! argon2 memory is reused, so a thousand logins (good and bad) leave the process within a
//! fixed memory budget. Needs the test broker (`tests/services/rabbitmq.sh`).

mod common;

use std::sync::Arc;

use common::*;
use tributary_contract::gateway_config::AuthConfig;

/// argon2 memory per check. The recommended 19 MiB takes 1.6 s per check in a debug build
/// (a thousand would take many minutes on two cores), so the test uses 2 MiB with one pass:
/// the same code path, a tenth of the memory per check.
const COST_KIB: u32 = 2 * 1024;
/// Growth allowed over 1,000 logins: two slots of 2 MiB plus room for everything else.
/// Allocating per check instead left a freed block in each allocator arena that ran one (a
/// production gateway grew by 150 MB after 20 logins at 19 MiB).
const BUDGET_MIB: u64 = 24;
const LOGINS: usize = 1_000;
const AT_ONCE: usize = 8;

/// Resident memory of this process (the in-process gateway), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_password_logins_stay_within_a_fixed_memory_budget() {
    let url = amqp_url();
    let dir = TempDir::new();
    let uri = dir.write("uri", &url);
    let params = argon2::Params::new(COST_KIB, 1, 1, None).expect("argon2 params");
    let hash = argon2::PasswordHasher::hash_password(&argon2::Argon2::from(params), b"s3cret")
        .expect("hash")
        .to_string();
    let passwords = dir.write("passwords", &format!("press-7:{hash}\n"));
    let auth = AuthConfig {
        password_file: Some(passwords),
        // Memory is measured here, not throttling: the address allowance stays out of the way.
        failed_logins_per_minute: 1_000_000,
        ..AuthConfig::default()
    };
    let mut config = test_config(uri, vec![route("devices/#", "unused")], auth);
    config.limits.connect_timeout_seconds = 120;
    let running = start_connected(config).await;
    let mqtt = running.bound.mqtt.expect("mqtt listener");

    let before = rss_kib();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = (0..AT_ONCE).map(|_| {
        let next = Arc::clone(&next);
        tokio::spawn(async move {
            let mut codes = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= LOGINS {
                    return codes;
                }
                // Half good; the bad half spread over unknown devices (checked against the
                // dummy hash, at the same cost) so per-device spacing does not slow the run.
                let good = i.is_multiple_of(2);
                let (device, password) = if good {
                    ("press-7".to_owned(), "s3cret")
                } else {
                    (format!("ghost-{i}"), "guess")
                };
                let (_client, code) = RawMqtt::connect(mqtt, &device, password).await;
                codes.push((good, code));
            }
        })
    });
    let mut good = 0;
    let mut bad = 0;
    for worker in workers {
        for (expected_good, code) in worker.await.expect("login worker") {
            match (expected_good, code) {
                (true, 0) => good += 1,
                (false, 4) => bad += 1,
                other => panic!("unexpected CONNACK (good login?, code): {other:?}"),
            }
        }
    }
    let after = rss_kib();
    let growth_mib = after.saturating_sub(before) / 1024;
    println!(
        "RSS before {} MiB, after {LOGINS} logins ({good} good, {bad} refused) {} MiB: +{growth_mib} MiB (budget {BUDGET_MIB} MiB)",
        before / 1024,
        after / 1024
    );
    assert_eq!((good, bad), (LOGINS / 2, LOGINS / 2));
    assert!(
        growth_mib < BUDGET_MIB,
        "the gateway grew by {growth_mib} MiB over {LOGINS} logins"
    );
    running.drain(std::time::Duration::from_secs(5)).await;
}
