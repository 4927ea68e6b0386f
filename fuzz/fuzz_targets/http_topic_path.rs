//! The topic of `POST /v1/publish/{topic}` as the gateway sees it after percent-decoding,
//! and the device id it comes with: validation never panics, and a device is never
//! permitted a topic outside its own subtree however the two are spelled.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode;
use tributary_contract::gateway_config::Route;
use tributary_gateway::topics::{validate_topic_name, Permissions, Router};

fuzz_target!(|data: &[u8]| {
    // The first line is the device id, the rest the raw (percent-encoded) path.
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (device, raw_path) = data.split_at(split);
    let Ok(device) = std::str::from_utf8(device) else {
        return;
    };
    let raw_path = raw_path.get(1..).unwrap_or_default();
    // axum's path extractor: percent-decoded, and refused when not UTF-8.
    let Ok(topic) = percent_decode(raw_path).decode_utf8() else {
        return;
    };
    if validate_topic_name(&topic).is_err() {
        return;
    }
    let permissions = Permissions::new(vec!["devices/{device}/#".into()]).expect("valid template");
    if permissions.allows(device, &topic) {
        let subtree = format!("devices/{device}");
        assert!(
            topic == subtree || topic.starts_with(&format!("{subtree}/")),
            "device {device:?} was permitted {topic:?}"
        );
    }
    let router = Router::new(vec![
        Route {
            topic_filter: "devices/+/telemetry/#".into(),
            queue: "telemetry".into(),
        },
        Route {
            topic_filter: "#".into(),
            queue: "all".into(),
        },
    ])
    .expect("valid routes");
    let queues = router.queues_for(&topic);
    // `#` matches every topic not starting with `$`.
    assert_eq!(
        queues.contains(&"all".to_string()),
        !topic.starts_with('$'),
        "{topic:?}"
    );
});
