//! Behind a load balancer that speaks PROXY protocol v2 (`listeners.proxyProtocol`): the
//! address in the header is the client's for login throttling, LOCAL keeps the socket's,
//! and a connection without a valid header is closed unserved.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tributary_contract::gateway_config::AuthConfig;
use tributary_gateway::app::Running;

const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY header over TCP/IPv4 naming `source` as the client.
fn proxy_header(source: SocketAddr) -> Vec<u8> {
    let (IpAddr::V4(ip), port) = (source.ip(), source.port()) else {
        panic!("IPv4 only here");
    };
    let mut header = SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    header.extend_from_slice(&ip.octets());
    header.extend_from_slice(&[10, 0, 0, 1]);
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&1883u16.to_be_bytes());
    header
}

/// A v2 LOCAL header (a load balancer's own health check).
fn local_header() -> Vec<u8> {
    let mut header = SIGNATURE.to_vec();
    header.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    header
}

/// Opens an MQTT connection that starts with `preamble`, CONNECTs, and returns the client
/// and the CONNACK return code (`None` when closed without one).
async fn mqtt_through(
    addr: SocketAddr,
    preamble: &[u8],
    device: &str,
    password: &str,
) -> (RawMqtt, Option<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut bytes = preamble.to_vec();
    bytes.extend(connect_packet(device, device, password));
    let _ = stream.write_all(&bytes).await;
    let mut client = RawMqtt { stream };
    let code = client.read_packet().await.map(|connack| {
        assert_eq!(connack[0], 0x20, "expected CONNACK, got {connack:?}");
        connack[3]
    });
    (client, code)
}

async fn proxied_gateway(dir: &TempDir, queue: &str) -> Running {
    let uri = dir.write("amqp-uri", &amqp_url());
    let auth = AuthConfig {
        password_file: Some(password_file(
            dir,
            &[("press-7", "pw7"), ("press-8", "pw8")],
        )),
        ..AuthConfig::default()
    };
    let mut config = test_config(uri, vec![route("devices/#", queue)], auth);
    config.listeners.proxy_protocol = true;
    start_connected(config).await
}

#[tokio::test]
async fn the_proxied_address_is_throttled_and_another_proxied_address_gets_in() {
    let connection = amqp(&amqp_url()).await;
    let queue = fresh_queue(&connection, "proxied").await;
    let dir = TempDir::new();
    let running = proxied_gateway(&dir, &queue).await;
    let mqtt = running.bound.mqtt.expect("mqtt");
    let attacker: SocketAddr = "203.0.113.7:40000".parse().expect("addr");
    let device: SocketAddr = "198.51.100.9:50000".parse().expect("addr");
    for _ in 0..3 {
        let (_, code) = mqtt_through(mqtt, &proxy_header(attacker), "press-8", "guess").await;
        assert_ne!(code, Some(0), "a wrong password was accepted");
    }
    let auth = &running.gateway.auth;
    assert_eq!(
        auth.address_failures(attacker.ip()),
        3,
        "failures counted for the header's address"
    );
    assert_eq!(
        auth.address_failures("127.0.0.1".parse().expect("ip")),
        0,
        "not for the load balancer's"
    );
    let (mut client, code) = mqtt_through(mqtt, &proxy_header(device), "press-7", "pw7").await;
    assert_eq!(
        code,
        Some(0),
        "the right password from another client address is accepted"
    );
    assert_eq!(
        client.publish_qos1("devices/press-7/t", 1, b"{}").await,
        Some(1)
    );
    assert_eq!(auth.address_failures(device.ip()), 0);
    assert_eq!(drain_queue(&connection, &queue).await.len(), 1);
    delete_queue(&connection, &queue).await;
}

#[tokio::test]
async fn local_headers_keep_the_socket_address_and_missing_headers_are_closed() {
    let connection = amqp(&amqp_url()).await;
    let queue = fresh_queue(&connection, "proxied-local").await;
    let dir = TempDir::new();
    let running = proxied_gateway(&dir, &queue).await;
    let mqtt = running.bound.mqtt.expect("mqtt");
    let loopback: IpAddr = "127.0.0.1".parse().expect("ip");
    let (_, code) = mqtt_through(mqtt, &local_header(), "press-8", "guess").await;
    assert_ne!(code, Some(0));
    assert_eq!(
        running.gateway.auth.address_failures(loopback),
        1,
        "LOCAL: the socket's address"
    );
    // Without a header, the CONNECT itself is taken for one and refused: closed, unanswered.
    let (mut client, code) = mqtt_through(mqtt, &[], "press-7", "pw7").await;
    assert_eq!(code, None, "a connection without a PROXY header was served");
    assert!(client.closed_by_server().await);
    // HTTP ingest reads the header too: a wrong password counts for the proxied address.
    let http = running.bound.http.expect("http");
    let source: SocketAddr = "192.0.2.44:1234".parse().expect("addr");
    let mut stream = TcpStream::connect(http).await.expect("connect");
    let mut request = proxy_header(source);
    request.extend_from_slice(
        format!(
            "POST /v1/publish/devices/press-7/t HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\
             Authorization: {}\r\nContent-Length: 2\r\n\r\n{{}}",
            basic("press-7", "wrong")
        )
        .as_bytes(),
    );
    stream.write_all(&request).await.expect("send");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(
        DEADLINE,
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut response),
    )
    .await;
    assert!(
        String::from_utf8_lossy(&response).starts_with("HTTP/1.1 401"),
        "{response:?}"
    );
    assert_eq!(running.gateway.auth.address_failures(source.ip()), 1);
    // And a plain request without a header is closed unanswered.
    assert_eq!(http_status_without_header(http).await, None);
    delete_queue(&connection, &queue).await;
}

/// A POST to the ingest port without a PROXY header: its status, `None` when closed unanswered.
async fn http_status_without_header(addr: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(
            b"POST /v1/publish/devices/press-7/t HTTP/1.1\r\nHost: g\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .ok()?;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(
        DEADLINE,
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut response),
    )
    .await;
    String::from_utf8_lossy(&response)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}
