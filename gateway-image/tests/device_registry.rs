//! The device registry's credentials and per-device settings against the real RabbitMQ:
//! generated secrets, per-device JWT keys, certificates of the device CA, extra publish
//! topics, attributes in envelopes, and the status report. Table changes (push, file,
//! revocation, rotation) are in `device_registry_sync.rs`.

mod common;
mod registry_fixture;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use registry_fixture::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tributary_contract::gateway_config::{JwtAuth, TlsListener};

#[tokio::test]
async fn a_generated_secret_logs_in_a_wrong_one_does_not_and_attributes_reach_the_envelope() {
    let broker = amqp(&amqp_url()).await;
    let queue = fresh_queue(&broker, "registry-attributes").await;
    let fixture = Fixture::new();
    fixture.write_table(&table(
        1,
        json!([
            {"id": "lamp-1", "credentials": [fixture.generated("lamp-secret", None)],
             "attributes": {"site": "north", "model": "L2"}},
            {"id": "shadow-1", "credentials": [fixture.generated("shadow-secret", None)]}
        ]),
    ));
    let running = registry_gateway(&fixture, &queue, |_| {}).await;
    assert_eq!(connack(&running, "lamp-1", "wrong-secret").await, 4);
    assert_eq!(connack(&running, "nobody", "lamp-secret").await, 4);
    // In the table: its credentials come from the table only, not the password file.
    assert_eq!(connack(&running, "shadow-1", "legacy-pw").await, 4);
    assert_eq!(connack(&running, "shadow-1", "shadow-secret").await, 0);
    assert_eq!(
        connack(&running, "legacy-1", "legacy-pw").await,
        0,
        "password file as before"
    );

    let addr = running.bound.mqtt.expect("mqtt");
    let (mut lamp, code) = RawMqtt::connect(addr, "lamp-1", "lamp-secret").await;
    assert_eq!(code, 0);
    assert_eq!(
        lamp.publish_qos1("devices/lamp-1/t", 1, b"{\"v\":1}").await,
        Some(1)
    );
    let http = running.bound.http.expect("http");
    let auth = basic("lamp-1", "lamp-secret");
    let (status, body) = http_post(
        http,
        "/v1/publish/devices/lamp-1/h",
        Some(&auth),
        None,
        b"{\"v\":2}",
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (legacy, code) = RawMqtt::connect(addr, "legacy-1", "legacy-pw").await;
    assert_eq!(code, 0);
    let mut legacy = legacy;
    assert_eq!(
        legacy.publish_qos1("devices/legacy-1/t", 2, b"{}").await,
        Some(2)
    );

    let messages = wait_for_messages(&broker, &queue, 3).await;
    assert_eq!(messages.len(), 3);
    let attributes = json!({"site": "north", "model": "L2"});
    for message in messages.iter().filter(|m| m["device"] == "lamp-1") {
        assert_eq!(message["attributes"], attributes, "{message}");
    }
    let protocols: Vec<&str> = messages
        .iter()
        .filter(|m| m["device"] == "lamp-1")
        .filter_map(|m| m["protocol"].as_str())
        .collect();
    assert_eq!(
        protocols.len(),
        2,
        "one over MQTT, one over HTTP: {protocols:?}"
    );
    assert!(protocols.contains(&"mqtt") && protocols.contains(&"http"));
    let legacy_message = messages
        .iter()
        .find(|m| m["device"] == "legacy-1")
        .expect("legacy");
    assert!(
        legacy_message.get("attributes").is_none(),
        "{legacy_message}"
    );
    running.drain(DEADLINE).await;
    delete_queue(&broker, &queue).await;
}

#[tokio::test]
async fn a_devices_extra_publish_topic_is_permitted_and_others_still_refused() {
    let broker = amqp(&amqp_url()).await;
    let queue = fresh_queue(&broker, "registry-topics").await;
    let fixture = Fixture::new();
    fixture.write_table(&table(
        1,
        json!([
            {"id": "lamp-1", "credentials": [fixture.generated("s1", None)],
             "publishTopics": ["city/{device}/#"]},
            {"id": "lamp-2", "credentials": [fixture.generated("s2", None)]}
        ]),
    ));
    let running = registry_gateway(&fixture, &queue, |_| {}).await;
    let http = running.bound.http.expect("http");
    let post = |device: &'static str, secret: &'static str, topic: &'static str| async move {
        let auth = basic(device, secret);
        http_post(
            http,
            &format!("/v1/publish/{topic}"),
            Some(&auth),
            None,
            b"{}",
        )
        .await
        .0
    };
    assert_eq!(post("lamp-1", "s1", "city/lamp-1/light").await, 202);
    assert_eq!(
        post("lamp-1", "s1", "devices/lamp-1/t").await,
        202,
        "the Gateway's templates still apply"
    );
    assert_eq!(
        post("lamp-1", "s1", "city/lamp-2/light").await,
        403,
        "{{device}} is its own id"
    );
    assert_eq!(
        post("lamp-2", "s2", "city/lamp-2/light").await,
        403,
        "not lamp-2's topic"
    );
    let addr = running.bound.mqtt.expect("mqtt");
    let (mut lamp, code) = RawMqtt::connect(addr, "lamp-1", "s1").await;
    assert_eq!(code, 0);
    assert_eq!(lamp.publish_qos1("city/lamp-1/x", 3, b"{}").await, Some(3));
    assert_eq!(wait_for_messages(&broker, &queue, 3).await.len(), 3);
    running.drain(DEADLINE).await;
    delete_queue(&broker, &queue).await;
}

struct Signer {
    key: EncodingKey,
    public_pem: String,
}

fn es256_signer() -> Signer {
    let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    Signer {
        key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("encoding key"),
        public_pem: pair.public_key_pem(),
    }
}

fn token_for(signer: &Signer, device: &str) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let claims = json!({"sub": device, "exp": exp});
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &signer.key).expect("sign")
}

#[tokio::test]
async fn a_per_device_jwt_key_signs_only_that_devices_tokens_and_gateway_keys_keep_working() {
    let broker = amqp(&amqp_url()).await;
    let queue = fresh_queue(&broker, "registry-jwt").await;
    let fixture = Fixture::new();
    let (a, b, gateway_key) = (es256_signer(), es256_signer(), es256_signer());
    fixture.write_table(&table(
        1,
        json!([
            {"id": "meter-a", "credentials": [{"type": "jwt", "publicKey": a.public_pem}]},
            {"id": "meter-b", "credentials": [{"type": "jwt", "publicKey": b.public_pem}]}
        ]),
    ));
    let gateway_pem = fixture
        .dir
        .write("gateway-key.pem", &gateway_key.public_pem);
    let running = registry_gateway(&fixture, &queue, |config| {
        config.auth.jwt = Some(JwtAuth {
            public_key_files: vec![gateway_pem],
            device_claim: "sub".into(),
            issuer: None,
            audience: None,
            max_token_lifetime_seconds: None,
        });
    })
    .await;
    assert_eq!(connack(&running, "x", &token_for(&a, "meter-a")).await, 0);
    assert_eq!(
        connack(&running, "x", &token_for(&b, "meter-a")).await,
        4,
        "signed with B's key"
    );
    assert_eq!(
        connack(&running, "x", &token_for(&gateway_key, "meter-a")).await,
        4,
        "a table device's tokens are checked with its own keys only"
    );
    assert_eq!(
        connack(&running, "x", &token_for(&gateway_key, "fleet-9")).await,
        0
    );
    assert_eq!(connack(&running, "x", &token_for(&a, "fleet-9")).await, 4);
    let http = running.bound.http.expect("http");
    let bearer = format!("Bearer {}", token_for(&b, "meter-b"));
    let (status, body) = http_post(
        http,
        "/v1/publish/devices/meter-b/t",
        Some(&bearer),
        None,
        b"{}",
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let messages = wait_for_messages(&broker, &queue, 1).await;
    assert_eq!(messages[0]["device"], "meter-b");
    running.drain(DEADLINE).await;
    delete_queue(&broker, &queue).await;
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
}

fn leaf(
    dir: &TempDir,
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
        dir.write(&format!("{common_name}.pem"), &certificate.pem()),
        dir.write(&format!("{common_name}.key"), &key.serialize_pem()),
    )
}

/// Connects over MQTT-TLS presenting `identity`; the CONNACK code, or `None` when the
/// handshake or the connection failed.
async fn tls_connack(
    addr: std::net::SocketAddr,
    server_ca: &PathBuf,
    identity: &(PathBuf, PathBuf),
) -> Option<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(server_ca).expect("ca pem"))
        .expect("root");
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_file(&identity.0).expect("cert pem")],
            PrivateKeyDer::from_pem_file(&identity.1).expect("key pem"),
        )
        .expect("client auth");
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut stream = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()?;
    stream
        .write_all(&connect_packet("tls-client", "ignored", "ignored"))
        .await
        .ok()?;
    let mut connack = [0u8; 4];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut connack))
        .await
        .ok()?
        .ok()?;
    Some(connack[3])
}

#[tokio::test]
async fn certificates_of_the_device_ca_authenticate_only_table_devices_with_a_certificate_credential(
) {
    let broker = amqp(&amqp_url()).await;
    let queue = fresh_queue(&broker, "registry-certs").await;
    let mut fixture = Fixture::new();
    let (server_ca, device_ca) = (ca("server ca"), ca("device ca"));
    let ip = SanType::IpAddress("127.0.0.1".parse().expect("ip"));
    let server = leaf(&fixture.dir, "gateway", vec![ip], &server_ca);
    let server_ca_file = fixture.dir.write("server-ca.pem", &server_ca.pem());
    fixture.files.device_ca_file = Some(fixture.dir.write("device-ca.crt", &device_ca.pem()));
    let certificate = json!({"type": "certificate"});
    fixture.write_table(&table(
        1,
        json!([
            {"id": "meter-1", "credentials": [certificate]},
            {"id": "meter-2", "credentials": [fixture.generated("s", None)]},
            {"id": "meter-3", "disabled": true, "credentials": [certificate]}
        ]),
    ));
    let running = registry_gateway(&fixture, &queue, |config| {
        config.listeners.mqtt_tls = Some(TlsListener {
            listen: "127.0.0.1:0".parse().expect("addr"),
            cert_file: server.0.clone(),
            key_file: server.1.clone(),
        });
    })
    .await;
    let addr = running.bound.mqtt_tls.expect("mqtt tls");
    let connack = |cn: &str| {
        let identity = leaf(&fixture.dir, cn, vec![], &device_ca);
        let server_ca_file = server_ca_file.clone();
        async move { tls_connack(addr, &server_ca_file, &identity).await }
    };
    assert_eq!(
        connack("meter-1").await,
        Some(0),
        "mTLS with only a device CA"
    );
    assert_eq!(
        connack("ghost-1").await,
        Some(4),
        "device CA, CN not in the table"
    );
    assert_eq!(
        connack("meter-2").await,
        Some(4),
        "no certificate credential"
    );
    assert_eq!(connack("meter-3").await, Some(4), "disabled");
    let stranger = leaf(&fixture.dir, "stranger", vec![], &ca("somebody else"));
    assert_ne!(tls_connack(addr, &server_ca_file, &stranger).await, Some(0));
    running.drain(DEADLINE).await;
    delete_queue(&broker, &queue).await;
}

#[tokio::test]
async fn the_status_endpoint_reports_connections_last_seen_and_counts_of_table_devices() {
    let broker = amqp(&amqp_url()).await;
    let queue = fresh_queue(&broker, "registry-status").await;
    let fixture = Fixture::new();
    fixture.write_table(&table(
        42,
        json!([
            {"id": "lamp-1", "credentials": [fixture.generated("s1", None)]},
            {"id": "lamp-2", "credentials": [fixture.generated("s2", None)]}
        ]),
    ));
    let running = registry_gateway(&fixture, &queue, |_| {}).await;
    let health = running.bound.health;
    let path = tributary_contract::device_table::STATUS_PATH;
    assert_eq!(
        request(health, "GET", path, Some("wrong"), b"").await.0,
        401
    );
    assert_eq!(request(health, "GET", path, None, b"").await.0, 401);
    let before = now_ms();
    let addr = running.bound.mqtt.expect("mqtt");
    let (mut lamp, code) = RawMqtt::connect(addr, "lamp-1", "s1").await;
    assert_eq!(code, 0);
    assert_eq!(
        lamp.publish_qos1("devices/lamp-1/a", 1, b"{}").await,
        Some(1)
    );
    assert_eq!(
        lamp.publish_qos1("devices/lamp-1/b", 2, b"{}").await,
        Some(2)
    );
    let http = running.bound.http.expect("http");
    let auth = basic("lamp-1", "s1");
    assert_eq!(
        http_post(http, "/v1/publish/elsewhere", Some(&auth), None, b"{}")
            .await
            .0,
        403
    );
    assert_eq!(connack(&running, "lamp-1", "wrong").await, 4);
    assert_eq!(connack(&running, "legacy-1", "legacy-pw").await, 0);

    let report = status(&running, &fixture.token).await;
    assert_eq!(report["tableIssuedAtMs"], 42);
    let devices = report["devices"].as_array().expect("devices");
    assert_eq!(
        devices.len(),
        1,
        "only table devices that were seen: {report}"
    );
    let lamp_report = &devices[0];
    assert_eq!(lamp_report["id"], "lamp-1");
    assert_eq!(lamp_report["connections"], 1);
    assert_eq!(lamp_report["accepted"], 2);
    assert_eq!(
        lamp_report["rejected"], 2,
        "a refused message and a failed login"
    );
    let last_seen = lamp_report["lastSeenMs"].as_u64().expect("last seen");
    assert!(last_seen >= before && last_seen <= now_ms(), "{last_seen}");
    drop(lamp);
    assert!(
        eventually(DEADLINE, || async {
            status(&running, &fixture.token).await["devices"][0]["connections"] == 0
        })
        .await,
        "the connection count falls when the session ends"
    );
    running.drain(DEADLINE).await;
    delete_queue(&broker, &queue).await;
}
