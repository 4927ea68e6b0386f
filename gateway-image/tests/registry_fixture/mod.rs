//! A device registry for the gateway's tests: the Secret's files in a temporary directory
//! (verifier key, sync token, gzip table written atomically as the kubelet does), a gateway
//! using it, and a raw HTTP client for the operator's endpoints.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tributary_contract::device_table::{
    RegistryFiles, SYNC_TOKEN_FILE, TABLE_FILE, VERIFIER_KEY_FILE,
};
use tributary_contract::gateway_config::{AuthConfig, GatewayConfig};
use tributary_gateway::app::Running;

use crate::common::*;

/// The registry Secret's files.
pub struct Fixture {
    pub dir: TempDir,
    pub key: Vec<u8>,
    pub token: String,
    pub files: RegistryFiles,
}

impl Fixture {
    /// Key and token written; no table file yet.
    pub fn new() -> Self {
        let dir = TempDir::new();
        let key = format!("key-{}", ulid::Ulid::generate()).into_bytes();
        let token = format!("token-{}", ulid::Ulid::generate());
        std::fs::write(dir.0.join(VERIFIER_KEY_FILE), &key).expect("key");
        dir.write(SYNC_TOKEN_FILE, &format!("{token}\n"));
        let files = RegistryFiles {
            table_file: dir.0.join(TABLE_FILE),
            verifier_key_file: dir.0.join(VERIFIER_KEY_FILE),
            sync_token_file: dir.0.join(SYNC_TOKEN_FILE),
            device_ca_file: None,
        };
        Self {
            dir,
            key,
            token,
            files,
        }
    }

    /// A `generated` credential for `secret`.
    pub fn generated(&self, secret: &str, not_after_ms: Option<u64>) -> serde_json::Value {
        let verifier =
            tributary_gateway::registry::verify::verifier_for(&self.key, secret.as_bytes());
        match not_after_ms {
            Some(at) => {
                serde_json::json!({"type": "generated", "verifier": verifier, "notAfterMs": at})
            }
            None => serde_json::json!({"type": "generated", "verifier": verifier}),
        }
    }

    /// Replaces the table file atomically (a rename, like the kubelet's symlink swap).
    pub fn write_table(&self, table: &serde_json::Value) {
        let staging = self
            .dir
            .0
            .join(format!("staging-{}", ulid::Ulid::generate()));
        std::fs::write(&staging, gzip(table)).expect("write table");
        std::fs::rename(&staging, &self.files.table_file).expect("swap table");
    }
}

/// gzip of a JSON document.
pub fn gzip(json: &serde_json::Value) -> Vec<u8> {
    gzip_bytes(json.to_string().as_bytes())
}

/// gzip of bytes.
pub fn gzip_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("compress");
    encoder.finish().expect("compress")
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    tributary_gateway::registry::now_ms()
}

/// A table document.
pub fn table(issued_at_ms: u64, devices: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"issuedAtMs": issued_at_ms, "devices": devices})
}

/// A gateway with the registry, a password file with `legacy-1:legacy-pw`, MQTT and HTTP.
pub async fn registry_gateway(
    fixture: &Fixture,
    queue: &str,
    tune: impl FnOnce(&mut GatewayConfig),
) -> Running {
    let uri = fixture.dir.write("amqp-uri", &amqp_url());
    let auth = AuthConfig {
        password_file: Some(password_file(&fixture.dir, &[("legacy-1", "legacy-pw")])),
        registry: Some(fixture.files.clone()),
        failed_logins_per_minute: 1000,
        ..AuthConfig::default()
    };
    let mut config = test_config(uri, vec![route("#", queue)], auth);
    tune(&mut config);
    start_connected(config).await
}

/// One request to the health listener; (status, body). `body` is sent after the head,
/// which the server may answer first (413).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect health");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("send head");
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Pushes a table; the status.
pub async fn push(running: &Running, token: &str, table: &serde_json::Value) -> u16 {
    let path = tributary_contract::device_table::TABLE_PATH;
    request(running.bound.health, "PUT", path, Some(token), &gzip(table))
        .await
        .0
}

/// The status report.
pub async fn status(running: &Running, token: &str) -> serde_json::Value {
    let path = tributary_contract::device_table::STATUS_PATH;
    let (code, body) = request(running.bound.health, "GET", path, Some(token), b"").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("report JSON")
}

/// Connects over MQTT 3.1.1 as `device`; the CONNACK code.
pub async fn connack(running: &Running, device: &str, password: &str) -> u8 {
    let addr = running.bound.mqtt.expect("mqtt");
    RawMqtt::connect(addr, device, password).await.1
}
