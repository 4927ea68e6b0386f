//! A real third-party client, Debian's `mosquitto_pub`, publishes through the gateway:
//! with user name and password, with a JWT, over TLS, and with a client certificate; an
//! untrusted certificate is refused.

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use tributary_contract::gateway_config::{AuthConfig, ClientCertificateAuth, JwtAuth, TlsListener};

/// Runs `mosquitto_pub` (QoS 1 unless the arguments say otherwise, so it waits for the
/// broker's answer) with extra arguments.
async fn mosquitto_pub(port: u16, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new("mosquitto_pub");
    command
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-i",
            "tributary-test",
        ])
        .args(args);
    match tokio::time::timeout(DEADLINE, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => panic!(
            "cannot run mosquitto_pub ({error}); install it with tests/services/install-clients.sh"
        ),
        Err(_) => panic!("mosquitto_pub did not finish in time"),
    }
}

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    device_cert: PathBuf,
    device_key: PathBuf,
    stranger_cert: PathBuf,
    stranger_key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
}

fn leaf(
    dir: &TempDir,
    name: &str,
    common_name: &str,
    sans: Vec<SanType>,
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = sans;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let certificate = params.signed_by(&key, issuer).expect("sign");
    (
        dir.write(&format!("{name}.pem"), &certificate.pem()),
        dir.write(&format!("{name}.key"), &key.serialize_pem()),
    )
}

fn pki(dir: &TempDir) -> Pki {
    let device_ca = ca("tributary test ca");
    let stranger_ca = ca("somebody else's ca");
    let ip = SanType::IpAddress("127.0.0.1".parse().expect("ip"));
    let (server_cert, server_key) = leaf(dir, "server", "gateway", vec![ip], &device_ca);
    let (device_cert, device_key) = leaf(dir, "device", "press-7", vec![], &device_ca);
    let (stranger_cert, stranger_key) = leaf(dir, "stranger", "press-7", vec![], &stranger_ca);
    Pki {
        ca: dir.write("ca.pem", &device_ca.pem()),
        server_cert,
        server_key,
        device_cert,
        device_key,
        stranger_cert,
        stranger_key,
    }
}

fn es256_keys(dir: &TempDir) -> (jsonwebtoken::EncodingKey, PathBuf) {
    let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let encoding =
        jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("key");
    (
        encoding,
        dir.write("jwt-public.pem", &pair.public_key_pem()),
    )
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[tokio::test]
async fn mosquitto_pub_publishes_with_password_jwt_tls_and_client_certificate() {
    let connection = amqp(&amqp_url()).await;
    let queue = fresh_queue(&connection, "mosquitto").await;
    let dir = TempDir::new();
    let pki = pki(&dir);
    let (jwt_key, jwt_public) = es256_keys(&dir);
    let uri = dir.write("amqp-uri", &amqp_url());
    let auth = AuthConfig {
        password_file: Some(password_file(&dir, &[("press-7", "pw7")])),
        jwt: Some(JwtAuth {
            public_key_files: vec![jwt_public],
            device_claim: "sub".into(),
            issuer: None,
            audience: None,
            max_token_lifetime_seconds: None,
        }),
        client_certificates: Some(ClientCertificateAuth {
            ca_file: pki.ca.clone(),
        }),
        ..AuthConfig::default()
    };
    let mut config = test_config(uri, vec![route("devices/#", &queue)], auth);
    config.listeners.mqtt_tls = Some(TlsListener {
        listen: "127.0.0.1:0".parse().expect("addr"),
        cert_file: pki.server_cert.clone(),
        key_file: pki.server_key.clone(),
    });
    let running = start_connected(config).await;
    let plain = running.bound.mqtt.expect("mqtt").port();
    let tls = running.bound.mqtt_tls.expect("mqtt tls").port();
    let exp = jiff::Timestamp::now().as_second() + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &serde_json::json!({"sub": "press-7", "exp": exp}),
        &jwt_key,
    )
    .expect("sign token");
    let topic = "devices/press-7/telemetry";
    let successes: Vec<(&str, u16, Vec<&str>)> = vec![
        (
            "password, MQTT 3.1.1",
            plain,
            vec!["-u", "press-7", "-P", "pw7", "-m", "{\"via\":1}"],
        ),
        (
            "password, MQTT 5",
            plain,
            vec![
                "-V",
                "mqttv5",
                "-u",
                "press-7",
                "-P",
                "pw7",
                "-m",
                "{\"via\":2}",
            ],
        ),
        (
            // A later -q overrides the helper's QoS 1: mosquitto_pub then waits for PUBCOMP.
            "password, MQTT 3.1.1, QoS 2",
            plain,
            vec!["-q", "2", "-u", "press-7", "-P", "pw7", "-m", "{\"via\":7}"],
        ),
        (
            "password, MQTT 5, QoS 2",
            plain,
            vec![
                "-V",
                "mqttv5",
                "-q",
                "2",
                "-u",
                "press-7",
                "-P",
                "pw7",
                "-m",
                "{\"via\":8}",
            ],
        ),
        (
            "jwt as password",
            plain,
            vec!["-u", "ignored", "-P", &token, "-m", "{\"via\":3}"],
        ),
        (
            "password over TLS",
            tls,
            vec![
                "--cafile",
                path(&pki.ca),
                "-u",
                "press-7",
                "-P",
                "pw7",
                "-m",
                "{\"via\":4}",
            ],
        ),
        (
            "client certificate",
            tls,
            vec![
                "--cafile",
                path(&pki.ca),
                "--cert",
                path(&pki.device_cert),
                "--key",
                path(&pki.device_key),
                "-m",
                "{\"via\":5}",
            ],
        ),
    ];
    for (name, port, mut args) in successes {
        args.extend(["-t", topic]);
        let output = mosquitto_pub(port, &args).await;
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The same token over HTTP; an expired one is refused.
    let http = running.bound.http.expect("http");
    let bearer = format!("Bearer {token}");
    let (status, _) = http_post(
        http,
        "/v1/publish/devices/press-7/telemetry",
        Some(&bearer),
        None,
        b"{\"via\":6}",
    )
    .await;
    assert_eq!(status, 202);
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &serde_json::json!({"sub": "press-7", "exp": exp - 7200}),
        &jwt_key,
    )
    .expect("sign token");
    let (status, _) = http_post(
        http,
        "/v1/publish/devices/press-7/telemetry",
        Some(&format!("Bearer {expired}")),
        None,
        b"{\"refused\":true}",
    )
    .await;
    assert_eq!(status, 401, "expired token");
    let messages = drain_queue(&connection, &queue).await;
    let mut via: Vec<u64> = messages
        .iter()
        .filter_map(|m| m["payload"]["data"]["via"].as_u64())
        .collect();
    via.sort_unstable();
    assert_eq!(via, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert!(messages.iter().all(|m| m["device"] == "press-7"));

    let refusals: Vec<(&str, u16, Vec<&str>)> = vec![
        ("wrong password", plain, vec!["-u", "press-7", "-P", "nope"]),
        ("unknown device", plain, vec!["-u", "ghost", "-P", "pw7"]),
        ("no credentials", plain, vec![]),
        (
            "jwt signed by a stranger",
            plain,
            vec![
                "-u",
                "x",
                "-P",
                "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJwcmVzcy03In0.c2ln",
            ],
        ),
        (
            "untrusted client certificate",
            tls,
            vec![
                "--cafile",
                path(&pki.ca),
                "--cert",
                path(&pki.stranger_cert),
                "--key",
                path(&pki.stranger_key),
            ],
        ),
    ];
    for (name, port, mut args) in refusals {
        args.extend(["-t", topic, "-m", "{\"refused\":true}"]);
        let output = mosquitto_pub(port, &args).await;
        assert!(!output.status.success(), "{name}: was accepted");
    }
    assert!(
        drain_queue(&connection, &queue).await.is_empty(),
        "nothing refused reached the queue"
    );
    delete_queue(&connection, &queue).await;
}
