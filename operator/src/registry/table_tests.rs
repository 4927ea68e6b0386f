use super::*;
use flate2::read::GzDecoder;
use serde_json::json;
use std::io::Read;

fn device(name: &str, extra: serde_json::Value) -> Device {
    let mut value = json!({
        "apiVersion": "tributary.dev/v1alpha1",
        "kind": "Device",
        "metadata": {"name": name, "namespace": "city", "uid": format!("uid-{name}"),
                     "creationTimestamp": "2026-11-30T10:00:00Z"},
        "spec": {"gateways": ["lights"], "credentials": {"generated": {}}},
        "status": {"generated": {"rotation": 0, "keyId": "k1", "verifier": "current"}}
    });
    merge(&mut value, extra);
    serde_json::from_value(value).expect("device")
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(into), serde_json::Value::Object(from)) => {
            for (key, value) in from {
                merge(into.entry(key).or_insert(serde_json::Value::Null), value);
            }
        }
        (into, from) => *into = from,
    }
}

fn now() -> Timestamp {
    "2026-11-30T12:00:00Z".parse().expect("time")
}

#[test]
fn only_devices_naming_the_gateway_are_listed_each_id_once() {
    let a = device("lamp-1", json!({}));
    let elsewhere = device("lamp-2", json!({"spec": {"gateways": ["other"]}}));
    let twin = device(
        "lamp-1-twin",
        json!({"spec": {"deviceId": "lamp-1"},
               "metadata": {"creationTimestamp": "2026-11-30T11:00:00Z"}}),
    );
    let (kept, duplicates) = devices_of("lights", [&twin, &a, &elsewhere]);
    assert_eq!(kept.len(), 1);
    assert_eq!(
        kept[0].name_any(),
        "lamp-1",
        "the older resource keeps the id"
    );
    assert_eq!(duplicates[0].name_any(), "lamp-1-twin");
}

#[test]
fn entries_carry_each_credential_the_gateway_can_check() {
    let d = device(
        "lamp-1",
        json!({
            "spec": {
                "disabled": true,
                "credentials": {
                    "certificate": {},
                    "passwordHash": {"name": "hashes", "key": "lamp-1"},
                    "jwt": {"publicKey": "PEM"}
                },
                "publishTopics": ["city/{device}/#"],
                "attributes": {"site": "north"}
            },
            "status": {
                "certificateSecret": "lamp-1-certificate",
                "generated": {"previousVerifier": "old",
                              "previousValidUntil": "2026-11-30T13:00:00Z"}
            }
        }),
    );
    let hashes = SecretData::from([(
        "hashes".to_owned(),
        BTreeMap::from([("lamp-1".to_owned(), b"$argon2id$v=19$x\n".to_vec())]),
    )]);
    let table = build_table(&[&d], "k1", &hashes, now());
    let entry = &table.devices[0];
    assert_eq!(entry.id, "lamp-1");
    assert!(entry.disabled);
    assert_eq!(
        entry.credentials,
        vec![
            Credential::Generated(GeneratedSecret {
                verifier: "current".into(),
                not_after_ms: None
            }),
            Credential::Generated(GeneratedSecret {
                verifier: "old".into(),
                not_after_ms: Some(1_796_043_600_000)
            }),
            Credential::Certificate,
            Credential::PasswordHash {
                hash: "$argon2id$v=19$x".into()
            },
            Credential::Jwt {
                public_key: "PEM".into()
            },
        ]
    );
    assert_eq!(entry.publish_topics, vec!["city/{device}/#".to_owned()]);
    assert_eq!(entry.attributes["site"], "north");
}

#[test]
fn stale_verifiers_and_expired_previous_secrets_are_left_out() {
    let other_key = device("lamp-1", json!({}));
    let table = build_table(&[&other_key], "k2", &SecretData::new(), now());
    assert!(
        table.devices[0].credentials.is_empty(),
        "made with another key"
    );
    let expired = device(
        "lamp-2",
        json!({"status": {"generated": {"previousVerifier": "old",
                                        "previousValidUntil": "2026-11-30T11:59:59Z"}}}),
    );
    let table = build_table(&[&expired], "k1", &SecretData::new(), now());
    assert_eq!(table.devices[0].credentials.len(), 1);
    let unissued = device(
        "lamp-3",
        json!({"spec": {"credentials": {"certificate": {}}}}),
    );
    let table = build_table(&[&unissued], "k1", &SecretData::new(), now());
    assert!(
        !table.devices[0]
            .credentials
            .contains(&Credential::Certificate),
        "no certificate issued yet"
    );
}

#[test]
fn the_content_hash_ignores_the_issue_time_and_the_table_decompresses() {
    let d = device("lamp-1", json!({}));
    let mut table = build_table(&[&d], "k1", &SecretData::new(), now());
    let before = content_hash(&table).expect("hash");
    table.issued_at_ms = 42;
    assert_eq!(content_hash(&table).expect("hash"), before);
    let mut json = String::new();
    GzDecoder::new(compress(&table).expect("gzip").as_slice())
        .read_to_string(&mut json)
        .expect("gunzip");
    let back: DeviceTable = serde_json::from_str(&json).expect("table");
    assert_eq!(back, table);
    table.devices[0].disabled = true;
    assert_ne!(content_hash(&table).expect("hash"), before);
}
