//! MQTT rows that take more than one connection: throttling, the check queue, the
//! pre-authentication cap, a client that stops reading, takeover and the per-device cap.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::bench::{self, connect_from, password, Bench};
use crate::mqtt::{self, classify, closed, connect, open_logged_in, Login};
use crate::table::Outcome;

/// One CONNECT from `from` as `user`/`pass` (3.1.1); its CONNACK code and when it came.
async fn login_code(bench: &Bench, from: IpAddr, user: &str, pass: &str) -> (u8, Duration) {
    let started = Instant::now();
    let Ok(mut stream) = connect_from(from, bench.mqtt()).await else {
        return (0xFF, started.elapsed());
    };
    let _ = stream
        .write_all(&connect(false, "", user, pass.as_bytes(), &[], None, 60))
        .await;
    let code = match classify(&mut stream, started).await {
        Outcome::Connack(code) => code,
        _ => 0xFF,
    };
    (code, started.elapsed())
}

/// Many logins at once; their CONNACK codes and the slowest answer.
async fn burst(bench: &Bench, logins: Vec<(IpAddr, String, String)>) -> (Vec<u8>, Duration) {
    let attempts = logins
        .iter()
        .map(|(from, user, pass)| login_code(bench, *from, user, pass));
    let answers = futures::future::join_all(attempts).await;
    let slowest = answers
        .iter()
        .map(|(_, took)| *took)
        .max()
        .unwrap_or_default();
    (answers.into_iter().map(|(code, _)| code).collect(), slowest)
}

/// The `i`th of several source addresses in the loopback block `block` (127.0.block.x), for
/// bursts meant to test a limit other than the per-address share of unauthenticated places.
fn spread(block: u8, i: usize) -> IpAddr {
    IpAddr::from([127, 0, block, u8::try_from(i % 250 + 1).unwrap_or(1)])
}

pub async fn address_failures(bench: &Bench, from: IpAddr, count: usize) -> Outcome {
    use tributary_gateway::mqtt::places::MAX_UNAUTHENTICATED_PER_ADDRESS as SHARE;
    // In rounds of the address's share of unauthenticated places, so every one is checked.
    for round in (0..count).collect::<Vec<_>>().chunks(SHARE) {
        let bad = round
            .iter()
            .map(|i| (from, format!("ghost-{i}"), "guess".to_owned()))
            .collect();
        let (codes, _) = burst(bench, bad).await;
        if let Some(code) = codes.iter().find(|&&code| code != 4 && code != 3) {
            return Outcome::Other(format!("a failed login got {code:#04x}"));
        }
    }
    let (code, _) = login_code(bench, from, "press-2", &password("press-2")).await;
    Outcome::Connack(code)
}

pub async fn parallel_guesses(bench: &Bench, from: IpAddr, count: usize) -> Outcome {
    let started = bench.running.gateway.auth.password_checks_started();
    // From many addresses: what must hold them back is the per-device limit.
    let guesses = (0..count)
        .map(|i| {
            let source = if i == 0 { from } else { spread(3, i) };
            (source, "press-5".to_owned(), "guess".to_owned())
        })
        .collect();
    let (codes, _) = burst(bench, guesses).await;
    let checked = bench.running.gateway.auth.password_checks_started() - started;
    if checked >= count as u64 {
        return Outcome::Other(format!("all {checked} guesses reached the password check"));
    }
    mqtt::codes(&codes)
}

pub async fn login_burst(bench: &Bench, from: IpAddr, count: usize) -> Outcome {
    // From many addresses: what must hold them back is the hashing queue.
    let logins = (0..count)
        .map(|i| {
            let source = if i == 0 { from } else { spread(4, i) };
            (source, format!("ghost-burst-{i}"), "guess".to_owned())
        })
        .collect();
    let (codes, slowest) = burst(bench, logins).await;
    // Inside the CONNECT deadline, with a second of slack for a busy machine.
    if slowest > bench::CONNECT_TIMEOUT + Duration::from_secs(1) {
        return Outcome::Other(format!("a login was answered only after {slowest:?}"));
    }
    mqtt::codes(&codes)
}

/// A flood address of its own (127.0.2.k) for the `k`th share of places.
fn flood_source(k: usize) -> IpAddr {
    IpAddr::from([127, 0, 2, u8::try_from(k % 250 + 1).unwrap_or(1)])
}

/// `extra` connections from `from`, each of which must be closed when accepted; the
/// slowest close, or why not.
async fn all_closed_at_once(
    bench: &Bench,
    from: IpAddr,
    extra: usize,
    past: &str,
) -> Result<Duration, Outcome> {
    let mut slowest = Duration::ZERO;
    for _ in 0..extra {
        let started = Instant::now();
        let Ok(mut stream) = connect_from(from, bench.mqtt()).await else {
            continue; // refused outright is closed too
        };
        match closed(&mut stream, started).await {
            Some(after) => slowest = slowest.max(after),
            None => {
                return Err(Outcome::Other(format!(
                    "a connection past {past} stayed open"
                )))
            }
        }
    }
    Ok(slowest)
}

pub async fn pre_auth_flood(bench: &Bench, from: IpAddr, extra: usize) -> Outcome {
    use tributary_gateway::mqtt::places::{
        MAX_UNAUTHENTICATED_CONNECTIONS as CAP, MAX_UNAUTHENTICATED_PER_ADDRESS as SHARE,
    };
    let mut held = Vec::with_capacity(CAP);
    // One address takes its share; more from it are closed when accepted.
    for k in 0..CAP {
        let source = if k < SHARE {
            from
        } else {
            flood_source(k / SHARE)
        };
        match connect_from(source, bench.mqtt()).await {
            Ok(stream) => held.push(stream),
            Err(error) => return Outcome::Other(format!("connect: {error}")),
        }
        if k + 1 == SHARE {
            // Let the gateway count the share's connections before more arrive (accepting
            // and counting happen on its own tasks).
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Err(outcome) =
                all_closed_at_once(bench, from, extra, "the address's share").await
            {
                return outcome;
            }
        }
    }
    // Every place taken (from many addresses): a new address is closed when accepted too.
    let slowest =
        match all_closed_at_once(bench, flood_source(CAP / SHARE + 1), extra, "the cap").await {
            Ok(slowest) => slowest,
            Err(outcome) => return outcome,
        };
    // The held ones end at the CONNECT deadline, freeing the places for the next rows.
    for stream in &mut held {
        if closed(stream, Instant::now()).await.is_none() {
            return Outcome::Other("a connection under the cap outlived the deadline".into());
        }
    }
    Outcome::ClosedAfter(slowest)
}

pub async fn stops_reading(bench: &Bench, from: IpAddr) -> Outcome {
    let Ok(socket) = TcpSocket::new_v4() else {
        return Outcome::Other("socket".into());
    };
    // A small receive buffer so the gateway's writes back up quickly.
    let _ = socket.set_recv_buffer_size(4096);
    let _ = socket.bind(std::net::SocketAddr::new(from, 0));
    let mut stream = match socket.connect(bench.mqtt()).await {
        Ok(stream) => stream,
        Err(error) => return Outcome::Other(format!("connect: {error}")),
    };
    let pass = password("press-7");
    let _ = stream
        .write_all(&connect(
            false,
            "deaf",
            "press-7",
            pass.as_bytes(),
            &[],
            None,
            60,
        ))
        .await;
    let mut connack = [0u8; 4];
    if stream.read_exact(&mut connack).await.is_err() || connack != [0x20, 2, 0, 0] {
        return Outcome::Other(format!("CONNACK {connack:?}"));
    }
    // PINGREQs answered with PINGRESPs nobody reads; writes fail once the gateway closed.
    let (_reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let chunk = [0xC0u8, 0].repeat(32 * 1024);
    let flood = async {
        while writer.write_all(&chunk).await.is_ok() {}
        started.elapsed()
    };
    match tokio::time::timeout(Duration::from_secs(60), flood).await {
        Ok(after) => Outcome::ClosedAfter(after),
        Err(_) => Outcome::Other("still open after 60 s".into()),
    }
}

pub async fn takeover(bench: &Bench, from: IpAddr, v5: bool) -> Outcome {
    let login = Login {
        v5,
        client_id: format!("sensor-{v5}"),
        device: if v5 { "press-8" } else { "dev-58" }.into(),
    };
    let mut first = match open_logged_in(bench, from, &login).await {
        Ok(stream) => stream,
        Err(outcome) => return outcome,
    };
    let mut second = match open_logged_in(bench, from, &login).await {
        Ok(stream) => stream,
        Err(outcome) => return outcome,
    };
    let outcome = classify(&mut first, Instant::now()).await;
    let _ = second
        .write_all(&mqtt::publish(
            v5,
            format!("devices/{}/t", login.device).as_bytes(),
            1,
            &[],
            b"{}",
        ))
        .await;
    match classify(&mut second, Instant::now()).await {
        Outcome::Puback(0) => outcome,
        other => Outcome::Other(format!("the new connection's publish got {other}")),
    }
}

pub async fn device_cap(bench: &Bench, from: IpAddr, v5: bool) -> Outcome {
    // A device of its own per version: places are freed only as the gateway notices closes.
    let device = if v5 { "press-4" } else { "press-9" };
    let mut held = Vec::new();
    for n in 0..bench::MAX_CONNECTIONS_PER_DEVICE {
        let login = Login {
            v5,
            client_id: format!("capped-{v5}-{n}"),
            device: device.into(),
        };
        match open_logged_in(bench, from, &login).await {
            Ok(stream) => held.push(stream),
            Err(outcome) => return outcome,
        }
    }
    let Ok(mut extra) = connect_from(from, bench.mqtt()).await else {
        return Outcome::Other("connect".into());
    };
    let pass = password(device);
    let _ = extra
        .write_all(&connect(
            v5,
            "capped-extra",
            device,
            pass.as_bytes(),
            &[],
            None,
            60,
        ))
        .await;
    classify(&mut extra, Instant::now()).await
}
