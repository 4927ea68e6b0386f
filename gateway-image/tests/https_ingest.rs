//! HTTPS ingest (`listeners.httpTls`) against the real RabbitMQ: a password or a verified
//! client certificate as the credential, refusals without one, and the handshake's
//! deadline and connection cap shared with plain HTTP.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tributary_contract::gateway_config::{AuthConfig, ClientCertificateAuth, TlsListener};
use tributary_gateway::app::Running;

const TOPIC_PATH: &str = "/v1/publish/devices/press-7/telemetry";

struct Pki {
    dir: TempDir,
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    device: (PathBuf, PathBuf),
    stranger: (PathBuf, PathBuf),
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

fn pki() -> Pki {
    let dir = TempDir::new();
    let device_ca = ca("tributary test ca");
    let stranger_ca = ca("somebody else's ca");
    let ip = SanType::IpAddress("127.0.0.1".parse().expect("ip"));
    let server = leaf(&dir, "server", "gateway", vec![ip], &device_ca);
    let device = leaf(&dir, "device", "press-7", vec![], &device_ca);
    let stranger = leaf(&dir, "stranger", "press-7", vec![], &stranger_ca);
    Pki {
        ca: dir.write("ca.pem", &device_ca.pem()),
        dir,
        server,
        device,
        stranger,
    }
}

/// A gateway with plain and TLS HTTP ingest, passwords, and client certificates signed by
/// the test CA.
async fn https_gateway(
    pki: &Pki,
    queue: &str,
    tune: impl FnOnce(&mut tributary_contract::gateway_config::GatewayConfig),
) -> Running {
    let uri = pki.dir.write("amqp-uri", &amqp_url());
    let auth = AuthConfig {
        password_file: Some(password_file(&pki.dir, &[("press-7", "pw7")])),
        client_certificates: Some(ClientCertificateAuth {
            ca_file: pki.ca.clone(),
        }),
        ..AuthConfig::default()
    };
    let mut config = test_config(uri, vec![route("devices/#", queue)], auth);
    config.listeners.http_tls = Some(TlsListener {
        listen: "127.0.0.1:0".parse().expect("addr"),
        cert_file: pki.server.0.clone(),
        key_file: pki.server.1.clone(),
    });
    tune(&mut config);
    start_connected(config).await
}

/// A TLS client trusting the test CA, presenting `identity` (certificate, key) if given.
fn connector(pki: &Pki, identity: Option<&(PathBuf, PathBuf)>) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&pki.ca).expect("ca pem"))
        .expect("root");
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(cert).expect("cert pem")],
                PrivateKeyDer::from_pem_file(key).expect("key pem"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// POSTs over TLS; `Err` when the handshake fails, else (status, body).
async fn https_post(
    addr: SocketAddr,
    connector: &TlsConnector,
    authorization: Option<&str>,
    body: &[u8],
) -> Result<(u16, String), std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress("127.0.0.1".parse::<std::net::IpAddr>().expect("ip").into());
    let mut stream = connector.connect(name, tcp).await?;
    let mut request = format!(
        "POST {TOPIC_PATH} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(value) = authorization {
        request.push_str(&format!("Authorization: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    // TLS 1.3 reports a refused client certificate only when the client reads.
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response)).await;
    if let Ok(Err(error)) = read {
        if response.is_empty() {
            return Err(error);
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::test]
async fn https_post_with_a_password_is_in_the_queue_when_202_arrives() {
    let connection = amqp(&amqp_url()).await;
    let queue = fresh_queue(&connection, "https").await;
    let pki = pki();
    let running = https_gateway(&pki, &queue, |_| {}).await;
    let https = running.bound.http_tls.expect("https listener");
    let client = connector(&pki, None);
    for n in 1..=3 {
        let body = format!("{{\"n\":{n}}}");
        let (status, response) = https_post(
            https,
            &client,
            Some(&basic("press-7", "pw7")),
            body.as_bytes(),
        )
        .await
        .expect("https exchange");
        assert_eq!(status, 202, "{response}");
        // Accepted means confirmed: the message is in the queue right now, no waiting.
        let messages = drain_queue(&connection, &queue).await;
        assert_eq!(
            messages.len(),
            1,
            "message {n} not in the queue at 202 time"
        );
        assert_eq!(messages[0]["device"], "press-7");
        assert_eq!(messages[0]["protocol"], "http");
        assert_eq!(messages[0]["payload"]["data"]["n"], n);
    }
    delete_queue(&connection, &queue).await;
}

#[tokio::test]
async fn a_verified_client_certificate_is_the_devices_credential_over_https() {
    let connection = amqp(&amqp_url()).await;
    let queue = fresh_queue(&connection, "https-cert").await;
    let pki = pki();
    let running = https_gateway(&pki, &queue, |_| {}).await;
    let https = running.bound.http_tls.expect("https listener");
    let (status, response) = https_post(https, &connector(&pki, Some(&pki.device)), None, b"{}")
        .await
        .expect("https exchange");
    assert_eq!(status, 202, "{response}");
    let messages = drain_queue(&connection, &queue).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["device"], "press-7");
    delete_queue(&connection, &queue).await;
}

#[tokio::test]
async fn https_without_a_credential_or_with_an_untrusted_certificate_is_refused() {
    let connection = amqp(&amqp_url()).await;
    let queue = fresh_queue(&connection, "https-refused").await;
    let pki = pki();
    let running = https_gateway(&pki, &queue, |_| {}).await;
    let https = running.bound.http_tls.expect("https listener");
    let (status, _) = https_post(https, &connector(&pki, None), None, b"{}")
        .await
        .expect("https exchange");
    assert_eq!(status, 401, "no credential is not anonymous");
    let (status, _) = https_post(
        https,
        &connector(&pki, None),
        Some(&basic("press-7", "nope")),
        b"{}",
    )
    .await
    .expect("https exchange");
    assert_eq!(status, 401, "wrong password");
    // A certificate from another CA fails the handshake: no request is served at all.
    let stranger = https_post(https, &connector(&pki, Some(&pki.stranger)), None, b"{}").await;
    assert!(
        stranger.is_err(),
        "untrusted certificate was served: {stranger:?}"
    );
    assert!(drain_queue(&connection, &queue).await.is_empty());
    delete_queue(&connection, &queue).await;
}

/// Whether the server closes `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 256];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buffer)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn a_silent_tls_client_is_closed_after_the_handshake_deadline_while_others_publish() {
    let connection = amqp(&amqp_url()).await;
    let queue = fresh_queue(&connection, "https-silent").await;
    let pki = pki();
    let running = https_gateway(&pki, &queue, |config| {
        config.limits.http_header_timeout_seconds = 1;
    })
    .await;
    let https = running.bound.http_tls.expect("https listener");
    let mut silent = TcpStream::connect(https).await.expect("connect");
    let started = tokio::time::Instant::now();
    let (status, _) = https_post(https, &connector(&pki, Some(&pki.device)), None, b"{}")
        .await
        .expect("https exchange");
    assert_eq!(status, 202, "another device publishes meanwhile");
    // The deadline is 1 s; generous slack for a loaded machine, far below "never".
    assert!(
        closed_within(&mut silent, Duration::from_secs(10)).await,
        "silent TLS client still open after {:?}",
        started.elapsed()
    );
    assert_eq!(drain_queue(&connection, &queue).await.len(), 1);
    delete_queue(&connection, &queue).await;
}

#[tokio::test]
async fn tls_handshakes_in_progress_count_against_the_http_connection_cap() {
    let connection = amqp(&amqp_url()).await;
    let queue = fresh_queue(&connection, "https-cap").await;
    let pki = pki();
    let running = https_gateway(&pki, &queue, |config| {
        config.limits.max_http_connections = 2;
        config.limits.http_header_timeout_seconds = 2;
    })
    .await;
    let https = running.bound.http_tls.expect("https listener");
    let http = running.bound.http.expect("http listener");
    let silent = silent_connections(https).await;
    // Both slots are held by handshakes that never start: plain HTTP is turned away too,
    // closed without an answer.
    assert_eq!(
        plain_status(http).await,
        None,
        "a third connection was served past the shared cap"
    );
    // Once the silent handshakes time out, their slots are free again.
    let served = eventually(DEADLINE, || async { plain_status(http).await == Some(202) }).await;
    drop(silent);
    assert!(
        served,
        "plain HTTP not served after the TLS handshakes timed out"
    );
    delete_queue(&connection, &queue).await;
}

/// A password-authenticated POST over plain HTTP: its status, `None` when the connection
/// is closed without an answer.
async fn plain_status(addr: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!(
        "POST {TOPIC_PATH} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\nAuthorization: {}\r\nContent-Length: 2\r\n\r\n{{}}",
        basic("press-7", "pw7")
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// Two TCP connections to `addr` that never start their TLS handshake.
async fn silent_connections(addr: SocketAddr) -> Vec<TcpStream> {
    let mut streams = Vec::new();
    for _ in 0..2 {
        streams.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Let the gateway accept both before the test goes on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    streams
}
