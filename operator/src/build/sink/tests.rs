//! Sink validation and rendering.

use super::*;
use crate::build::fixtures::load;

fn defaults(_: SinkKind) -> BatchConfig {
    BatchConfig {
        max_messages: 7,
        max_bytes: 7,
        max_age_ms: 7,
    }
}

#[test]
fn postgres_sink_renders_url_file_columns_and_default_batch() {
    let sink: Sink = load("sink-postgres.yaml");
    assert_eq!(
        validate(&sink, &SinkPolicy::default()),
        Ok(SinkKind::Postgres)
    );
    let SinkConfig::Postgres(config) = to_config(&sink, None, &defaults).expect("renders") else {
        panic!("postgres expected");
    };
    assert_eq!(
        config.url_file,
        PathBuf::from("/etc/tributary/secrets/pg/url")
    );
    assert_eq!(config.table, "readings");
    assert_eq!(config.columns.len(), 2);
    assert_eq!(config.columns[1].r#type, "double precision");
    assert_eq!(config.batch.max_messages, 7);
    assert_eq!(referenced_secrets(&sink)[0].name, "pg");
}

#[test]
fn a_ca_secret_ref_renders_ca_file_and_is_a_referenced_secret() {
    let mut sink: Sink = load("sink-postgres.yaml");
    let ca = SecretKeyRef {
        name: "pg-ca".into(),
        key: "ca.crt".into(),
    };
    if let Some(postgres) = sink.spec.postgres.as_mut() {
        postgres.ca_secret_ref = Some(ca.clone());
    }
    let SinkConfig::Postgres(config) = to_config(&sink, None, &defaults).expect("renders") else {
        panic!("postgres expected");
    };
    assert_eq!(
        config.ca_file,
        Some(PathBuf::from("/etc/tributary/secrets/pg-ca/ca.crt"))
    );
    assert!(referenced_secrets(&sink).contains(&ca));
}

#[test]
fn sink_with_two_types_is_invalid() {
    let mut sink: Sink = load("sink-postgres.yaml");
    let other: Sink = load("sink-queue.yaml");
    sink.spec.queue = other.spec.queue;
    let error = validate(&sink, &SinkPolicy::default()).expect_err("invalid");
    assert!(error.to_string().contains("postgres, queue"), "{error}");
    assert!(validate(
        &Sink::new("empty", Default::default()),
        &SinkPolicy::default()
    )
    .is_err());
}

#[test]
fn postgres_names_types_and_expressions_the_worker_would_refuse_are_invalid() {
    let sink: Sink = load("sink-postgres.yaml");
    let with = |change: &dyn Fn(&mut PostgresSink)| {
        let mut sink = sink.clone();
        change(sink.spec.postgres.as_mut().expect("postgres"));
        validate(&sink, &SinkPolicy::default())
            .expect_err("invalid")
            .to_string()
    };
    let error = with(&|pg| pg.table = "readings; drop".into());
    assert!(error.contains("spec.postgres.table"), "{error}");
    let error = with(&|pg| pg.id_column = "message id".into());
    assert!(error.contains("spec.postgres.idColumn"), "{error}");
    let error = with(&|pg| pg.columns.clear());
    assert!(error.contains("at least one column"), "{error}");
    let error = with(&|pg| pg.columns[1].name = "temp-c".into());
    assert!(error.contains("spec.postgres.columns[1]"), "{error}");
    let error = with(&|pg| pg.columns[1].type_ = "text); DROP TABLE readings; --".into());
    assert!(error.contains("spec.postgres.columns[1].type"), "{error}");
    let error = with(&|pg| pg.columns[0].expr = "payload.(".into());
    assert!(
        error.contains("spec.postgres.columns[0].expr: invalid CEL"),
        "{error}"
    );
    let error = with(&|pg| pg.columns[0].name = "id".into());
    assert!(error.contains("appears twice"), "{error}");
}

#[test]
fn redis_value_expression_must_compile() {
    let mut sink: Sink = load("sink-postgres.yaml");
    sink.spec.postgres = None;
    sink.spec.redis = Some(crate::crd::sink::RedisSink {
        url_secret_ref: SecretKeyRef {
            name: "redis".into(),
            key: "url".into(),
        },
        ca_secret_ref: None,
        key_template: "latest:{device}".into(),
        value: Some("payload.temp +".into()),
        ttl_seconds: None,
        batch: None,
    });
    let error = validate(&sink, &SinkPolicy::default())
        .expect_err("invalid")
        .to_string();
    assert!(error.contains("spec.redis.value: invalid CEL"), "{error}");
    if let Some(redis) = sink.spec.redis.as_mut() {
        redis.value = Some("payload.temp".into());
    }
    assert_eq!(validate(&sink, &SinkPolicy::default()), Ok(SinkKind::Redis));
}

#[test]
fn queue_sink_needs_its_resolved_target() {
    let sink: Sink = load("sink-queue.yaml");
    assert!(to_config(&sink, None, &defaults).is_err());
    let target = ResolvedTarget {
        ca: None,
        broker_queue: "factory.alerts".into(),
        uri: SecretKeyRef {
            name: "ingest-worker-amqp-alerts".into(),
            key: "uri".into(),
        },
        credentials: crate::build::queue::access::BrokerCredentials::Workload,
    };
    let SinkConfig::Republish(config) =
        to_config(&sink, Some(&target), &defaults).expect("renders")
    else {
        panic!("republish expected");
    };
    assert_eq!(config.routing_key, "factory.alerts");
}

fn webhook_sink(url: &str) -> Sink {
    serde_yaml::from_str(&format!(
        "apiVersion: tributary.dev/v1alpha1\nkind: Sink\nmetadata: {{name: hook, namespace: factory}}\n\
         spec:\n  webhook:\n    url: {url:?}\n    hmacSecretRef: {{name: hook, key: key}}\n"
    ))
    .expect("a webhook sink")
}

#[test]
fn webhooks_to_loopback_link_local_or_the_api_server_are_refused_unless_allowed() {
    let refused = [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://2130706433/hook", "loopback"),
        ("http://0x7f.1/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://api.LOCALHOST./hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("https://kubernetes.default.svc/api", "API server"),
        ("https://kubernetes/api", "API server"),
    ];
    let allowed = SinkPolicy {
        allow_internal_webhooks: true,
    };
    for (url, what) in refused {
        let error = validate(&webhook_sink(url), &SinkPolicy::default())
            .expect_err(url)
            .to_string();
        assert!(error.contains(what), "{url}: {error}");
        assert_eq!(
            validate(&webhook_sink(url), &allowed),
            Ok(SinkKind::Webhook),
            "{url}"
        );
    }
    for url in [
        "https://receiver.factory.svc:8443/hook",
        "http://10.0.0.7/hook",
        "https://hooks.example.com/ingest",
    ] {
        assert_eq!(
            validate(&webhook_sink(url), &SinkPolicy::default()),
            Ok(SinkKind::Webhook),
            "{url}"
        );
    }
    for url in ["ftp://files.example.com/x", "not a url", "http://"] {
        let error = validate(&webhook_sink(url), &SinkPolicy::default()).expect_err(url);
        assert!(error.to_string().contains("http(s) URL"), "{url}: {error}");
    }
}

#[test]
fn a_command_sink_renders_the_tenant_its_expressions_and_ttl() {
    let sink: Sink = load("sink-command.yaml");
    assert_eq!(
        validate(&sink, &SinkPolicy::default()),
        Ok(SinkKind::Command)
    );
    let SinkConfig::Command(config) = to_config(&sink, None, &defaults).expect("renders") else {
        panic!("command expected");
    };
    assert_eq!(
        (config.name.as_str(), config.tenant.as_str()),
        ("fan-control", "factory")
    );
    assert_eq!(config.command, "fan/set");
    assert_eq!(config.when.as_deref(), Some("payload.temperature > 80.0"));
    assert_eq!(config.device, None, "default: the message's device");
    assert_eq!(config.ttl_seconds, 120);
    assert_eq!(config.uri_file, None, "the consumed queue's broker");
    assert!(referenced_secrets(&sink).is_empty());
}

/// Spoils one field of a command sink.
type Spoil = fn(&mut crate::crd::sink::CommandSink);

#[test]
fn a_command_sink_with_a_bad_name_expression_or_ttl_is_invalid() {
    let cases: [(&str, Spoil); 4] = [
        ("spec.command.command", |c| c.command = "fan/+".into()),
        ("spec.command.command", |c| c.command = "res/x".into()),
        ("spec.command.when", |c| c.when = Some("payload.(".into())),
        ("spec.command.ttlSeconds", |c| c.ttl_seconds = Some(0)),
    ];
    for (field, spoil) in cases {
        let mut sink: Sink = load("sink-command.yaml");
        if let Some(command) = sink.spec.command.as_mut() {
            spoil(command);
        }
        let error = validate(&sink, &SinkPolicy::default()).expect_err("invalid");
        assert!(error.to_string().contains(field), "{field}: {error}");
    }
}

#[test]
fn a_live_sink_renders_the_namespaces_live_exchange_and_its_buffer() {
    let mut sink: Sink = load("sink-command.yaml");
    sink.spec.command = None;
    sink.spec.live = Some(crate::crd::sink::LiveSink::default());
    assert_eq!(validate(&sink, &SinkPolicy::default()), Ok(SinkKind::Live));
    let SinkConfig::Live(config) = to_config(&sink, None, &defaults).expect("renders") else {
        panic!("live expected");
    };
    assert_eq!(config.exchange, "tributary.live.factory");
    assert_eq!(config.buffer_messages, 10_000);
    assert_eq!(config.uri_file, None, "the consumed queue's broker");
    assert!(referenced_secrets(&sink).is_empty());

    sink.spec.live = Some(crate::crd::sink::LiveSink {
        buffer_messages: Some(0),
        batch: None,
    });
    let error = validate(&sink, &SinkPolicy::default()).expect_err("invalid");
    assert!(
        error.to_string().contains("spec.live.bufferMessages"),
        "{error}"
    );
}
