use super::*;

/// A v2 header: command (0 LOCAL, 1 PROXY), family/transport byte, address block.
fn header(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(0x20 | command);
    out.push(family);
    out.extend_from_slice(&u16::try_from(block.len()).expect("len").to_be_bytes());
    out.extend_from_slice(block);
    out
}

fn ipv4_block(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut block = source.to_vec();
    block.extend_from_slice(&[10, 0, 0, 1]);
    block.extend_from_slice(&port.to_be_bytes());
    block.extend_from_slice(&1883u16.to_be_bytes());
    block
}

#[test]
fn ipv4_proxy_header_names_the_client() {
    let bytes = header(1, 0x11, &ipv4_block([203, 0, 113, 7], 40_000));
    let parsed = parse(&bytes).expect("valid");
    assert_eq!(
        parsed.source,
        Some("203.0.113.7:40000".parse().expect("addr"))
    );
    assert_eq!(parsed.len, 28);
}

#[test]
fn ipv6_proxy_header_names_the_client() {
    let source: Ipv6Addr = "2001:db8::7".parse().expect("ip");
    let mut block = source.octets().to_vec();
    block.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    block.extend_from_slice(&5555u16.to_be_bytes());
    block.extend_from_slice(&8443u16.to_be_bytes());
    let parsed = parse(&header(1, 0x21, &block)).expect("valid");
    assert_eq!(
        parsed.source,
        Some("[2001:db8::7]:5555".parse().expect("addr"))
    );
}

#[test]
fn tlvs_after_the_addresses_are_skipped() {
    let mut block = ipv4_block([198, 51, 100, 9], 1);
    // PP2_TYPE_AWS (0xEA) with a VPC endpoint id.
    block.extend_from_slice(&[0xEA, 0x00, 0x05, 0x01, b'v', b'p', b'c', b'e']);
    let mut bytes = header(1, 0x11, &block);
    bytes.extend_from_slice(b"\x10MQTT");
    let parsed = parse(&bytes).expect("valid");
    assert_eq!(
        parsed.source.map(|a| a.ip()),
        Some("198.51.100.9".parse().expect("ip"))
    );
    assert_eq!(&bytes[parsed.len..], b"\x10MQTT");
}

#[test]
fn local_command_keeps_the_socket_address() {
    let parsed = parse(&header(0, 0x00, &[])).expect("valid");
    assert_eq!(parsed.source, None);
    // A LOCAL header may still carry addresses; they do not count.
    let parsed = parse(&header(0, 0x11, &ipv4_block([1, 2, 3, 4], 5))).expect("valid");
    assert_eq!(parsed.source, None);
}

#[test]
fn unix_and_unspecified_families_keep_the_socket_address() {
    assert_eq!(
        parse(&header(1, 0x31, &[0; 216])).expect("valid").source,
        None
    );
    assert_eq!(parse(&header(1, 0x00, &[])).expect("valid").source, None);
}

#[test]
fn truncated_headers_are_refused() {
    let full = header(1, 0x11, &ipv4_block([203, 0, 113, 7], 1));
    for cut in [5, 15, 16, 27] {
        assert_eq!(
            parse(&full[..cut]),
            Err(ProxyError::Truncated),
            "cut at {cut}"
        );
    }
    // A declared block too short for its family's addresses.
    assert_eq!(parse(&header(1, 0x11, &[0; 8])), Err(ProxyError::Truncated));
    assert_eq!(
        parse(&header(1, 0x21, &[0; 20])),
        Err(ProxyError::Truncated)
    );
}

#[test]
fn anything_but_the_v2_signature_is_refused() {
    // An MQTT CONNECT, an HTTP request, a TLS ClientHello, a v1 text header.
    for bytes in [
        &b"\x10\x1a\x00\x04MQTT\x04\xc2\x00\x3c"[..],
        b"POST /v1/publish/x HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x00\x00\x00\x00",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 4000 1883\r\n",
    ] {
        assert_eq!(parse(bytes), Err(ProxyError::Signature), "{bytes:?}");
    }
}

#[test]
fn wrong_version_command_or_family_is_refused() {
    let mut bytes = header(1, 0x11, &ipv4_block([1, 2, 3, 4], 5));
    bytes[12] = 0x11;
    assert_eq!(parse(&bytes), Err(ProxyError::Version(1)));
    bytes[12] = 0x22;
    assert_eq!(parse(&bytes), Err(ProxyError::Command(2)));
    bytes[12] = 0x21;
    bytes[13] = 0x41;
    assert_eq!(parse(&bytes), Err(ProxyError::Family(4)));
}

#[test]
fn oversize_length_is_refused_before_reading_it() {
    let mut prefix = SIGNATURE.to_vec();
    prefix.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
    assert_eq!(
        parse(&prefix),
        Err(ProxyError::TooLong(PREFIX_LEN + 65_535))
    );
    let largest = header(1, 0x11, &vec![0; MAX_BLOCK_LEN]);
    assert!(parse(&largest).is_ok());
}

#[tokio::test]
async fn reading_takes_exactly_the_header_and_leaves_the_rest() {
    let peer: SocketAddr = "10.1.2.3:999".parse().expect("addr");
    let mut bytes = header(1, 0x11, &ipv4_block([203, 0, 113, 7], 4000));
    bytes.extend_from_slice(b"rest");
    let mut stream = &bytes[..];
    let client = read_client_address(&mut stream, peer).await.expect("valid");
    assert_eq!(client, "203.0.113.7:4000".parse().expect("addr"));
    assert_eq!(stream, b"rest");

    let local = header(0, 0x00, &[]);
    let mut stream = &local[..];
    assert_eq!(read_client_address(&mut stream, peer).await, Ok(peer));

    let short = &header(1, 0x11, &ipv4_block([1, 2, 3, 4], 5))[..20];
    let mut stream = short;
    assert_eq!(
        read_client_address(&mut stream, peer).await,
        Err(ProxyError::Truncated)
    );
}
