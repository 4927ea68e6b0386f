use super::*;
use crate::build::fixtures::load;
use crate::build::queue::access::BrokerCredentials;
use crate::crd::SecretKeyRef;

fn inputs() -> GatewayInputs {
    let queue = ResolvedQueue {
        ca: None,
        broker_queue: "factory.telemetry".into(),
        uri: SecretKeyRef {
            name: "line-1-gateway-amqp-telemetry".into(),
            key: "uri".into(),
        },
        credentials: BrokerCredentials::Workload,
        dead_letter_queue: None,
        delivery_limit: None,
    };
    GatewayInputs {
        queues: BTreeMap::from([("telemetry".into(), queue)]),
        secrets: SecretData::from([
            (
                "devices".into(),
                BTreeMap::from([("passwords".into(), b"d1:$argon2id$x".to_vec())]),
            ),
            (
                "jwt-keys".into(),
                BTreeMap::from([("a.pem".into(), b"-----".to_vec())]),
            ),
        ]),
        image: "tributary/gateway:0.1.0".into(),
        registry_key_id: "k1".into(),
    }
}

#[test]
fn gateway_config_renders_listeners_auth_routes_and_broker_file() {
    let gateway: Gateway = load("gateway.yaml");
    let config = render_config(&gateway, &inputs()).expect("renders");
    assert_eq!(
        (config.tenant.as_str(), config.gateway.as_str()),
        ("factory", "line-1")
    );
    assert_eq!(config.listeners.mqtt.map(|a| a.port()), Some(1883));
    assert_eq!(config.listeners.http.map(|a| a.port()), Some(8080));
    assert_eq!(
        config
            .auth
            .password_file
            .as_deref()
            .and_then(|p| p.to_str()),
        Some("/etc/tributary/secrets/devices/passwords")
    );
    let jwt = config.auth.jwt.expect("jwt");
    assert_eq!(jwt.public_key_files.len(), 1);
    assert_eq!(config.routes[0].queue, "factory.telemetry");
    assert_eq!(
        config.broker.uri_file.to_str(),
        Some("/etc/tributary/secrets/line-1-gateway-amqp-telemetry/uri")
    );
    assert_eq!(config.delivery, contract::DeliveryMode::Confirmed);
}

#[test]
fn gateway_builds_deployment_service_pdb_and_config() {
    let gateway: Gateway = load("gateway.yaml");
    let children = build(&gateway, &inputs()).expect("builds");
    let text = &children.config_map.data.expect("data")[CONFIG_KEY];
    // The data plane reads YAML through JSON values: no YAML tags allowed.
    assert!(!text.contains('!'), "{text}");
    let value: serde_json::Value = serde_yaml::from_str(text).expect("YAML");
    let parsed: GatewayConfig = serde_json::from_value(value).expect("gateway can parse it");
    assert_eq!(parsed.routes.len(), 1);
    let service = children.service.spec.expect("spec");
    assert_eq!(service.type_.as_deref(), Some("NodePort"));
    let ports: Vec<_> = service.ports.iter().flatten().map(|p| p.port).collect();
    assert_eq!(ports, vec![1883, 8080]);
    let pdb = children.pdb.spec.expect("spec");
    assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
    let deployment = children.deployment.spec.expect("spec");
    assert_eq!(deployment.replicas, Some(2));
    let pod = deployment.template.spec.expect("pod");
    crate::build::tests_support::assert_restricted(&pod);
    let mounted: Vec<_> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.as_ref())
        .filter_map(|s| s.secret_name.clone())
        .collect();
    assert_eq!(
        mounted,
        vec![
            "devices",
            "jwt-keys",
            "line-1-gateway-amqp-telemetry",
            "line-1-gateway-registry"
        ]
    );
}

#[test]
fn device_credential_change_changes_the_pod_template_hash() {
    let gateway: Gateway = load("gateway.yaml");
    let hash = |inputs: &GatewayInputs| {
        build(&gateway, inputs)
            .expect("builds")
            .deployment
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .map(|a| a[crate::build::CONFIG_HASH_ANNOTATION].clone())
    };
    let mut changed = inputs();
    changed.secrets.insert(
        "devices".into(),
        BTreeMap::from([("passwords".into(), b"d2:$argon2id$y".to_vec())]),
    );
    assert_ne!(hash(&inputs()), hash(&changed));
}

#[test]
fn gateway_without_listeners_is_invalid() {
    let mut gateway: Gateway = load("gateway.yaml");
    gateway.spec.listeners = Default::default();
    assert!(validate(&gateway)
        .expect_err("invalid")
        .to_string()
        .contains("listeners"));
}

#[test]
fn a_gateway_without_other_auth_accepts_registry_devices_only() {
    let mut gateway: Gateway = load("gateway.yaml");
    gateway.spec.auth = Default::default();
    validate(&gateway).expect("valid: the registry's Devices authenticate");
    let config = render_config(&gateway, &inputs()).expect("renders");
    assert_eq!(config.auth.password_file, None);
    assert!(!config.auth.allow_anonymous);
    let registry = config.auth.registry.expect("registry files");
    assert_eq!(
        registry.table_file,
        std::path::Path::new("/etc/tributary/secrets/line-1-gateway-registry/devices.json.gz")
    );
}

#[test]
fn bad_topic_filter_is_invalid() {
    let mut gateway: Gateway = load("gateway.yaml");
    gateway.spec.routes[0].topic_filter = "devices/#/x".into();
    let error = validate(&gateway).expect_err("invalid");
    assert!(
        error.to_string().contains("routes[0].topicFilter"),
        "{error}"
    );
}

#[test]
fn a_bad_subscribe_template_is_invalid_and_limits_reach_the_config() {
    let mut gateway: Gateway = load("gateway.yaml");
    gateway.spec.commands.subscribe_topics = vec!["commands/{device}/#/x".into()];
    let error = validate(&gateway).expect_err("invalid");
    assert!(
        error.to_string().contains("commands.subscribeTopics[0]"),
        "{error}"
    );
    gateway.spec.commands.subscribe_topics = vec!["cmd/{device}/+".into()];
    gateway.spec.commands.max_queued_per_device = 7;
    gateway.spec.commands.enabled = false;
    let config = render_config(&gateway, &inputs()).expect("config");
    assert_eq!(config.commands.subscribe, vec!["cmd/{device}/+".to_owned()]);
    assert_eq!(config.commands.max_queued_per_device, 7);
    assert!(!config.commands.enabled);
}

#[test]
fn routes_to_two_brokers_are_refused() {
    let mut gateway: Gateway = load("gateway.yaml");
    gateway.spec.routes.push(crate::crd::gateway::Route {
        topic_filter: "alerts/#".into(),
        queue: "alerts".into(),
    });
    let mut inputs = inputs();
    let mut other = inputs.queues["telemetry"].clone();
    other.uri.name = "other".into();
    inputs.queues.insert("alerts".into(), other);
    assert!(render_config(&gateway, &inputs)
        .expect_err("invalid")
        .to_string()
        .contains("same broker"));
}

#[test]
fn gateway_pods_get_default_resources_and_the_spec_overrides_them_key_by_key() {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let mut gateway: Gateway = load("gateway.yaml");
    let container_resources = |gateway: &Gateway| {
        let deployment = build(gateway, &inputs()).expect("builds").deployment;
        let pod = deployment.spec.expect("spec").template.spec.expect("pod");
        pod.containers[0].resources.clone().expect("resources")
    };
    let defaults = container_resources(&gateway);
    assert_eq!(
        defaults.limits.as_ref().expect("limits")["memory"],
        Quantity("1Gi".into())
    );
    assert_eq!(
        defaults.requests.as_ref().expect("requests")["cpu"],
        Quantity("100m".into())
    );
    gateway.spec.resources = Some(crate::crd::ComputeResources {
        requests: BTreeMap::new(),
        limits: BTreeMap::from([("memory".to_owned(), "3Gi".to_owned())]),
    });
    let custom = container_resources(&gateway);
    let limits = custom.limits.expect("limits");
    assert_eq!(limits["memory"], Quantity("3Gi".into()));
    assert_eq!(
        limits["cpu"],
        Quantity("2".into()),
        "keys not given keep their default"
    );
    gateway.spec.resources = Some(crate::crd::ComputeResources {
        requests: BTreeMap::from([("memory".to_owned(), "lots".to_owned())]),
        limits: BTreeMap::new(),
    });
    let error = validate(&gateway).expect_err("not a quantity");
    assert!(
        error.to_string().contains("spec.resources.requests.memory"),
        "{error}"
    );
}

#[test]
fn a_gateway_never_mounts_a_managed_brokers_administrator_secret() {
    let gateway: Gateway = load("gateway.yaml");
    let mut with_admin = inputs();
    for queue in with_admin.queues.values_mut() {
        queue.uri.name = "telemetry-rabbitmq-credentials".into();
        queue.credentials = BrokerCredentials::Administrator;
    }
    let error = build(&gateway, &with_admin).expect_err("refused");
    assert!(
        matches!(&error, BuildError::AdministratorSecret(name) if name == "telemetry-rabbitmq-credentials"),
        "{error}"
    );
    // An external broker's Secret (the user's own credentials) is mounted as given.
    let mut supplied = inputs();
    for queue in supplied.queues.values_mut() {
        queue.uri.name = "shared-rabbit".into();
        queue.credentials = BrokerCredentials::Supplied;
    }
    let config = render_config(&gateway, &supplied).expect("renders");
    assert_eq!(
        config.broker.uri_file.to_str(),
        Some("/etc/tributary/secrets/shared-rabbit/uri")
    );
}

fn https_gateway() -> Gateway {
    let mut gateway: Gateway = load("gateway.yaml");
    gateway.spec.listeners.http_tls = Some(TlsListenerCrd {
        port: 8443,
        secret_name: "gateway-https".into(),
    });
    gateway.spec.auth.client_certificates = Some(crate::crd::gateway::ClientCertAuth {
        ca: crate::crd::SecretRef {
            name: "device-ca".into(),
        },
    });
    gateway.spec.service.type_ = ServiceType::LoadBalancer;
    gateway.spec.service.external_traffic_policy =
        Some(crate::crd::gateway::ExternalTrafficPolicy::Local);
    gateway.spec.service.proxy_protocol = true;
    gateway
}

#[test]
fn https_listener_gets_a_service_port_its_secret_mounted_and_its_config() {
    let gateway = https_gateway();
    let children = build(&gateway, &inputs()).expect("client certificates with only httpTls");
    let service = children.service.spec.expect("spec");
    let ports: Vec<_> = service
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap_or_default(), p.port))
        .collect();
    assert_eq!(
        ports,
        vec![
            ("mqtt".into(), 1883),
            ("http".into(), 8080),
            ("https".into(), 8443)
        ]
    );
    let pod = children
        .deployment
        .spec
        .and_then(|d| d.template.spec)
        .expect("pod");
    let secrets: Vec<_> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect();
    assert!(secrets.contains(&"gateway-https".to_owned()), "{secrets:?}");
    let container_ports: Vec<_> = pod.containers[0]
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert!(container_ports.contains(&8443), "{container_ports:?}");
    let config = render_config(&gateway, &inputs()).expect("renders");
    let https = config.listeners.http_tls.expect("httpTls in the config");
    assert_eq!(https.listen.port(), 8443);
    assert_eq!(
        https.cert_file.to_str(),
        Some("/etc/tributary/secrets/gateway-https/tls.crt")
    );
    assert_eq!(
        https.key_file.to_str(),
        Some("/etc/tributary/secrets/gateway-https/tls.key")
    );
    assert!(config.listeners.proxy_protocol);
}

#[test]
fn external_traffic_policy_reaches_the_service_and_needs_an_external_type() {
    let gateway = https_gateway();
    let service = build(&gateway, &inputs())
        .expect("builds")
        .service
        .spec
        .expect("spec");
    assert_eq!(service.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(service.external_traffic_policy.as_deref(), Some("Local"));
    let mut internal = https_gateway();
    internal.spec.service.type_ = ServiceType::ClusterIP;
    let error = validate(&internal).expect_err("ClusterIP has no external traffic");
    assert!(
        error
            .to_string()
            .contains("spec.service.externalTrafficPolicy"),
        "{error}"
    );
    // Unset, the Service carries none (the fixture is a NodePort Service).
    let plain: Gateway = load("gateway.yaml");
    let service = build(&plain, &inputs())
        .expect("builds")
        .service
        .spec
        .expect("spec");
    assert_eq!(service.external_traffic_policy, None);
}

#[test]
fn client_certificates_need_a_tls_listener() {
    let mut gateway = https_gateway();
    gateway.spec.listeners.http_tls = None;
    let error = validate(&gateway).expect_err("no TLS listener");
    assert!(error.to_string().contains("clientCertificates"), "{error}");
}

/// The routed Queue's broker has a private CA in Secret `rabbit-ca`.
fn inputs_with_ca(pem: &[u8]) -> GatewayInputs {
    let mut inputs = inputs();
    for queue in inputs.queues.values_mut() {
        queue.ca = Some(SecretKeyRef {
            name: "rabbit-ca".into(),
            key: "ca.crt".into(),
        });
    }
    inputs.secrets.insert(
        "rabbit-ca".into(),
        BTreeMap::from([("ca.crt".into(), pem.to_vec())]),
    );
    inputs
}

/// The mount path of Secret `name` in the gateway container, and whether it is read-only.
fn secret_mount(children: &GatewayChildren, name: &str) -> Option<(String, Option<bool>)> {
    let pod = children.deployment.spec.as_ref()?.template.spec.as_ref()?;
    let volume = pod
        .volumes
        .as_ref()?
        .iter()
        .find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(name))?;
    let mount = pod.containers[0]
        .volume_mounts
        .as_ref()?
        .iter()
        .find(|m| m.name == volume.name)?;
    Some((mount.mount_path.clone(), mount.read_only))
}

fn pod_hash(children: &GatewayChildren) -> Option<String> {
    children
        .deployment
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(crate::build::CONFIG_HASH_ANNOTATION)
        .cloned()
}

#[test]
fn a_private_broker_ca_is_mounted_read_only_and_its_path_rendered() {
    let gateway: Gateway = load("gateway.yaml");
    let with_ca = inputs_with_ca(b"-----BEGIN CERTIFICATE-----");
    let config = render_config(&gateway, &with_ca).expect("renders");
    assert_eq!(
        config.broker.ca_file.as_deref().and_then(|p| p.to_str()),
        Some("/etc/tributary/secrets/rabbit-ca/ca.crt")
    );
    let children = build(&gateway, &with_ca).expect("builds");
    assert_eq!(
        secret_mount(&children, "rabbit-ca"),
        Some(("/etc/tributary/secrets/rabbit-ca".into(), Some(true)))
    );
    let without = build(&gateway, &inputs()).expect("builds");
    assert_eq!(secret_mount(&without, "rabbit-ca"), None);
    let plain = render_config(&gateway, &inputs()).expect("renders");
    assert_eq!(plain.broker.ca_file, None);
}

#[test]
fn a_changed_broker_ca_rolls_the_gateway_pods() {
    let gateway: Gateway = load("gateway.yaml");
    let before = build(&gateway, &inputs_with_ca(b"old CA")).expect("builds");
    let after = build(&gateway, &inputs_with_ca(b"new CA")).expect("builds");
    assert!(pod_hash(&before).is_some());
    assert_ne!(pod_hash(&before), pod_hash(&after));
}

#[test]
fn routed_queues_on_one_broker_with_different_cas_are_invalid() {
    let gateway: Gateway = load("gateway.yaml");
    let mut inputs = inputs_with_ca(b"ca");
    let mut other = inputs.queues["telemetry"].clone();
    other.ca = None;
    inputs.queues.insert("other".into(), other);
    let mut gateway = gateway;
    let mut route = gateway.spec.routes[0].clone();
    route.queue = "other".into();
    gateway.spec.routes.push(route);
    let error = render_config(&gateway, &inputs).expect_err("two CAs");
    assert!(error.to_string().contains("same broker"), "{error}");
}
