//! The live stream end to end on the real cluster: a reading published with `mosquitto_pub`
//! through a gateway pod is processed by a worker pod whose `live` Sink copies it to the
//! namespace's live exchange, and the ApplicationApi pod hands it to a Server-Sent Events
//! client (`curl -N`) and a WebSocket client at once. The time from the publish to each
//! client's receipt is printed (the machines are shared: it is measured, not asserted).
//! The same API then lists the registered Devices (one that never sent anything too) and
//! the live Queue's backlog, read by the API's own broker user.

use super::application_api::{get, history_sink};
use super::*;
use futures::StreamExt;
use std::process::Stdio;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tributary_operator::crd::{ApplicationApi, Device};

const PIPELINE: &str = "apiVersion: tributary.dev/v1alpha1
kind: Sink
metadata: {name: live-view}
spec:
  live: {}
---
apiVersion: tributary.dev/v1alpha1
kind: Worker
metadata: {name: view}
spec:
  queue: telemetry
  sinks: [live-view]
  scaling: {minReplicas: 1, maxReplicas: 1}
";

const API: &str = "apiVersion: tributary.dev/v1alpha1
kind: ApplicationApi
metadata: {name: factory}
spec:
  history: {sink: readings-db}
  live: {queue: telemetry}
  apiKeys:
    - {name: watcher, scope: all}
";

/// One live message a client received: which client, the reading's marker, when.
type Arrival = (&'static str, String, Instant);

/// The marker of a live message (the device's `payload.marker`), if it is one of ours.
fn marker(text: &str) -> Option<String> {
    let message: serde_json::Value = serde_json::from_str(text).ok()?;
    Some(message["payload"]["marker"].as_str()?.to_owned())
}

/// An SSE client (`curl -N`) of `url`, reporting each message's arrival.
fn sse_client(url: String, arrivals: mpsc::UnboundedSender<Arrival>) -> tokio::process::Child {
    let mut child = tokio::process::Command::new("curl")
        .args(["-s", "-N", "-m", "600", &url])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl runs");
    let stdout = child.stdout.take().expect("stdout");
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(found) = line.strip_prefix("data:").and_then(|d| marker(d.trim())) {
                let _ = arrivals.send(("sse", found, Instant::now()));
            }
        }
    });
    child
}

/// A WebSocket client of `url`, reporting each message's arrival.
async fn websocket_client(url: String, arrivals: mpsc::UnboundedSender<Arrival>) {
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap_or_else(|e| panic!("WebSocket connect: {e}"));
    tokio::spawn(async move {
        while let Some(Ok(frame)) = socket.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
                if let Some(found) = marker(text.as_str()) {
                    let _ = arrivals.send(("ws", found, Instant::now()));
                }
            }
        }
    });
}

/// One reading of device `press-1` with `marker`; true when the gateway accepted it.
async fn publish(ip: &str, password: &str, marker: &str) -> bool {
    let reading = format!("{{\"marker\": \"{marker}\", \"rpm\": 1500}}");
    mosquitto_pub(ip, "press-1", password, &reading).await
}

/// Arrivals until both clients received `marker`, or None after `patience`.
async fn both_received(
    arrivals: &mut mpsc::UnboundedReceiver<Arrival>,
    marker: &str,
    patience: Duration,
) -> Option<(Instant, Instant)> {
    let deadline = Instant::now() + patience;
    let (mut sse, mut ws) = (None, None);
    while sse.is_none() || ws.is_none() {
        let (client, found, at) = tokio::time::timeout_at(deadline, arrivals.recv())
            .await
            .ok()??;
        if found == marker {
            match client {
                "sse" => sse = Some(at),
                _ => ws = Some(at),
            }
        }
    }
    Some((sse?, ws?))
}

#[tokio::test]
#[ignore = "needs the test cluster: cargo test -p tributary-operator --test cluster -- --ignored"]
async fn a_reading_published_through_the_gateway_reaches_sse_and_websocket_clients() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "live").await;
    start_operator(&ns.name);
    step("a Queue, a Gateway and a Device; a Worker with a live Sink; an ApplicationApi");
    history_sink(&ns).await;
    apply_yaml(&ns.api::<Queue>(), "apiVersion: tributary.dev/v1alpha1\nkind: Queue\nmetadata: {name: telemetry}\nspec:\n  broker:\n    managed: {}\n").await;
    apply_yaml(&ns.api::<Gateway>(), "apiVersion: tributary.dev/v1alpha1\nkind: Gateway\nmetadata: {name: line-1}\nspec:\n  listeners:\n    mqtt: {port: 1883}\n  auth: {}\n  routes:\n    - topicFilter: devices/#\n      queue: telemetry\n").await;
    apply_yaml(&ns.api::<Device>(), "apiVersion: tributary.dev/v1alpha1\nkind: Device\nmetadata: {name: press-1}\nspec:\n  gateways: [line-1]\n  credentials: {generated: {}}\n").await;
    let (sink, worker) = PIPELINE.split_once("---\n").expect("two documents");
    apply_yaml(&ns.api::<Sink>(), sink).await;
    apply_yaml(&ns.api::<Worker>(), worker).await;
    let apis: Api<ApplicationApi> = ns.api();
    apply_yaml(&apis, API).await;

    let secrets: Api<Secret> = ns.api();
    let password = wait_for("press-1-credentials", || {
        secret_text(&secrets, "press-1-credentials", "password")
    })
    .await;
    let key = wait_for("the issued key", || {
        secret_text(&secrets, "factory-api-keys", "watcher")
    })
    .await;
    wait_ready(&ns.api::<Worker>(), "view", "Worker Ready", |s, _| {
        s == "True"
    })
    .await;
    wait_ready(&apis, "factory", "ApplicationApi Ready", |s, _| s == "True").await;
    let gateway = ready_pod_ip(&ns, "gateway", "line-1").await;
    let api = ready_pod_ip(&ns, "api", "factory").await;

    step("an SSE and a WebSocket client of press-1's live messages");
    let (sender, mut arrivals) = mpsc::unbounded_channel();
    let query = format!("device=press-1&access_token={key}");
    let _sse = sse_client(
        format!("http://{api}:8080/v1/stream?{query}"),
        sender.clone(),
    );
    websocket_client(format!("ws://{api}:8080/v1/ws?{query}"), sender).await;

    step("warm-up readings until both clients receive one (the worker finds the exchange)");
    let mut warm = 0;
    loop {
        warm += 1;
        assert!(
            warm <= 60,
            "no warm-up reading reached both clients in 60 tries"
        );
        let marker = format!("warm-{warm}");
        assert!(
            publish(&gateway, &password, &marker).await,
            "{marker} accepted"
        );
        if both_received(&mut arrivals, &marker, Duration::from_secs(3))
            .await
            .is_some()
        {
            break;
        }
    }

    step("five readings, each timed from its publish to each client");
    let mut latencies = Vec::new();
    for i in 1..=5 {
        let marker = format!("timed-{i}");
        let start = Instant::now();
        assert!(
            publish(&gateway, &password, &marker).await,
            "{marker} accepted"
        );
        let (sse, ws) = both_received(&mut arrivals, &marker, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{marker} did not reach both clients within 30 s"));
        let (sse, ws) = (sse - start, ws - start);
        eprintln!(
            "live: {marker}: publish (connect, authenticate, PUBACK) to SSE {} ms, to WebSocket {} ms",
            sse.as_millis(),
            ws.as_millis()
        );
        latencies.push(sse.max(ws));
    }
    latencies.sort();
    eprintln!(
        "live: publish to both clients over 5 readings: median {} ms, max {} ms",
        latencies[2].as_millis(),
        latencies[4].as_millis()
    );

    registered_devices_and_backlog(&ns, &api, &key).await;
}

/// `/v1/devices` lists both registered Devices (press-1 with the activity its gateway
/// reported, idle-2 never seen) and `/v1/backlog` reads the live Queue's depth.
async fn registered_devices_and_backlog(ns: &TestNamespace, api: &str, key: &str) {
    step("the API lists the registered Devices (the roster) and the pipeline's backlog");
    apply_yaml(&ns.api::<Device>(), "apiVersion: tributary.dev/v1alpha1\nkind: Device\nmetadata: {name: idle-2}\nspec:\n  gateways: [line-1]\n  credentials: {generated: {}}\n").await;
    let devices_url = format!("http://{api}:8080/v1/devices");
    let (press, idle) = wait_for("press-1 and idle-2 registered in /v1/devices", || async {
        let (code, body) = get(&devices_url, Some(key)).await;
        let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
        let list = answer["devices"].as_array()?.clone();
        let registered = |id: &str| {
            list.iter()
                .find(|d| d["device"] == id && d["registered"] == true)
                .cloned()
        };
        (code == "200").then_some(())?;
        Some((registered("press-1")?, registered("idle-2")?))
    })
    .await;
    eprintln!("live: registered devices: {press} {idle}");
    assert_eq!(press["resource"], "press-1", "{press}");
    assert!(
        press["lastSeen"].is_string(),
        "the gateway reported press-1: {press}"
    );
    assert_eq!(idle["messages"], 0, "{idle}");
    assert!(idle["lastSeen"].is_null(), "idle-2 never connected: {idle}");
    let backlog_url = format!("http://{api}:8080/v1/backlog");
    let backlog = wait_for("the backlog's depth", || async {
        let (code, body) = get(&backlog_url, Some(key)).await;
        let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == "200" && answer["messages"].is_u64()).then_some(answer)
    })
    .await;
    eprintln!("live: backlog {backlog}");
    assert_eq!(
        backlog["consumers"], 1,
        "the Worker consumes the Queue: {backlog}"
    );
}
