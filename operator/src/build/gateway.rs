//! Desired state of a Gateway: validation, the rendered gateway config, and its
//! Deployment, Service and PodDisruptionBudget.

use super::network_policy::pod_ingress_policy;
use super::pod::{
    config_and_secret_volumes, deployment, http_probe, resources, validate_resources, CONFIG_DIR,
    GATEWAY_RESOURCES,
};
use super::queue::access::mountable;
use super::sink::secret_file;
use super::worker::ResolvedQueue;
use super::{child_meta, config_hash, name_and_namespace, selector_labels, BuildError, SecretData};
use crate::crd::gateway::{
    DeliveryMode, Gateway, JwtAuth, ServiceSpec as ServiceSpecCrd, ServiceType,
    TlsListener as TlsListenerCrd,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, Service, ServicePort, ServiceSpec, VolumeMount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use tributary_contract::command::CommandsConfig;
use tributary_contract::device_table::{self, RegistryFiles};
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
    /// Id of the namespace's registry key: the pods restart when it changes (their verifier
    /// key and sync token change with it).
    pub registry_key_id: String,
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
    /// Device ports open to all, the health port to the cluster's pods only.
    pub network_policy: NetworkPolicy,
}

/// Name of every child of a Gateway.
pub fn child_name(gateway: &str) -> String {
    format!("{gateway}-gateway")
}

/// Name of the Gateway's registry Secret: its device table, the namespace's verifier key,
/// its pods' sync token and the device CA certificate (rendered by the operator, read by
/// the pods at start and replaced by pushes; see `crate::registry`).
pub fn registry_secret_name(gateway: &str) -> String {
    format!("{}-registry", child_name(gateway))
}

/// Where the pods find the registry Secret's files.
fn registry_files(gateway: &str) -> RegistryFiles {
    let secret = registry_secret_name(gateway);
    RegistryFiles {
        table_file: secret_file(&secret, device_table::TABLE_FILE),
        verifier_key_file: secret_file(&secret, device_table::VERIFIER_KEY_FILE),
        sync_token_file: secret_file(&secret, device_table::SYNC_TOKEN_FILE),
        device_ca_file: Some(secret_file(&secret, device_table::DEVICE_CA_FILE)),
    }
}

/// Every Secret name the Gateway references by itself (not through Queues).
pub fn referenced_secrets(gateway: &Gateway) -> BTreeSet<String> {
    let spec = &gateway.spec;
    let mut names = BTreeSet::new();
    for tls in [&spec.listeners.mqtt_tls, &spec.listeners.http_tls]
        .into_iter()
        .flatten()
    {
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
    validate_resources("spec.resources", spec.resources.as_ref())?;
    let listeners = &spec.listeners;
    let ports: Vec<i32> = [
        listeners.mqtt.as_ref().map(|l| l.port),
        listeners.mqtt_tls.as_ref().map(|l| l.port),
        listeners.http.as_ref().map(|l| l.port),
        listeners.http_tls.as_ref().map(|l| l.port),
    ]
    .into_iter()
    .flatten()
    .collect();
    if ports.is_empty() {
        return Err(BuildError::Invalid(
            "spec.listeners: set at least one of mqtt, mqttTls, http and httpTls".into(),
        ));
    }
    let unique: BTreeSet<_> = ports.iter().collect();
    if unique.len() != ports.len() || ports.contains(&i32::from(HEALTH_PORT)) {
        return Err(BuildError::Invalid(format!(
            "spec.listeners: ports must be distinct and not {HEALTH_PORT} (health endpoint)"
        )));
    }
    // Without another method, the Gateway accepts the registry's Devices only.
    let auth = &spec.auth;
    if auth.client_certificates.is_some()
        && listeners.mqtt_tls.is_none()
        && listeners.http_tls.is_none()
    {
        return Err(BuildError::Invalid(
            "spec.auth.clientCertificates needs a TLS listener: spec.listeners.mqttTls or httpTls"
                .into(),
        ));
    }
    validate_service(&spec.service)?;
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
    for (index, template) in spec.commands.subscribe_topics.iter().enumerate() {
        check_filter(&template.replace("{device}", "d")).map_err(|why| {
            BuildError::Invalid(format!("spec.commands.subscribeTopics[{index}]: {why}"))
        })?;
    }
    Ok(())
}

/// `externalTrafficPolicy` only exists for Services reachable from outside the cluster.
fn validate_service(service: &ServiceSpecCrd) -> Result<(), BuildError> {
    if service.external_traffic_policy.is_some() && service.type_ == ServiceType::ClusterIP {
        return Err(BuildError::Invalid(
            "spec.service.externalTrafficPolicy needs spec.service.type NodePort or LoadBalancer"
                .into(),
        ));
    }
    Ok(())
}

/// MQTT topic filter rules: `#` only as the last level, wildcards fill a whole level.
pub(crate) fn check_filter(filter: &str) -> Result<(), &'static str> {
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

/// The one broker connection Secret (and private CA, if any) shared by every routed Queue.
fn broker_secret(
    gateway: &Gateway,
    inputs: &GatewayInputs,
) -> Result<(crate::crd::SecretKeyRef, Option<crate::crd::SecretKeyRef>), BuildError> {
    let mut uris = BTreeSet::new();
    for route in &gateway.spec.routes {
        let queue = inputs.queues.get(&route.queue).ok_or_else(|| {
            BuildError::Invalid(format!("Queue {:?} is not resolved", route.queue))
        })?;
        let uri = mountable(&queue.uri, queue.credentials)?.clone();
        uris.insert((uri, queue.ca.clone()));
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
    let (broker, ca) = broker_secret(gateway, inputs)?;
    Ok(GatewayConfig {
        tenant: namespace,
        gateway: name,
        health_listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, HEALTH_PORT)),
        listeners: listeners_config(gateway)?,
        auth: auth_config(gateway, inputs)?,
        permissions: spec.publish_topics.clone(),
        routes: routes_config(gateway, inputs)?,
        broker: BrokerConfig {
            uri_file: secret_file(&broker.name, &broker.key),
            ca_file: ca.map(|ca| secret_file(&ca.name, &ca.key)),
            reconnect_max_delay_ms: contract::DEFAULT_RECONNECT_MAX_DELAY_MS,
            confirm_timeout_ms: contract::DEFAULT_CONFIRM_TIMEOUT_MS,
        },
        limits: limits_config(gateway)?,
        delivery: match spec.delivery {
            DeliveryMode::Confirmed => contract::DeliveryMode::Confirmed,
            DeliveryMode::Fast => contract::DeliveryMode::Fast,
        },
        commands: commands_config(gateway)?,
    })
}

/// A TLS listener on all addresses with its Secret's mounted certificate and key.
fn tls_listener(listener: &TlsListenerCrd) -> Result<TlsListener, BuildError> {
    Ok(TlsListener {
        listen: any_addr(listener.port)?,
        cert_file: secret_file(&listener.secret_name, "tls.crt"),
        key_file: secret_file(&listener.secret_name, "tls.key"),
    })
}

/// Every listener on all addresses, TLS with the mounted certificate and key.
fn listeners_config(gateway: &Gateway) -> Result<Listeners, BuildError> {
    let listeners = &gateway.spec.listeners;
    let plain = |listener: &Option<crate::crd::gateway::PlainListener>| {
        listener.as_ref().map(|l| any_addr(l.port)).transpose()
    };
    Ok(Listeners {
        mqtt: plain(&listeners.mqtt)?,
        mqtt_tls: listeners.mqtt_tls.as_ref().map(tls_listener).transpose()?,
        http: plain(&listeners.http)?,
        http_tls: listeners.http_tls.as_ref().map(tls_listener).transpose()?,
        proxy_protocol: gateway.spec.service.proxy_protocol,
    })
}

/// The authentication methods, their Secrets as mounted files.
fn auth_config(gateway: &Gateway, inputs: &GatewayInputs) -> Result<AuthConfig, BuildError> {
    let auth = &gateway.spec.auth;
    Ok(AuthConfig {
        password_file: auth
            .passwords
            .as_ref()
            .map(|p| secret_file(&p.name, PASSWORDS_KEY)),
        jwt: auth
            .jwt
            .as_ref()
            .map(|jwt| jwt_config(jwt, inputs))
            .transpose()?,
        client_certificates: auth
            .client_certificates
            .as_ref()
            .map(|c| ClientCertificateAuth {
                ca_file: secret_file(&c.ca.name, "ca.crt"),
            }),
        allow_anonymous: auth.allow_anonymous,
        registry: Some(registry_files(&gateway.name_any())),
        ..AuthConfig::default()
    })
}

/// JWT verification: every key of the public-keys Secret is one public key file.
fn jwt_config(jwt: &JwtAuth, inputs: &GatewayInputs) -> Result<contract::JwtAuth, BuildError> {
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
    Ok(contract::JwtAuth {
        public_key_files: keys,
        device_claim: jwt.device_claim.clone(),
        issuer: jwt.issuer.clone(),
        audience: jwt.audience.clone(),
        max_token_lifetime_seconds: jwt.max_token_lifetime_seconds,
    })
}

/// Each route to its Queue's name on the broker.
fn routes_config(gateway: &Gateway, inputs: &GatewayInputs) -> Result<Vec<Route>, BuildError> {
    gateway
        .spec
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
        .collect()
}

/// The spec's limits in the config's types; the others keep the gateway's defaults.
fn limits_config(gateway: &Gateway) -> Result<contract::Limits, BuildError> {
    let limits = &gateway.spec.limits;
    Ok(contract::Limits {
        max_payload_bytes: usize::try_from(limits.max_payload_bytes)
            .map_err(|_| out_of_range("spec.limits.maxPayloadBytes"))?,
        max_connections: usize::try_from(limits.max_connections)
            .map_err(|_| out_of_range("spec.limits.maxConnections"))?,
        messages_per_second: u32::try_from(limits.messages_per_second_per_device)
            .map_err(|_| out_of_range("spec.limits.messagesPerSecondPerDevice"))?,
        burst: u32::try_from(limits.burst).map_err(|_| out_of_range("spec.limits.burst"))?,
        max_connections_per_device: usize::try_from(limits.max_connections_per_device)
            .map_err(|_| out_of_range("spec.limits.maxConnectionsPerDevice"))?,
        max_http_connections: usize::try_from(limits.max_http_connections)
            .map_err(|_| out_of_range("spec.limits.maxHttpConnections"))?,
        http_header_timeout_seconds: u64::try_from(limits.http_header_timeout_seconds)
            .map_err(|_| out_of_range("spec.limits.httpHeaderTimeoutSeconds"))?,
        http_body_timeout_seconds: u64::try_from(limits.http_body_timeout_seconds)
            .map_err(|_| out_of_range("spec.limits.httpBodyTimeoutSeconds"))?,
        max_keep_alive_seconds: u16::try_from(limits.max_keep_alive_seconds)
            .map_err(|_| out_of_range("spec.limits.maxKeepAliveSeconds"))?,
        write_timeout_seconds: u64::try_from(limits.write_timeout_seconds)
            .map_err(|_| out_of_range("spec.limits.writeTimeoutSeconds"))?,
        ..contract::Limits::default()
    })
}

/// The gateway config's `commands` section from `spec.commands` (other fields: the
/// gateway's defaults).
fn commands_config(gateway: &Gateway) -> Result<CommandsConfig, BuildError> {
    let commands = &gateway.spec.commands;
    Ok(CommandsConfig {
        enabled: commands.enabled,
        subscribe: commands.subscribe_topics.clone(),
        max_queued_per_device: u32::try_from(commands.max_queued_per_device)
            .map_err(|_| out_of_range("spec.commands.maxQueuedPerDevice"))?,
        session_expiry_seconds: u32::try_from(commands.session_expiry_seconds)
            .map_err(|_| out_of_range("spec.commands.sessionExpirySeconds"))?,
        max_in_flight_per_device: u16::try_from(commands.max_in_flight_per_device)
            .map_err(|_| out_of_range("spec.commands.maxInFlightPerDevice"))?,
        ..CommandsConfig::default()
    })
}

/// The named ports of the configured listeners, in Service order.
fn listener_ports(gateway: &Gateway) -> Vec<(&'static str, i32)> {
    let listeners = &gateway.spec.listeners;
    [
        listeners.mqtt.as_ref().map(|l| ("mqtt", l.port)),
        listeners.mqtt_tls.as_ref().map(|l| ("mqtts", l.port)),
        listeners.http.as_ref().map(|l| ("http", l.port)),
        listeners.http_tls.as_ref().map(|l| ("https", l.port)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The gateway container: the listeners and the health port, config and Secret mounts.
fn gateway_container(
    gateway: &Gateway,
    inputs: &GatewayInputs,
    mounts: Vec<VolumeMount>,
) -> Container {
    let mut container_ports: Vec<ContainerPort> = listener_ports(gateway)
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
    Container {
        name: "gateway".to_owned(),
        image: Some(
            gateway
                .spec
                .image
                .clone()
                .unwrap_or_else(|| inputs.image.clone()),
        ),
        args: Some(vec![
            "--config".to_owned(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        ports: Some(container_ports),
        volume_mounts: Some(mounts),
        readiness_probe: Some(http_probe("/readyz", "health", 2)),
        liveness_probe: Some(http_probe("/healthz", "health", 10)),
        resources: Some(resources(
            &GATEWAY_RESOURCES,
            gateway.spec.resources.as_ref(),
        )),
        ..Container::default()
    }
}

/// The device-facing Service: the listener ports only (health stays inside the pod network).
fn device_service(
    gateway: &Gateway,
    child: &str,
    selector: &BTreeMap<String, String>,
) -> Result<Service, BuildError> {
    Ok(Service {
        metadata: child_meta(gateway, child, COMPONENT)?,
        spec: Some(ServiceSpec {
            type_: Some(gateway.spec.service.type_.as_str().to_owned()),
            external_traffic_policy: gateway
                .spec
                .service
                .external_traffic_policy
                .map(|policy| policy.as_str().to_owned()),
            selector: Some(selector.clone()),
            ports: Some(
                listener_ports(gateway)
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
    })
}

/// At most one gateway pod down at a time during voluntary disruptions.
fn disruption_budget(
    gateway: &Gateway,
    child: &str,
    selector: &BTreeMap<String, String>,
) -> Result<PodDisruptionBudget, BuildError> {
    Ok(PodDisruptionBudget {
        metadata: child_meta(gateway, child, COMPONENT)?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// Builds the Gateway's ConfigMap, Deployment, Service, PodDisruptionBudget and
/// NetworkPolicy.
pub fn build(gateway: &Gateway, inputs: &GatewayInputs) -> Result<GatewayChildren, BuildError> {
    let (name, _) = name_and_namespace(gateway)?;
    let config = render_config(gateway, inputs)?;
    let text = super::render_yaml("gateway", &config)?;
    let child = child_name(&name);
    let mut secrets = referenced_secrets(gateway);
    // Mounted, not hashed into the pod template: device changes never restart the pods.
    secrets.insert(registry_secret_name(&name));
    let (broker, ca) = broker_secret(gateway, inputs)?;
    secrets.insert(broker.name);
    secrets.extend(ca.map(|ca| ca.name));
    let (volumes, mounts) = config_and_secret_volumes(&child, &secrets);
    let container = gateway_container(gateway, inputs, mounts);
    let selector = selector_labels(&name, COMPONENT);
    let service = device_service(gateway, &child, &selector)?;
    let pdb = disruption_budget(gateway, &child, &selector)?;
    let device_ports: Vec<i32> = listener_ports(gateway)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let network_policy = pod_ingress_policy(
        child_meta(gateway, &child, COMPONENT)?,
        &selector,
        &device_ports,
        &[i32::from(HEALTH_PORT)],
    );
    let hash = config_hash(
        &format!("{text}\n# registry key {}", inputs.registry_key_id),
        &inputs.secrets,
    );
    Ok(GatewayChildren {
        config_map: ConfigMap {
            metadata: child_meta(gateway, &child, COMPONENT)?,
            data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), text)])),
            ..ConfigMap::default()
        },
        deployment: deployment(
            child_meta(gateway, &child, COMPONENT)?,
            selector,
            gateway.spec.replicas,
            hash,
            vec![container],
            volumes,
        ),
        service,
        pdb,
        network_policy,
    })
}

#[cfg(test)]
mod tests;
