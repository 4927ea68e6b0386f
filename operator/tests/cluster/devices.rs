//! Devices as resources on the real cluster: the operator issues credentials, a real
//! gateway pod accepts them with the device's attributes in its envelopes, reports the
//! device connected, closes a disabled device's live session within seconds, honours a
//! rotation's grace period, and accepts an issued certificate over mutual TLS.

use super::*;
use std::process::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tributary_operator::crd::Device;

/// Waits until publishing as `device` with `password` is accepted (`true`) or refused.
async fn wait_publish(ip: &str, device: &str, password: &str, accepted: bool, what: &str) {
    wait_for(what, || async {
        (mosquitto_pub(ip, device, password, "{\"probe\":1}").await == accepted).then_some(())
    })
    .await;
}

/// An MQTT 3.1.1 session held open by hand: CONNECT, CONNACK accepted.
async fn session(ip: &str, device: &str, password: &str) -> TcpStream {
    let mut stream = TcpStream::connect((ip, 1883)).await.expect("connect");
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60];
    for field in [
        format!("{device}-held"),
        device.to_owned(),
        password.to_owned(),
    ] {
        body.extend_from_slice(&u16::try_from(field.len()).expect("short").to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10, u8::try_from(body.len()).expect("short")];
    packet.extend(body);
    stream.write_all(&packet).await.expect("CONNECT");
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "{device}'s session is accepted");
    stream
}

/// Whether the gateway closed the session within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buffer = [0u8; 64];
    match tokio::time::timeout(limit, stream.read(&mut buffer)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => false,
    }
}

/// One envelope from the broker queue (the test publishes a few; any carries the device's
/// attributes).
async fn envelope_of(uri: &str, queue: &str, device: &str) -> Option<serde_json::Value> {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    use lapin::{Connection, ConnectionProperties};
    let connection = Connection::connect(uri, ConnectionProperties::default())
        .await
        .ok()?;
    let channel = connection.create_channel().await.ok()?;
    let mut found = None;
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .ok()?
    {
        let envelope: serde_json::Value = serde_json::from_slice(&message.data).ok()?;
        message.ack(BasicAckOptions::default()).await.ok()?;
        if envelope["device"] == device {
            found = Some(envelope);
            break;
        }
    }
    let _ = connection.close(200, "done".into()).await;
    found
}

fn device_yaml(name: &str, credentials: &str, extra: &str) -> String {
    format!("apiVersion: tributary.dev/v1alpha1\nkind: Device\nmetadata: {{name: {name}}}\nspec:\n  gateways: [line-1]\n  credentials: {credentials}\n{extra}")
}

/// A CA and a server certificate for the gateway's TLS listener, made with `openssl` as an
/// administrator would (any host: clients pass `--insecure`, which still verifies the
/// chain): (CA certificate, server certificate, server key) in PEM.
fn server_tls(dir: &std::path::Path) -> (String, String, String) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=test server CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=line-1-gateway",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:line-1-gateway\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("read");
    (read("ca.crt"), read("server.crt"), read("server.key"))
}

#[tokio::test]
#[ignore = "needs the test cluster: cargo test -p tributary-operator --test cluster -- --ignored"]
async fn devices_get_credentials_a_real_gateway_accepts_disables_and_rotations_apply_live() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "devices").await;
    start_operator(&ns.name);
    let secrets: Api<Secret> = ns.api();
    let devices: Api<Device> = ns.api();
    let queues: Api<Queue> = ns.api();
    let gateways: Api<Gateway> = ns.api();

    apply_yaml(&queues, "apiVersion: tributary.dev/v1alpha1\nkind: Queue\nmetadata: {name: telemetry}\nspec:\n  broker:\n    managed: {}\n").await;
    let dir = std::env::temp_dir().join(format!("tributary-{}", ns.name));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (server_ca, server_cert, server_key) = server_tls(&dir);
    let tls = Secret {
        metadata: ObjectMeta {
            name: Some("gateway-tls".into()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        string_data: Some(std::collections::BTreeMap::from([
            ("tls.crt".to_owned(), server_cert),
            ("tls.key".to_owned(), server_key),
        ])),
        ..Secret::default()
    };
    secrets
        .create(&PostParams::default(), &tls)
        .await
        .expect("TLS Secret");
    // No other auth method: the registry's Devices only.
    apply_yaml(&gateways, "apiVersion: tributary.dev/v1alpha1\nkind: Gateway\nmetadata: {name: line-1}\nspec:\n  listeners:\n    mqtt: {port: 1883}\n    mqttTls: {port: 8883, secretName: gateway-tls}\n  auth: {}\n  routes:\n    - topicFilter: devices/#\n      queue: telemetry\n").await;
    apply_yaml(
        &devices,
        &device_yaml(
            "lamp-1",
            "{generated: {}}",
            "  attributes: {site: north, model: sl-2}\n",
        ),
    )
    .await;
    apply_yaml(
        &devices,
        &device_yaml("lamp-2", "{generated: {gracePeriodSeconds: 20}}", ""),
    )
    .await;
    apply_yaml(
        &devices,
        &device_yaml("lamp-cert", "{certificate: {validityDays: 2}}", ""),
    )
    .await;

    step("credential Secrets issued");
    let password_1 = wait_for("lamp-1-credentials", || {
        secret_text(&secrets, "lamp-1-credentials", "password")
    })
    .await;
    let password_2 = wait_for("lamp-2-credentials", || {
        secret_text(&secrets, "lamp-2-credentials", "password")
    })
    .await;
    assert!(password_1.len() >= 32 && password_1 != password_2);
    wait_ready(&queues, "telemetry", "managed Queue Ready", |s, _| {
        s == "True"
    })
    .await;
    let ip = ready_pod_ip(&ns, "gateway", "line-1").await;

    step("a generated secret is accepted; the envelope carries the attributes");
    wait_publish(&ip, "lamp-1", &password_1, true, "lamp-1 accepted").await;
    assert!(
        !mosquitto_pub(&ip, "lamp-1", "wrong-password", "{}").await,
        "a wrong secret is refused"
    );
    let uri = managed_broker_uri(&ns, "telemetry").await;
    let broker_queue = format!("{}.telemetry", ns.name);
    let envelope = wait_for("lamp-1's envelope in the queue", || {
        envelope_of(&uri, &broker_queue, "lamp-1")
    })
    .await;
    assert_eq!(
        envelope["attributes"],
        serde_json::json!({"model": "sl-2", "site": "north"})
    );

    step("status: connected and last seen, from the gateway's report");
    let mut held_1 = session(&ip, "lamp-1", &password_1).await;
    wait_publish(&ip, "lamp-2", &password_2, true, "lamp-2 accepted").await;
    let mut held_2 = session(&ip, "lamp-2", &password_2).await;
    wait_for("lamp-1 reported connected", || async {
        let status = devices.get("lamp-1").await.ok()?.status?;
        (status.connected == Some(true) && status.last_seen.is_some()).then_some(())
    })
    .await;

    step("disabled: the live session closes within 5 s, new logins are refused");
    let patch = serde_json::json!({"spec": {"disabled": true}});
    devices
        .patch("lamp-1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("disable");
    let disabled_at = tokio::time::Instant::now();
    assert!(
        closed_within(&mut held_1, Duration::from_secs(5)).await,
        "lamp-1's session still open 5 s after it was disabled"
    );
    println!(
        "lamp-1's session closed {:?} after the patch",
        disabled_at.elapsed()
    );
    assert!(
        !mosquitto_pub(&ip, "lamp-1", &password_1, "{}").await,
        "a disabled device is refused"
    );
    assert!(
        !closed_within(&mut held_2, Duration::from_millis(200)).await,
        "another device's session stays up"
    );

    step("rotated: both secrets work during the grace period, then only the new one");
    let patch = serde_json::json!({"spec": {"credentials": {"generated": {"rotation": 1}}}});
    devices
        .patch("lamp-2", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("rotate");
    let new_2 = wait_for("lamp-2's new secret", || async {
        let new = secret_text(&secrets, "lamp-2-credentials", "password").await?;
        (new != password_2).then_some(new)
    })
    .await;
    wait_publish(&ip, "lamp-2", &new_2, true, "the new secret accepted").await;
    assert!(
        mosquitto_pub(&ip, "lamp-2", &password_2, "{}").await,
        "the old secret still works in the grace period"
    );
    wait_publish(
        &ip,
        "lamp-2",
        &password_2,
        false,
        "the old secret refused after the grace period",
    )
    .await;
    assert!(
        mosquitto_pub(&ip, "lamp-2", &new_2, "{}").await,
        "the new secret keeps working"
    );

    step("a certificate device over mutual TLS");
    for key in ["tls.crt", "tls.key"] {
        let text = wait_for("lamp-cert-certificate", || {
            secret_text(&secrets, "lamp-cert-certificate", key)
        })
        .await;
        std::fs::write(dir.join(key), text).expect("write");
    }
    std::fs::write(dir.join("server-ca.crt"), &server_ca).expect("write");
    let path = |name: &str| dir.join(name).display().to_string();
    let last_error = std::sync::Mutex::new(String::new());
    let accepted = wait_for("lamp-cert accepted over mTLS", || async {
        let out = Command::new("mosquitto_pub")
            .args(["-h", &ip, "-p", "8883", "-q", "1", "--insecure"])
            .args([
                "--cafile",
                &path("server-ca.crt"),
                "--cert",
                &path("tls.crt"),
                "--key",
                &path("tls.key"),
            ])
            .args(["-t", "devices/lamp-cert/telemetry", "-m", "{\"tls\":true}"])
            .output()
            .ok()?;
        if !out.status.success() {
            let error = String::from_utf8_lossy(&out.stderr).into_owned();
            let mut last = last_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *last != error {
                println!("mosquitto_pub over mTLS: {error}");
                *last = error;
            }
        }
        out.status.success().then_some(())
    })
    .await;
    let () = accepted;
    let _ = std::fs::remove_dir_all(&dir);
    drop(held_2);
}
