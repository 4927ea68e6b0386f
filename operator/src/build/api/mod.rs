//! Desired state of an ApplicationApi: validation, the rendered API config
//! (`tributary_contract::api_config`), and its children — ConfigMap, Deployment, Service,
//! NetworkPolicy and the keys Secret ([`keys`]). The Sinks it reads are turned into the
//! config's sources in [`sources`].

pub mod keys;
pub mod roster;
pub mod sources;

use super::network_policy::pod_ingress_policy;
use super::pod::{
    config_and_secret_volumes, deployment, http_probe, resources, validate_resources,
    API_RESOURCES, CONFIG_DIR,
};
use super::queue::access::mountable;
use super::sink::{secret_file, ResolvedTarget};
use super::{
    check_dns_label, child_meta, config_hash, name_and_namespace, selector_labels, BuildError,
    SecretData,
};
use crate::crd::{ApplicationApi, Sink};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, Secret, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use tributary_contract::api_config::{ApiConfig, ApiLimits, CommandsTarget, LiveSource, RateLimit};
use tributary_contract::command;

/// Key of the rendered config inside the ConfigMap.
pub const CONFIG_KEY: &str = "api.yaml";
/// Port of the API (and of its `/healthz`, `/readyz`, `/metrics`).
pub const PORT: i32 = 8080;
/// Path of the dashboard page.
pub const DASHBOARD_PATH: &str = "/dashboard";
/// `app.kubernetes.io/name` of the API's children.
pub const COMPONENT: &str = "api";
/// Prefix of a namespace's live exchange, `tributary.live.<namespace>`.
pub const LIVE_EXCHANGE_PREFIX: &str = "tributary.live.";
/// Type of the live exchange (the API binds with `#`).
pub const LIVE_EXCHANGE_TYPE: &str = "topic";

/// The live exchange of `namespace`'s processed messages.
pub fn live_exchange(namespace: &str) -> String {
    format!("{LIVE_EXCHANGE_PREFIX}{namespace}")
}

/// Name of the API's Deployment, Service, ConfigMap and NetworkPolicy.
pub fn child_name(api: &str) -> String {
    format!("{api}-api")
}

/// The in-cluster address of the API Service.
pub fn endpoint(api: &str, namespace: &str) -> String {
    format!("{}.{namespace}.svc:{PORT}", child_name(api))
}

/// The Sinks an ApplicationApi reads (history, then latest values).
pub fn sinks_of(api: &ApplicationApi) -> Vec<&str> {
    std::iter::once(api.spec.history.sink.as_str())
        .chain(api.spec.latest.as_ref().map(|l| l.sink.as_str()))
        .collect()
}

/// Everything the children depend on besides the spec.
#[derive(Clone, Debug)]
pub struct ApiInputs {
    /// The PostgreSQL Sink of `spec.history`.
    pub history: Sink,
    /// The Redis Sink of `spec.latest`.
    pub latest: Option<Sink>,
    /// The broker of `spec.live`'s Queue (the API's own user on a managed one).
    pub live: Option<ResolvedTarget>,
    /// The broker of `spec.commands`' Gateway's Queues.
    pub commands: Option<ResolvedTarget>,
    /// The issued keys (only their hashes reach the config).
    pub keys: keys::IssuedKeys,
    /// Content of every mounted Secret (for the pod-template hash only).
    pub secrets: SecretData,
    /// Default API image.
    pub image: String,
}

/// The ApplicationApi's children.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiChildren {
    /// The rendered config.
    pub config_map: ConfigMap,
    /// The API pods.
    pub deployment: Deployment,
    /// Port 8080 (`http`) in front of them.
    pub service: Service,
    /// Port 8080 from anywhere, nothing else.
    pub network_policy: NetworkPolicy,
    /// The generated keys.
    pub keys_secret: Secret,
}

/// Validates an ApplicationApi's spec without looking at other resources.
pub fn validate(api: &ApplicationApi) -> Result<(), BuildError> {
    let (name, _) = name_and_namespace(api)?;
    // `<name>-api-keys` and the Service `<name>-api` must be valid names.
    check_dns_label("metadata.name", &name, 63 - "-api-keys".len())?;
    let spec = &api.spec;
    validate_resources("spec.resources", spec.resources.as_ref())?;
    keys::validate(&spec.api_keys)?;
    if let Some(limit) = &spec.rate_limit {
        keys::rate_limit("spec.rateLimit", limit)?;
    }
    limits(api)?;
    if spec
        .cors_allowed_origins
        .iter()
        .any(|o| o.trim().is_empty())
    {
        return Err(BuildError::Invalid(
            "spec.corsAllowedOrigins: an origin is empty".into(),
        ));
    }
    let commands_allowed = spec.api_keys.iter().any(|k| k.commands);
    if commands_allowed && spec.commands.is_none() {
        return Err(BuildError::Invalid(
            "spec.apiKeys: a key has commands: true but spec.commands names no Gateway".into(),
        ));
    }
    Ok(())
}

/// A contract type from the given fields, every other field at the data plane's own
/// documented default (the contract's serde defaults).
pub(crate) fn with_defaults<T: DeserializeOwned>(
    what: &str,
    value: serde_json::Value,
) -> Result<T, BuildError> {
    serde_json::from_value(value)
        .map_err(|error| BuildError::Invalid(format!("rendering the API's {what}: {error}")))
}

/// The API's limits: its defaults with the spec's values.
fn limits(api: &ApplicationApi) -> Result<ApiLimits, BuildError> {
    let mut limits = ApiLimits::default();
    let Some(spec) = &api.spec.limits else {
        return Ok(limits);
    };
    let positive = |field: &str, value: i64| {
        u32::try_from(value)
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| BuildError::Invalid(format!("spec.limits.{field} is out of range")))
    };
    if let Some(value) = spec.max_request_bytes {
        limits.max_request_bytes = positive("maxRequestBytes", value)? as usize;
    }
    if let Some(value) = spec.request_timeout_ms {
        limits.request_timeout_ms = u64::from(positive("requestTimeoutMs", value)?);
    }
    if let Some(value) = spec.max_page_size {
        limits.max_page_size = positive("maxPageSize", value)?;
        limits.default_page_size = limits.default_page_size.min(limits.max_page_size);
    }
    if let Some(value) = spec.max_connections {
        limits.max_connections = positive("maxConnections", value)? as usize;
    }
    Ok(limits)
}

/// The `live` source: the API's own queue bound to the namespace's live exchange.
fn live_source(target: &ResolvedTarget, namespace: &str) -> Result<LiveSource, BuildError> {
    if target.ca.is_some() {
        return Err(BuildError::Invalid(
            "spec.live.queue: its broker trusts a private CA, which the API's live feed cannot \
             use yet"
                .into(),
        ));
    }
    let uri = mountable(&target.uri, target.credentials)?;
    with_defaults(
        "live source",
        json!({
            "uriFile": secret_file(&uri.name, &uri.key),
            "exchange": live_exchange(namespace),
            "exchangeType": LIVE_EXCHANGE_TYPE,
            "backlogQueue": target.broker_queue,
        }),
    )
}

/// The `commands` target: the broker of the Gateway's Queues.
fn commands_target(target: &ResolvedTarget) -> Result<CommandsTarget, BuildError> {
    let uri = mountable(&target.uri, target.credentials)?;
    let mut commands: CommandsTarget = with_defaults(
        "commands target",
        json!({ "uriFile": secret_file(&uri.name, &uri.key) }),
    )?;
    commands.ca_file = target.ca.as_ref().map(|ca| secret_file(&ca.name, &ca.key));
    Ok(commands)
}

/// Renders the API config file.
pub fn render_config(api: &ApplicationApi, inputs: &ApiInputs) -> Result<ApiConfig, BuildError> {
    validate(api)?;
    let (_, namespace) = name_and_namespace(api)?;
    let unusable = |error: sources::Unusable| BuildError::Invalid(error.0);
    let postgres =
        sources::postgres_source(&api.spec.history, &inputs.history)?.map_err(unusable)?;
    let redis = match &inputs.latest {
        Some(sink) => Some(sources::redis_source(sink)?.map_err(unusable)?),
        None => None,
    };
    let mut config: ApiConfig = with_defaults(
        "config",
        json!({ "listen": format!("0.0.0.0:{PORT}"), "postgres": postgres }),
    )?;
    config.redis = redis;
    config.live = inputs
        .live
        .as_ref()
        .map(|live| live_source(live, &namespace))
        .transpose()?;
    config.commands = inputs.commands.as_ref().map(commands_target).transpose()?;
    config.tenant = namespace;
    config.api_keys = keys::config_keys(&api.spec.api_keys, &inputs.keys)?;
    config.rate_limit = match &api.spec.rate_limit {
        Some(limit) => keys::rate_limit("spec.rateLimit", limit)?,
        None => RateLimit::default(),
    };
    config.cors_allowed_origins = api.spec.cors_allowed_origins.clone();
    config.limits = limits(api)?;
    config.device_roster_file = Some(roster::roster_path().into());
    Ok(config)
}

/// Every Secret (by name) the API pods mount: the Sinks' URLs and the brokers' URIs and CAs
/// (never the keys Secret, nor a managed broker's administrator Secret).
pub fn mounted_secrets(inputs: &ApiInputs) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let sinks = std::iter::once(&inputs.history).chain(inputs.latest.as_ref());
    for sink in sinks {
        let url = sink
            .spec
            .postgres
            .as_ref()
            .map(|p| &p.url_secret_ref)
            .or(sink.spec.redis.as_ref().map(|r| &r.url_secret_ref));
        names.extend(url.map(|u| u.name.clone()));
    }
    for target in inputs.live.iter().chain(&inputs.commands) {
        if let Ok(uri) = mountable(&target.uri, target.credentials) {
            names.insert(uri.name.clone());
        }
        names.extend(target.ca.iter().map(|ca| ca.name.clone()));
    }
    names
}

/// The roster ConfigMap's volume: optional (the pods start before the first roster is
/// written) and outside the pod-template hash (the kubelet refreshes it in place).
fn roster_volume(api: &str) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: "devices".to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: roster::config_map_name(api),
            optional: Some(true),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: "devices".to_owned(),
        mount_path: roster::ROSTER_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    (volume, mount)
}

/// The API container.
fn container(api: &ApplicationApi, image: &str, mounts: Vec<VolumeMount>) -> Container {
    Container {
        name: "api".to_owned(),
        image: Some(api.spec.image.clone().unwrap_or_else(|| image.to_owned())),
        args: Some(vec![
            "--config".to_owned(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: PORT,
            ..ContainerPort::default()
        }]),
        volume_mounts: Some(mounts),
        readiness_probe: Some(http_probe("/readyz", "http", 2)),
        liveness_probe: Some(http_probe("/healthz", "http", 10)),
        resources: Some(resources(&API_RESOURCES, api.spec.resources.as_ref())),
        ..Container::default()
    }
}

/// The Service: port 8080 named `http`.
fn service(
    api: &ApplicationApi,
    child: &str,
    selector: &BTreeMap<String, String>,
) -> Result<Service, BuildError> {
    Ok(Service {
        metadata: child_meta(api, child, COMPONENT)?,
        spec: Some(ServiceSpec {
            type_: Some(api.spec.service.type_.as_str().to_owned()),
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: PORT,
                target_port: Some(IntOrString::String("http".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// Builds the ApplicationApi's children.
pub fn build(api: &ApplicationApi, inputs: &ApiInputs) -> Result<ApiChildren, BuildError> {
    let (name, _) = name_and_namespace(api)?;
    let config = render_config(api, inputs)?;
    let text = super::render_yaml("API", &config)?;
    let child = child_name(&name);
    let (mut volumes, mut mounts) = config_and_secret_volumes(&child, &mounted_secrets(inputs));
    let (volume, mount) = roster_volume(&name);
    volumes.push(volume);
    mounts.push(mount);
    let pods = selector_labels(&name, COMPONENT);
    // Applications and browsers call the API from anywhere; its health and metrics share
    // the port (the API serves one listener).
    let network_policy =
        pod_ingress_policy(child_meta(api, &child, COMPONENT)?, &pods, &[PORT], &[]);
    let deployment = deployment(
        child_meta(api, &child, COMPONENT)?,
        pods.clone(),
        api.spec.replicas,
        config_hash(&text, &inputs.secrets),
        vec![container(api, &inputs.image, mounts)],
        volumes,
    );
    Ok(ApiChildren {
        config_map: ConfigMap {
            metadata: child_meta(api, &child, COMPONENT)?,
            data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), text)])),
            ..ConfigMap::default()
        },
        deployment,
        service: service(api, &child, &pods)?,
        network_policy,
        keys_secret: keys::secret(api, &keys::secret_name(&name), &inputs.keys)?,
    })
}

/// The command exchange the API publishes to for `namespace`.
pub fn command_exchange(namespace: &str) -> String {
    command::exchange(namespace)
}

#[cfg(test)]
pub(crate) mod tests;
