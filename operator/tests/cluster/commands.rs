//! Commands end to end on the real cluster: a device subscribed to its commands through a
//! real gateway pod receives the command a real worker pod's `command` sink sends when the
//! device's own reading crosses a limit (telemetry → queue → worker → command exchange →
//! the device's command queue → the gateway pod holding its connection → the device).

use super::*;
use std::process::Stdio;
use tributary_operator::crd::Device;

/// The gateway pods' log (for a failure's message).
async fn gateway_log(namespace: &str) -> String {
    let out = tokio::process::Command::new("kubectl")
        .args([
            "-n",
            namespace,
            "logs",
            "deployment/line-1-gateway",
            "--tail",
            "40",
        ])
        .output()
        .await;
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("kubectl logs: {e}"))
}

/// One reading of device `fan-1`; true when the gateway accepted it.
async fn publish_reading(ip: &str, password: &str, temperature: f64) -> bool {
    let reading = format!("{{\"temperature\": {temperature}}}");
    mosquitto_pub(ip, "fan-1", password, &reading).await
}

const SINK: &str = "apiVersion: tributary.dev/v1alpha1
kind: Sink
metadata: {name: fan-control}
spec:
  command:
    command: fan/set
    when: payload.temperature > 80.0
    payload: \"{'speed': 100, 'reading': payload.temperature}\"
    ttlSeconds: 60
";

const WORKER: &str = "apiVersion: tributary.dev/v1alpha1
kind: Worker
metadata: {name: cooling}
spec:
  queue: telemetry
  sinks: [fan-control]
  scaling: {minReplicas: 1, maxReplicas: 1}
";

#[tokio::test]
#[ignore = "needs the test cluster: cargo test -p tributary-operator --test cluster -- --ignored"]
async fn a_workers_command_sink_commands_the_device_whose_reading_crossed_the_limit() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "commands").await;
    start_operator(&ns.name);
    let secrets: Api<Secret> = ns.api();
    let queues: Api<Queue> = ns.api();
    apply_yaml(&queues, "apiVersion: tributary.dev/v1alpha1\nkind: Queue\nmetadata: {name: telemetry}\nspec:\n  broker:\n    managed: {}\n").await;
    apply_yaml(&ns.api::<Gateway>(), "apiVersion: tributary.dev/v1alpha1\nkind: Gateway\nmetadata: {name: line-1}\nspec:\n  listeners:\n    mqtt: {port: 1883}\n  auth: {}\n  routes:\n    - topicFilter: devices/#\n      queue: telemetry\n").await;
    apply_yaml(&ns.api::<Device>(), "apiVersion: tributary.dev/v1alpha1\nkind: Device\nmetadata: {name: fan-1}\nspec:\n  gateways: [line-1]\n  credentials: {generated: {}}\n").await;
    let sinks: Api<Sink> = ns.api();
    apply_yaml(&sinks, SINK).await;
    let workers: Api<Worker> = ns.api();
    apply_yaml(&workers, WORKER).await;

    step("the pipeline is up");
    let password = wait_for("fan-1-credentials", || {
        secret_text(&secrets, "fan-1-credentials", "password")
    })
    .await;
    wait_ready(&sinks, "fan-control", "command Sink Ready", |s, _| {
        s == "True"
    })
    .await;
    wait_ready(&workers, "cooling", "Worker Ready", |s, _| s == "True").await;
    let ip = ready_pod_ip(&ns, "gateway", "line-1").await;

    step("the device subscribes to its commands; a hot reading commands its fan");
    let subscriber = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            &ip,
            "-p",
            "1883",
            "-q",
            "1",
            "-i",
            "fan-1-sub",
            "-V",
            "mqttv5",
        ])
        .args(["-u", "fan-1", "-P", &password])
        .args(["-t", "commands/fan-1/#", "-C", "1", "-v", "-W", "170"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub runs");
    let received = tokio::spawn(subscriber.wait_with_output());
    // A cool reading first: no command. Then hot ones until the command arrives (the
    // first may be processed before the subscription exists: undeliverable, counted).
    assert!(
        publish_reading(&ip, &password, 21.5).await,
        "a cool reading accepted"
    );
    wait_for("the fan/set command at the device", || async {
        if received.is_finished() {
            return Some(());
        }
        publish_reading(&ip, &password, 91.5).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        None
    })
    .await;
    let output = received.await.expect("joined").expect("mosquitto_sub ran");
    let text = String::from_utf8_lossy(&output.stdout);
    let error = String::from_utf8_lossy(&output.stderr);
    let Some((topic, payload)) = text.trim().split_once(' ') else {
        panic!(
            "no command at the device; mosquitto_sub: {text:?} {error:?}; gateway log:\n{}",
            gateway_log(&ns.name).await
        );
    };
    assert_eq!(topic, "commands/fan-1/fan/set");
    let command: serde_json::Value = serde_json::from_str(payload).expect("JSON payload");
    assert_eq!(command["speed"], 100, "{command}");
    assert_eq!(command["reading"], 91.5, "from the hot reading: {command}");
}
