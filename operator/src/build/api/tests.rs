use super::keys::IssuedKeys;
use super::*;
use crate::build::fixtures::load;
use crate::build::queue::access::BrokerCredentials;
use crate::build::tests_support::assert_restricted;
use crate::crd::SecretKeyRef;

/// The broker of the fixtures' Queue `telemetry`, with the API's own user on it.
pub(crate) fn own_broker() -> ResolvedTarget {
    ResolvedTarget {
        broker_queue: "factory.telemetry".into(),
        uri: SecretKeyRef {
            name: "factory-api-amqp-telemetry".into(),
            key: "uri".into(),
        },
        credentials: BrokerCredentials::Workload,
        ca: None,
    }
}

/// Inputs of the fixture `application-api.yaml` with fixed keys.
pub(crate) fn inputs() -> ApiInputs {
    ApiInputs {
        history: load("sink-postgres.yaml"),
        latest: Some(load("sink-redis.yaml")),
        live: Some(own_broker()),
        commands: Some(own_broker()),
        keys: IssuedKeys {
            keys: BTreeMap::from([
                ("dashboard".into(), "d".repeat(keys::KEY_LENGTH)),
                ("site-a".into(), "s".repeat(keys::KEY_LENGTH)),
            ]),
            rotations: BTreeMap::from([("dashboard".into(), 0), ("site-a".into(), 0)]),
        },
        secrets: SecretData::new(),
        image: crate::build::DEFAULT_API_IMAGE.into(),
    }
}

fn api() -> ApplicationApi {
    load("application-api.yaml")
}

#[test]
fn the_config_reads_the_sinks_brokers_and_namespace() {
    let config = render_config(&api(), &inputs()).expect("renders");
    assert_eq!(config.listen, "0.0.0.0:8080");
    assert_eq!(config.postgres.table, "readings");
    assert_eq!(config.postgres.device_column, "device");
    assert_eq!(config.postgres.time_column, "received_at");
    let redis = config.redis.expect("redis");
    assert_eq!(redis.key_template, "factory:latest:{device}");
    assert_eq!(
        redis.url_file,
        std::path::PathBuf::from("/etc/tributary/secrets/redis/url")
    );
    let live = config.live.expect("live");
    assert_eq!(live.exchange, "tributary.live.factory");
    assert!(!live.declare_exchange, "the operator declares it");
    assert_eq!(
        live.uri_file,
        std::path::PathBuf::from("/etc/tributary/secrets/factory-api-amqp-telemetry/uri")
    );
    assert_eq!(config.tenant, "factory");
    assert!(config.commands.is_some());
    assert_eq!(config.cors_allowed_origins, ["https://dashboard.example"]);
    assert_eq!(config.limits.max_page_size, 500);
    assert_eq!(config.limits.default_page_size, 100);
    assert_eq!(config.api_keys.len(), 2);
    assert_eq!(config.api_keys[0].sha256, keys::sha256_hex(&"d".repeat(43)));
    assert_eq!(
        config.api_keys[1].rate_limit.as_ref().map(|r| r.burst),
        Some(10)
    );
}

#[test]
fn the_rendered_config_is_one_the_api_reads_back_and_holds_no_key() {
    let children = build(&api(), &inputs()).expect("builds");
    let text = &children.config_map.data.as_ref().expect("data")[CONFIG_KEY];
    let parsed: ApiConfig =
        tributary_contract::config_file::parse(text).expect("the API's own reader takes it");
    assert_eq!(parsed, render_config(&api(), &inputs()).expect("renders"));
    assert!(
        !text.contains(&"d".repeat(43)),
        "keys never reach the config"
    );
    assert!(text.contains("scope: all"), "{text}");
}

#[test]
fn the_deployment_is_restricted_probed_bounded_and_mounts_no_key_or_admin_secret() {
    let children = build(&api(), &inputs()).expect("builds");
    let pod = children
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod");
    assert_restricted(&pod);
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("tributary/api:0.1.0"));
    assert_eq!(
        container.args.clone().expect("args"),
        ["--config", "/etc/tributary/config/api.yaml"]
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        probe_path(&container.readiness_probe).as_deref(),
        Some("/readyz")
    );
    assert_eq!(
        probe_path(&container.liveness_probe).as_deref(),
        Some("/healthz")
    );
    let resources = container.resources.as_ref().expect("resources");
    assert!(resources
        .limits
        .as_ref()
        .is_some_and(|l| l.contains_key("memory")));
    let secrets: Vec<String> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.as_ref().and_then(|s| s.secret_name.clone()))
        .collect();
    assert_eq!(secrets, ["factory-api-amqp-telemetry", "pg", "redis"]);
}

#[test]
fn a_rotated_key_changes_the_pods_config_hash() {
    let hash = |inputs: &ApiInputs| {
        build(&api(), inputs)
            .expect("builds")
            .deployment
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .expect("annotated")[crate::build::CONFIG_HASH_ANNOTATION]
            .clone()
    };
    let before = inputs();
    let mut after = inputs();
    after.keys.keys.insert("site-a".into(), "t".repeat(43));
    assert_ne!(hash(&before), hash(&after));
    assert_eq!(hash(&before), hash(&inputs()));
}

#[test]
fn service_and_network_policy_expose_port_8080_only() {
    let children = build(&api(), &inputs()).expect("builds");
    let service = serde_json::to_value(&children.service).expect("json");
    assert_eq!(service["metadata"]["name"], "factory-api");
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "http", "port": 8080, "protocol": "TCP", "targetPort": "http"}])
    );
    assert_eq!(service["spec"]["type"], "ClusterIP");
    let policy = serde_json::to_value(&children.network_policy).expect("json");
    assert_eq!(
        policy["spec"]["ingress"],
        json!([{"ports": [{"port": 8080, "protocol": "TCP"}]}])
    );
    assert_eq!(
        endpoint("factory", "factory"),
        "factory-api.factory.svc:8080"
    );
}

#[test]
fn a_wrong_sink_type_or_template_is_refused_with_the_sinks_name() {
    let mut wrong = inputs();
    wrong.history = load("sink-redis.yaml");
    let error = build(&api(), &wrong).expect_err("redis as history");
    assert!(
        error.to_string().contains("is not a PostgreSQL Sink"),
        "{error}"
    );
    let mut template = inputs();
    let mut latest: Sink = load("sink-redis.yaml");
    latest.spec.redis.as_mut().expect("redis").key_template = "latest:{topic}".into();
    template.latest = Some(latest);
    let error = build(&api(), &template).expect_err("placeholder");
    assert!(
        error.to_string().contains("can fill only {device}"),
        "{error}"
    );
}

#[test]
fn an_administrator_secret_is_never_rendered() {
    let mut admin = inputs();
    let mut broker = own_broker();
    broker.uri.name = "telemetry-rabbitmq-credentials".into();
    broker.credentials = BrokerCredentials::Administrator;
    admin.live = Some(broker);
    assert!(matches!(
        build(&api(), &admin),
        Err(BuildError::AdministratorSecret(_))
    ));
}

#[test]
fn a_commands_key_without_a_gateway_and_bad_limits_are_invalid() {
    let mut api = api();
    api.spec.commands = None;
    let error = validate(&api).expect_err("commands key");
    assert!(error.to_string().contains("spec.commands"), "{error}");
    let mut api = self::api();
    api.spec.limits = Some(crate::crd::application_api::ApiLimitsSpec {
        max_connections: Some(0),
        ..Default::default()
    });
    let error = validate(&api).expect_err("zero connections");
    assert!(
        error.to_string().contains("spec.limits.maxConnections"),
        "{error}"
    );
    let mut api = self::api();
    api.metadata.name = Some("x".repeat(60));
    assert!(validate(&api).is_err(), "too long for its children's names");
}
