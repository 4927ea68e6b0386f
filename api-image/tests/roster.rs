//! `/v1/devices` with a device roster (the file the operator renders from the Device
//! resources) against a real PostgreSQL: registered devices that never sent anything are
//! listed beside the table's, with their status; a key's scope applies to both; a new
//! roster is picked up while the API runs; a bad one keeps the last good one.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::*;
use flate2::write::GzEncoder;
use serde_json::{json, Value};

fn write_roster(path: &Path, roster: &Value) {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(roster.to_string().as_bytes())
        .expect("gzip");
    // Written aside and renamed, as the kubelet swaps a ConfigMap's files.
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, encoder.finish().expect("gzip")).expect("write roster");
    std::fs::rename(&aside, path).expect("rename roster");
}

fn ids(body: &Value) -> Vec<String> {
    body["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["device"].as_str().unwrap_or("<null>").to_owned())
        .collect()
}

#[tokio::test]
async fn registered_devices_are_listed_with_their_status_within_the_keys_scope() {
    let table = Table::create().await;
    table
        .insert(&[
            Row::new("a-1", "2026-01-05T10:00:00.000Z", json!({"t": 1})),
            Row::new("b-1", "2026-01-05T10:00:01.000Z", json!({"t": 2})),
        ])
        .await;
    let dir = temp_dir();
    let roster = dir.join("devices.json.gz");
    write_roster(
        &roster,
        &json!({"devices": [
            {"device": "a-1", "resource": "press-a1", "ready": true, "connected": true,
             "lastSeen": "2026-12-01T03:00:00Z"},
            {"device": "a-2", "resource": "press-a2", "ready": true, "connected": false},
            {"device": "b-2", "resource": "press-b2", "disabled": true},
            {"device": "c-1", "resource": "press-c1"}
        ]}),
    );
    let server = Server::start(config(&table, &dir, json!({"deviceRosterFile": roster}))).await;

    let all = server.ok("/v1/devices", ADMIN).await;
    assert_eq!(ids(&all), ["a-1", "a-2", "b-1", "b-2", "c-1"]);
    assert_eq!(
        all["devices"][0],
        json!({"device": "a-1", "lastSeen": "2026-12-01T03:00:00Z", "messages": 1,
               "registered": true, "resource": "press-a1", "ready": true,
               "disabled": false, "connected": true})
    );
    // Registered, never sent anything.
    assert_eq!(
        all["devices"][1],
        json!({"device": "a-2", "lastSeen": null, "messages": 0, "registered": true,
               "resource": "press-a2", "ready": true, "disabled": false, "connected": false})
    );
    // Only in the table: no status.
    assert_eq!(
        all["devices"][2],
        json!({"device": "b-1", "lastSeen": "2026-01-05T10:00:01.000000Z", "messages": 1,
               "registered": false})
    );
    assert_eq!(all["devices"][3]["disabled"], true);
    assert_eq!(all["devices"][4]["connected"], Value::Null);
    // A limit counts both kinds.
    assert_eq!(
        ids(&server.ok("/v1/devices?limit=3", ADMIN).await),
        ["a-1", "a-2", "b-1"]
    );
    // Scopes: a prefix key and a list key see only their registered devices.
    assert_eq!(
        ids(&server.ok("/v1/devices", GROUP_A).await),
        ["a-1", "a-2"]
    );
    assert_eq!(ids(&server.ok("/v1/devices", PAIR_B).await), ["b-1", "b-2"]);

    // A new roster reaches the running API; a corrupt one afterwards is ignored.
    write_roster(
        &roster,
        &json!({"devices": [{"device": "a-3", "resource": "press-a3"}], "omitted": 7}),
    );
    let body = wait_for("the new roster", Duration::from_secs(30), || async {
        let body = server.ok("/v1/devices", GROUP_A).await;
        (ids(&body) == ["a-1", "a-3"]).then_some(body)
    })
    .await;
    assert_eq!(body["rosterOmitted"], 7);
    std::fs::write(&roster, b"not gzip").expect("write");
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        ids(&server.ok("/v1/devices", GROUP_A).await),
        ["a-1", "a-3"],
        "an unreadable roster keeps the last good one"
    );
    server.stop().await;
    table.drop_table().await;
}

#[tokio::test]
async fn without_a_roster_file_the_table_alone_is_listed() {
    let table = Table::create().await;
    table
        .insert(&[Row::new("a-1", "2026-01-05T10:00:00.000Z", json!({"t": 1}))])
        .await;
    let dir = temp_dir();
    let missing = dir.join("not-written-yet.json.gz");
    let server = Server::start(config(&table, &dir, json!({"deviceRosterFile": missing}))).await;
    let body = server.ok("/v1/devices", ADMIN).await;
    assert_eq!(ids(&body), ["a-1"]);
    assert_eq!(body["devices"][0]["registered"], false);
    assert_eq!(body["rosterOmitted"], 0);
    server.stop().await;
    table.drop_table().await;
}
