//! The one gateway every row runs against: plain MQTT, MQTT over TLS with client
//! certificates, HTTP ingest, passwords, JWTs with issuer/audience/lifetime required, short
//! timeouts so the slow rows stay fast, and a well-behaved device publishing throughout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use tokio::net::{TcpSocket, TcpStream};
use tributary_contract::gateway_config::{
    AuthConfig, ClientCertificateAuth, JwtAuth, Limits, TlsListener,
};
use tributary_gateway::app::Running;

use crate::common::*;

/// The configured bounds the rows measure against.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const MAX_KEEP_ALIVE: u16 = 2;
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
pub const BODY_TIMEOUT: Duration = Duration::from_secs(1);
pub const MAX_HTTP_CONNECTIONS: usize = 600;
pub const MAX_CONNECTIONS_PER_DEVICE: usize = 2;
pub const MAX_PAYLOAD: usize = 1024;
pub const JWT_ISSUER: &str = "https://issuer.example";
pub const JWT_AUDIENCE: &str = "tributary";
pub const JWT_MAX_LIFETIME: u64 = 3600;
/// Devices `dev-0` … for rows of their own.
pub const DEVICE_POOL: usize = 60;

/// The password of `press-N` (the well-behaved device is press-1).
pub fn password(device: &str) -> String {
    format!("pw-{device}")
}

/// A CA that signs certificates.
pub type Ca = CertifiedIssuer<'static, KeyPair>;

pub fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
}

/// Certificate and key PEM of a leaf with this common name, signed by `issuer` or (None)
/// by itself; `expired` puts its validity in the past.
pub fn leaf(common_name: &str, issuer: Option<&Ca>, expired: bool) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().expect("ip"))];
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let certificate = match issuer {
        Some(issuer) => params.signed_by(&key, issuer),
        None => params.self_signed(&key),
    }
    .expect("sign");
    (certificate.pem(), key.serialize_pem())
}

/// The running gateway and what the rows need to reach it.
pub struct Bench {
    pub running: Running,
    pub connection: lapin::Connection,
    pub queue: String,
    pub device_ca: Ca,
    pub jwt_key: jsonwebtoken::EncodingKey,
    /// The JWT public key PEM (for the algorithm-confusion row).
    pub jwt_public_pem: String,
    pub dir: TempDir,
}

impl Bench {
    pub async fn start() -> Self {
        let connection = amqp(&amqp_url()).await;
        let queue = fresh_queue(&connection, "hostile-table").await;
        let dir = TempDir::new();
        let uri = dir.write("amqp-uri", &amqp_url());
        let device_ca = ca("tributary device ca");
        let (server_cert, server_key) = leaf("gateway", Some(&device_ca), false);
        let jwt_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let jwt_key = jsonwebtoken::EncodingKey::from_ec_pem(jwt_pair.serialize_pem().as_bytes())
            .expect("jwt key");
        let jwt_public_pem = jwt_pair.public_key_pem();
        let auth = auth_config(&dir, &jwt_public_pem, &device_ca);
        let mut config = test_config(uri, vec![route("devices/#", &queue)], auth);
        config.listeners.mqtt_tls = Some(TlsListener {
            listen: "127.0.0.1:0".parse().expect("addr"),
            cert_file: dir.write("server.pem", &server_cert),
            key_file: dir.write("server.key", &server_key),
        });
        config.limits = limits();
        let running = start_connected(config).await;
        Self {
            running,
            connection,
            queue,
            device_ca,
            jwt_key,
            jwt_public_pem,
            dir,
        }
    }

    pub fn mqtt(&self) -> SocketAddr {
        self.running.bound.mqtt.expect("mqtt listener")
    }

    pub fn mqtt_tls(&self) -> SocketAddr {
        self.running.bound.mqtt_tls.expect("mqtt tls listener")
    }

    pub fn http(&self) -> SocketAddr {
        self.running.bound.http.expect("http listener")
    }

    pub fn health(&self) -> SocketAddr {
        self.running.bound.health
    }

    /// The device CA as PEM (it also signed the server certificate; TLS clients trust it).
    pub fn ca_pem(&self) -> String {
        self.device_ca.pem()
    }
}

fn auth_config(dir: &TempDir, jwt_public_pem: &str, device_ca: &Ca) -> AuthConfig {
    // press-N for the named rows, dev-N for one device per raw-bytes row (the per-device
    // connection cap never sees a previous row's connection).
    let names = (1..=9).map(|n| format!("press-{n}"));
    let devices: Vec<(String, String)> = names
        .chain((0..DEVICE_POOL).map(|n| format!("dev-{n}")))
        .map(|device| {
            let pass = password(&device);
            (device, pass)
        })
        .collect();
    let pairs: Vec<(&str, &str)> = devices
        .iter()
        .map(|(d, p)| (d.as_str(), p.as_str()))
        .collect();
    AuthConfig {
        password_file: Some(password_file(dir, &pairs)),
        jwt: Some(JwtAuth {
            public_key_files: vec![dir.write("jwt-public.pem", jwt_public_pem)],
            device_claim: "sub".into(),
            issuer: Some(JWT_ISSUER.into()),
            audience: Some(JWT_AUDIENCE.into()),
            max_token_lifetime_seconds: Some(JWT_MAX_LIFETIME),
        }),
        client_certificates: Some(ClientCertificateAuth {
            ca_file: dir.write("device-ca.pem", &device_ca.pem()),
        }),
        // One check at a time and a short queue, so a burst of logins fills them.
        password_check_slots: 1,
        password_check_queue: 4,
        ..AuthConfig::default()
    }
}

fn limits() -> Limits {
    Limits {
        max_payload_bytes: MAX_PAYLOAD,
        max_connections_per_device: MAX_CONNECTIONS_PER_DEVICE,
        messages_per_second: 10_000,
        burst: 10_000,
        connect_timeout_seconds: CONNECT_TIMEOUT.as_secs(),
        max_http_connections: MAX_HTTP_CONNECTIONS,
        http_header_timeout_seconds: HEADER_TIMEOUT.as_secs(),
        http_body_timeout_seconds: BODY_TIMEOUT.as_secs(),
        max_keep_alive_seconds: MAX_KEEP_ALIVE,
        write_timeout_seconds: WRITE_TIMEOUT.as_secs(),
        ..Limits::default()
    }
}

/// A loopback source address of its own for row `n`: failures one row causes are counted
/// against its address only (all of 127/8 reaches the gateway on 127.0.0.1).
pub fn source(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        1,
        u8::try_from(n % 250 + 1).unwrap_or(1),
    ))
}

/// Connects to `addr` from `from`.
pub async fn connect_from(from: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(addr).await
}

/// The well-behaved device (press-1) publishing QoS 1 in a loop, counting its PUBACKs.
pub struct GoodDevice {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl GoodDevice {
    pub async fn start(addr: SocketAddr) -> Self {
        let (mut client, code) = RawMqtt::connect(addr, "press-1", &password("press-1")).await;
        assert_eq!(code, 0, "the well-behaved device connects");
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU32::new(0));
        let task = {
            let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
            tokio::spawn(async move {
                let mut packet_id: u16 = 0;
                while !stop.load(Ordering::SeqCst) {
                    packet_id = packet_id % 60_000 + 1;
                    let result = client
                        .publish_qos1("devices/press-1/t", packet_id, b"{\"good\":true}")
                        .await;
                    assert_eq!(result, Some(packet_id), "the good device lost its session");
                    acked.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Self { stop, acked, task }
    }

    pub fn acked(&self) -> u32 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Whether the device gets a further PUBACK after `before` (within the deadline).
    pub async fn progressed_since(&self, before: u32) -> bool {
        let acked = Arc::clone(&self.acked);
        eventually(DEADLINE, || {
            let acked = Arc::clone(&acked);
            async move { acked.load(Ordering::SeqCst) > before }
        })
        .await
    }

    /// Stops the device; returns how many PUBACKs it got.
    pub async fn stop(self) -> u32 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the good device never failed");
        self.acked.load(Ordering::SeqCst)
    }
}
