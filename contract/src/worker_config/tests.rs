//! The worker config's defaults and parsing.

use super::*;

#[test]
fn minimal_config_gets_documented_defaults() {
    let text = r#"{
        "queue": {"uriFile": "/s/uri", "name": "telemetry"},
        "sinks": [{"republish": {"name": "fwd", "routingKey": "other"}}]
    }"#;
    let config: WorkerConfig = serde_json::from_str(text).expect("parse");
    assert_eq!(config.queue.prefetch, 500);
    assert_eq!(config.retry, RetryConfig::default());
    assert_eq!(config.http.listen, "0.0.0.0:9090");
    assert_eq!(config.sinks[0].name(), "fwd");
}

#[test]
fn unknown_field_is_rejected() {
    let text = r#"{
        "queue": {"uriFile": "/s/uri", "name": "q", "prefetsh": 10},
        "sinks": []
    }"#;
    let error = serde_json::from_str::<WorkerConfig>(text).expect_err("must fail");
    assert!(error.to_string().contains("prefetsh"), "{error}");
}
