use std::io::Write;

use super::*;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("compress");
    encoder.finish().expect("compress")
}

fn table_json(devices: serde_json::Value) -> Vec<u8> {
    serde_json::json!({"issuedAtMs": 7, "devices": devices})
        .to_string()
        .into_bytes()
}

#[test]
fn a_gzip_table_is_indexed_by_id_with_parsed_credentials() {
    let verifier = crate::registry::verify::verifier_for(b"key", b"secret");
    let hash = crate::auth::hash_password_cheap(b"pw").expect("hash");
    let json = table_json(serde_json::json!([
        {"id": "a", "credentials": [
            {"type": "generated", "verifier": verifier, "notAfterMs": 9},
            {"type": "passwordHash", "hash": hash},
            {"type": "certificate"}
        ], "publishTopics": ["site/{device}/#"], "attributes": {"site": "north"}},
        {"id": "b", "disabled": true}
    ]));
    let table = decode_table(&gzip(&json), 1 << 20).expect("valid");
    assert_eq!((table.issued_at_ms, table.len()), (7, 2));
    let a = table.get("a").expect("a");
    assert_eq!(a.verifiers[0].not_after_ms, Some(9));
    assert_eq!(a.password_hashes.len(), 1);
    assert!(a.certificate && !a.disabled);
    assert_eq!(a.attributes["site"], "north");
    assert!(table.get("b").expect("b").disabled);
    assert!(table.get("c").is_none());
    assert_eq!(table.max_hash_blocks(), 1024);
}

#[test]
fn decompression_stops_at_the_bound() {
    let json = table_json(serde_json::json!([]));
    let limit = json.len() - 1;
    assert_eq!(
        decode_table(&gzip(&json), limit).err(),
        Some(TableError::TooLarge(limit))
    );
    // A gzip bomb: 16 MiB of zeros in a few KiB, refused at 1 MiB.
    let bomb = gzip(&vec![0u8; 16 << 20]);
    assert!(bomb.len() < 64 << 10);
    assert_eq!(
        gunzip_bounded(&bomb, 1 << 20).err(),
        Some(TableError::TooLarge(1 << 20))
    );
    assert!(matches!(
        decode_table(b"not gzip", 1 << 20),
        Err(TableError::Gzip(_))
    ));
}

#[test]
fn unusable_entries_refuse_the_whole_table() {
    let cases = [
        serde_json::json!([{"id": "a/b"}]),
        serde_json::json!([{"id": "a"}, {"id": "a"}]),
        serde_json::json!([{"id": "a", "publishTopics": ["x/#/y"]}]),
        serde_json::json!([{"id": "a", "credentials": [{"type": "generated", "verifier": "short"}]}]),
        serde_json::json!([{"id": "a", "credentials": [{"type": "passwordHash", "hash": "plain"}]}]),
        serde_json::json!([{"id": "a", "credentials": [{"type": "jwt", "publicKey": "nope"}]}]),
    ];
    for devices in cases {
        let result = parse_table(&table_json(devices.clone()));
        assert!(
            matches!(result, Err(TableError::Device { .. })),
            "{devices}"
        );
    }
    assert!(matches!(
        parse_table(b"{\"devices\": []}"),
        Err(TableError::Json(_))
    ));
}

#[test]
fn removed_and_newly_disabled_devices_are_revoked() {
    let before = parse_table(&table_json(serde_json::json!([
        {"id": "kept"}, {"id": "removed"}, {"id": "disabled-now"}, {"id": "was-disabled", "disabled": true}
    ])))
    .expect("valid");
    let after = parse_table(&table_json(serde_json::json!([
        {"id": "kept"}, {"id": "disabled-now", "disabled": true}, {"id": "new"}
    ])))
    .expect("valid");
    let mut revoked: Vec<&String> = before.revoked_by(&after).collect();
    revoked.sort();
    assert_eq!(revoked, ["disabled-now", "removed"]);
}

#[test]
fn a_table_allows_its_enabled_devices_only() {
    let table = parse_table(&table_json(serde_json::json!([
        {"id": "on"}, {"id": "off", "disabled": true}
    ])))
    .expect("valid");
    assert!(table.allows("on"));
    assert!(!table.allows("off"));
    assert!(!table.allows("absent"));
}
