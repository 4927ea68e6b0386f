//! Desired state of a Gateway: validation, the rendered gateway config, and its
//! Deployment, Service and PodDisruptionBudget.

use super::pod::{config_and_secret_volumes, deployment, http_probe, CONFIG_DIR};
use super::sink::secret_file;
use super::worker::ResolvedQueue;
use super::{child_meta, config_hash, name_and_namespace, selector_labels, BuildError, SecretData};
use crate::crd::gateway::{DeliveryMode, Gateway};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use tributary_contract::gateway_config::{
    self as contract, AuthConfig, BrokerConfig, ClientCertificateAuth, GatewayConfig, Listeners,
    Route, TlsListener,
};

/// Key of the rendered config inside the gateway ConfigMap.
pub const CONFIG_KEY: &str = "gateway.yaml";
/// Port of the gateway's health and metrics endpoint.
pub const HEALTH_PORT: u16 = 9090;
/// Key of the passwords Secret holding `device:hash` lines.
pub const PASSWORDS_KEY: &str = "passwords";
const COMPONENT: &str = "gateway";

/// Everything a Gateway's children depend on besides its spec.
#[derive(Clone, Debug)]
pub struct GatewayInputs {
    /// Each routed Queue by resource name.
    pub queues: BTreeMap<String, ResolvedQueue>,
    /// Content of every referenced Secret: device credentials, TLS, the broker URI.
    pub secrets: SecretData,
    /// Default gateway image.
    pub image: String,
}

/// The Gateway's children.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayChildren {
    /// The rendered config.
    pub config_map: ConfigMap,
    /// The gateway pods.
    pub deployment: Deployment,
    /// The device-facing Service.
    pub service: Service,
    /// Keeps at least all but one pod up during voluntary disruptions.
    pub pdb: PodDisruptionBudget,
}

/// Name of every child of a Gateway.
pub fn child_name(gateway: &str) -> String {
    format!("{gateway}-gateway")
}

/// Every Secret name the Gateway references by itself (not through Queues).
pub fn referenced_secrets(gateway: &Gateway) -> BTreeSet<String> {
    let spec = &gateway.spec;
    let mut names = BTreeSet::new();
    if let Some(tls) = &spec.listeners.mqtt_tls {
        names.insert(tls.secret_name.clone());
    }
    if let Some(passwords) = &spec.auth.passwords {
        names.insert(passwords.name.clone());
    }
    if let Some(jwt) = &spec.auth.jwt {
        names.insert(jwt.public_keys.name.clone());
    }
    if let Some(certs) = &spec.auth.client_certificates {
        names.insert(certs.ca.name.clone());
    }
    names
}

/// Validates a Gateway's spec without looking at other resources.
pub fn validate(gateway: &Gateway) -> Result<(), BuildError> {
    name_and_namespace(gateway)?;
    let spec = &gateway.spec;
    let listeners = &spec.listeners;
    let ports: Vec<i32> = [
        listeners.mqtt.as_ref().map(|l| l.port),
        listeners.mqtt_tls.as_ref().map(|l| l.port),
        listeners.http.as_ref().map(|l| l.port),
    ]
    .into_iter()
    .flatten()
    .collect();
    if ports.is_empty() {
        return Err(BuildError::Invalid(
            "spec.listeners: set at least one of mqtt, mqttTls and http".into(),
        ));
    }
    let unique: BTreeSet<_> = ports.iter().collect();
    if unique.len() != ports.len() || ports.contains(&i32::from(HEALTH_PORT)) {
        return Err(BuildError::Invalid(format!(
            "spec.listeners: ports must be distinct and not {HEALTH_PORT} (health endpoint)"
        )));
    }
    let auth = &spec.auth;
    if auth.passwords.is_none()
        && auth.jwt.is_none()
        && auth.client_certificates.is_none()
        && !auth.allow_anonymous
    {
        return Err(BuildError::Invalid(
            "spec.auth: configure passwords, jwt, clientCertificates or allowAnonymous".into(),
        ));
    }
    if auth.client_certificates.is_some() && listeners.mqtt_tls.is_none() {
        return Err(BuildError::Invalid(
            "spec.auth.clientCertificates needs the spec.listeners.mqttTls listener".into(),
        ));
    }
    if spec.routes.is_empty() {
        return Err(BuildError::Invalid(
            "spec.routes must name at least one Queue".into(),
        ));
    }
    for (index, route) in spec.routes.iter().enumerate() {
        check_filter(&route.topic_filter).map_err(|why| {
            BuildError::Invalid(format!("spec.routes[{index}].topicFilter: {why}"))
        })?;
    }
    Ok(())
}

/// MQTT topic filter rules: `#` only as the last level, wildcards fill a whole level.
fn check_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("must not be empty");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (index, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || index + 1 != levels.len()) {
            return Err("'#' must be a whole level and the last one");
        }
        if level.contains('+') && *level != "+" {
            return Err("'+' must be a whole level");
        }
    }
    Ok(())
}

fn any_addr(port: i32) -> Result<SocketAddr, BuildError> {
    let port = u16::try_from(port).map_err(|_| BuildError::Invalid(format!("bad port {port}")))?;
    Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
}

/// The one broker connection Secret shared by every routed Queue.
fn broker_secret(
    gateway: &Gateway,
    inputs: &GatewayInputs,
) -> Result<crate::crd::SecretKeyRef, BuildError> {
    let mut uris = BTreeSet::new();
    for route in &gateway.spec.routes {
        let queue = inputs.queues.get(&route.queue).ok_or_else(|| {
            BuildError::Invalid(format!("Queue {:?} is not resolved", route.queue))
        })?;
        uris.insert(queue.uri.clone());
    }
    match uris.len() {
        1 => uris
            .into_iter()
            .next()
            .ok_or_else(|| BuildError::Invalid("no routes".into())),
        _ => Err(BuildError::Invalid(
            "spec.routes: all routed Queues must be on the same broker".into(),
        )),
    }
}

fn out_of_range(field: &str) -> BuildError {
    BuildError::Invalid(format!("{field} is out of range"))
}

/// Renders the gateway config file (the `tributary-contract` type) for this Gateway.
pub fn render_config(
    gateway: &Gateway,
    inputs: &GatewayInputs,
) -> Result<GatewayConfig, BuildError> {
    validate(gateway)?;
    let (name, namespace) = name_and_namespace(gateway)?;
    let spec = &gateway.spec;
    let broker = broker_secret(gateway, inputs)?;
    let listeners = Listeners {
        mqtt: spec
            .listeners
            .mqtt
            .as_ref()
            .map(|l| any_addr(l.port))
            .transpose()?,
        mqtt_tls: spec
            .listeners
            .mqtt_tls
            .as_ref()
            .map(|l| {
                Ok::<_, BuildError>(TlsListener {
                    listen: any_addr(l.port)?,
                    cert_file: secret_file(&l.secret_name, "tls.crt"),
                    key_file: secret_file(&l.secret_name, "tls.key"),
                })
            })
            .transpose()?,
        http: spec
            .listeners
            .http
            .as_ref()
            .map(|l| any_addr(l.port))
            .transpose()?,
    };
    let jwt = match &spec.auth.jwt {
        None => None,
        Some(jwt) => {
            // Every key of the Secret is one public key file.
            let keys: Vec<_> = inputs
                .secrets
                .get(&jwt.public_keys.name)
                .map(|data| {
                    data.keys()
                        .map(|key| secret_file(&jwt.public_keys.name, key))
                        .collect()
                })
                .unwrap_or_default();
            if keys.is_empty() {
                return Err(BuildError::Invalid(format!(
                    "spec.auth.jwt.publicKeys: Secret {:?} holds no keys",
                    jwt.public_keys.name
                )));
            }
            Some(contract::JwtAuth {
                public_key_files: keys,
                device_claim: jwt.device_claim.clone(),
                issuer: jwt.issuer.clone(),
                audience: jwt.audience.clone(),
                max_token_lifetime_seconds: jwt.max_token_lifetime_seconds,
            })
        }
    };
    let auth = AuthConfig {
        password_file: spec
            .auth
            .passwords
            .as_ref()
            .map(|p| secret_file(&p.name, PASSWORDS_KEY)),
        jwt,
        client_certificates: spec.auth.client_certificates.as_ref().map(|c| {
            ClientCertificateAuth {
                ca_file: secret_file(&c.ca.name, "ca.crt"),
            }
        }),
        allow_anonymous: spec.auth.allow_anonymous,
        ..AuthConfig::default()
    };
    let routes = spec
        .routes
        .iter()
        .map(|route| {
            let queue = inputs.queues.get(&route.queue).ok_or_else(|| {
                BuildError::Invalid(format!("Queue {:?} is not resolved", route.queue))
            })?;
            Ok(Route {
                topic_filter: route.topic_filter.clone(),
                queue: queue.broker_queue.clone(),
            })
        })
        .collect::<Result<Vec<_>, BuildError>>()?;
    let limits = &spec.limits;
    Ok(GatewayConfig {
        tenant: namespace,
        gateway: name,
        health_listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, HEALTH_PORT)),
        listeners,
        auth,
        permissions: spec.publish_topics.clone(),
        routes,
        broker: BrokerConfig {
            uri_file: secret_file(&broker.name, &broker.key),
            reconnect_max_delay_ms: 5_000,
            confirm_timeout_ms: 30_000,
        },
        limits: contract::Limits {
            max_payload_bytes: usize::try_from(limits.max_payload_bytes)
                .map_err(|_| out_of_range("spec.limits.maxPayloadBytes"))?,
            max_connections: usize::try_from(limits.max_connections)
                .map_err(|_| out_of_range("spec.limits.maxConnections"))?,
            messages_per_second: u32::try_from(limits.messages_per_second_per_device)
                .map_err(|_| out_of_range("spec.limits.messagesPerSecondPerDevice"))?,
            burst: u32::try_from(limits.burst).map_err(|_| out_of_range("spec.limits.burst"))?,
            ..contract::Limits::default()
        },
        delivery: match spec.delivery {
            DeliveryMode::Confirmed => contract::DeliveryMode::Confirmed,
            DeliveryMode::Fast => contract::DeliveryMode::Fast,
        },
    })
}

/// Builds the Gateway's ConfigMap, Deployment, Service and PodDisruptionBudget.
pub fn build(gateway: &Gateway, inputs: &GatewayInputs) -> Result<GatewayChildren, BuildError> {
    let (name, _) = name_and_namespace(gateway)?;
    let config = render_config(gateway, inputs)?;
    let text = super::render_yaml("gateway", &config)?;
    let child = child_name(&name);
    let mut secrets = referenced_secrets(gateway);
    secrets.insert(broker_secret(gateway, inputs)?.name);
    let (volumes, mounts) = config_and_secret_volumes(&child, &secrets);
    let spec = &gateway.spec;
    let listener_ports: Vec<(&str, i32)> = [
        spec.listeners.mqtt.as_ref().map(|l| ("mqtt", l.port)),
        spec.listeners.mqtt_tls.as_ref().map(|l| ("mqtts", l.port)),
        spec.listeners.http.as_ref().map(|l| ("http", l.port)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut container_ports: Vec<ContainerPort> = listener_ports
        .iter()
        .map(|(port_name, port)| ContainerPort {
            name: Some((*port_name).to_owned()),
            container_port: *port,
            ..ContainerPort::default()
        })
        .collect();
    container_ports.push(ContainerPort {
        name: Some("health".to_owned()),
        container_port: i32::from(HEALTH_PORT),
        ..ContainerPort::default()
    });
    let container = Container {
        name: "gateway".to_owned(),
        image: Some(spec.image.clone().unwrap_or_else(|| inputs.image.clone())),
        args: Some(vec![
            "--config".to_owned(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        ports: Some(container_ports),
        volume_mounts: Some(mounts),
        readiness_probe: Some(http_probe("/readyz", "health", 2)),
        liveness_probe: Some(http_probe("/healthz", "health", 10)),
        ..Container::default()
    };
    let selector = selector_labels(&name, COMPONENT);
    let service = Service {
        metadata: child_meta(gateway, &child, COMPONENT)?,
        spec: Some(ServiceSpec {
            type_: Some(spec.service.type_.as_str().to_owned()),
            selector: Some(selector.clone()),
            ports: Some(
                listener_ports
                    .iter()
                    .map(|(port_name, port)| ServicePort {
                        name: Some((*port_name).to_owned()),
                        port: *port,
                        target_port: Some(IntOrString::String((*port_name).to_owned())),
                        protocol: Some("TCP".to_owned()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let pdb = PodDisruptionBudget {
        metadata: child_meta(gateway, &child, COMPONENT)?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    let hash = config_hash(&text, &inputs.secrets);
    Ok(GatewayChildren {
        config_map: ConfigMap {
            metadata: child_meta(gateway, &child, COMPONENT)?,
            data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), text)])),
            ..ConfigMap::default()
        },
        deployment: deployment(
            child_meta(gateway, &child, COMPONENT)?,
            selector,
            spec.replicas,
            hash,
            vec![container],
            volumes,
        ),
        service,
        pdb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::load;
    use crate::crd::SecretKeyRef;

    fn inputs() -> GatewayInputs {
        let queue = ResolvedQueue {
            broker_queue: "factory.telemetry".into(),
            uri: SecretKeyRef {
                name: "telemetry-rabbitmq-credentials".into(),
                key: "uri".into(),
            },
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
            Some("/etc/tributary/secrets/telemetry-rabbitmq-credentials/uri")
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
            vec!["devices", "jwt-keys", "telemetry-rabbitmq-credentials"]
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
    fn gateway_without_listeners_or_auth_is_invalid() {
        let mut gateway: Gateway = load("gateway.yaml");
        gateway.spec.listeners = Default::default();
        assert!(validate(&gateway)
            .expect_err("invalid")
            .to_string()
            .contains("listeners"));
        let mut gateway: Gateway = load("gateway.yaml");
        gateway.spec.auth = Default::default();
        assert!(validate(&gateway)
            .expect_err("invalid")
            .to_string()
            .contains("spec.auth"));
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
}
