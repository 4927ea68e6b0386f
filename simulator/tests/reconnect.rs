//! A dropped connection: the simulator reconnects, sends again what was not acknowledged,
//! counts those copies as duplicates, and still exits 0 once everything is acknowledged.
//!
//! The server is a minimal in-process MQTT 3.1.1 stand-in on loopback, so the test can
//! drop the first connection at an exact point (no broker needed).

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

/// Reads one MQTT packet: (first byte, body); `None` at end of stream.
async fn read_packet(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let first = stream.read_u8().await.ok()?;
    let mut length = 0usize;
    for shift in 0..4 {
        let byte = stream.read_u8().await.ok()?;
        length |= usize::from(byte & 0x7F) << (7 * shift);
        if byte & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some((first, body))
}

/// (packet id, seq) of a QoS 1 PUBLISH body.
fn publish_fields(body: &[u8]) -> (u16, u64) {
    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let at = 2 + topic_len;
    let pkid = u16::from_be_bytes([body[at], body[at + 1]]);
    let payload: serde_json::Value = serde_json::from_slice(&body[at + 2..]).expect("JSON payload");
    (pkid, payload["seq"].as_u64().expect("seq"))
}

/// Seqs each connection received, in order.
type Received = Arc<Mutex<Vec<Vec<u64>>>>;

/// Connection 1 takes five publishes, acknowledges only the first three, then drops the
/// connection; later connections acknowledge everything.
async fn serve(listener: TcpListener, received: Received) {
    let mut connection = 0;
    while let Ok((mut stream, _)) = listener.accept().await {
        connection += 1;
        let index = {
            let mut all = received.lock().expect("lock");
            all.push(Vec::new());
            all.len() - 1
        };
        let received = received.clone();
        let first = connection == 1;
        tokio::spawn(async move {
            let mut unacked = Vec::new();
            while let Some((kind, body)) = read_packet(&mut stream).await {
                match kind >> 4 {
                    1 => {
                        let _ = stream.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
                    }
                    3 => {
                        let (pkid, seq) = publish_fields(&body);
                        received.lock().expect("lock")[index].push(seq);
                        if !first {
                            let [hi, lo] = pkid.to_be_bytes();
                            let _ = stream.write_all(&[0x40, 0x02, hi, lo]).await;
                            continue;
                        }
                        unacked.push(pkid);
                        if unacked.len() == 5 {
                            for pkid in &unacked[..3] {
                                let [hi, lo] = pkid.to_be_bytes();
                                let _ = stream.write_all(&[0x40, 0x02, hi, lo]).await;
                            }
                            return; // drop the connection
                        }
                    }
                    12 => {
                        let _ = stream.write_all(&[0xD0, 0x00]).await;
                    }
                    14 => return,
                    _ => {}
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_resends_unacknowledged_messages_and_counts_duplicates() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received: Received = Arc::default();
    let server = tokio::spawn(serve(listener, received.clone()));

    let run = Command::new(env!("CARGO_BIN_EXE_tributary-simulator"))
        .args([
            "--port",
            &port.to_string(),
            "--devices",
            "1",
            "--messages",
            "10",
        ])
        .args(["--max-inflight", "5", "--json"])
        .env("TRIBUTARY_DEVICE_PASSWORD", "pw")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the simulator finishes")
        .expect("run the simulator");
    server.abort();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {}; stderr:\n{stderr}",
        output.status
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON summary");
    assert_eq!(summary["acknowledged"], 10, "{summary}");
    assert_eq!(summary["sent"], 10, "{summary}");
    assert!(summary["errors"].as_u64() >= Some(1), "{summary}");
    assert!(stderr.contains("connection lost"), "stderr:\n{stderr}");

    let received = received.lock().expect("lock").clone();
    eprintln!("summary {summary}; seqs per connection {received:?}");
    assert!(received.len() >= 2, "no reconnect: {received:?}");
    assert_eq!(received[0][..5], [1, 2, 3, 4, 5], "{received:?}");
    // Seqs 4 and 5 reached the server without a PUBACK: they must come again.
    let later: BTreeSet<u64> = received[1..].iter().flatten().copied().collect();
    assert!(later.contains(&4) && later.contains(&5), "{received:?}");
    let all: BTreeSet<u64> = received.iter().flatten().copied().collect();
    assert_eq!(all, (1..=10).collect::<BTreeSet<u64>>());
    let duplicates = summary["duplicates_resent"].as_u64().unwrap_or(0);
    assert!(duplicates >= 2, "{summary}");
    // Every copy the server saw beyond the first of each seq is a counted duplicate.
    let copies = received.iter().map(Vec::len).sum::<usize>() as u64;
    assert!(copies - 10 <= duplicates, "{copies} copies, {summary}");
}
