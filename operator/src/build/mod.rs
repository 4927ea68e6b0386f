//! Pure builders: the desired children of each resource, computed in memory from the spec
//! and the already-dereferenced inputs. No I/O here; every function is unit-tested on
//! YAML fixtures.

use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub mod api;
pub mod device;
pub mod gateway;
pub mod labels;
pub mod monitoring;
pub mod network_policy;
pub mod pod;
pub mod queue;
pub mod sink;
pub mod tenancy;
pub mod worker;

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "tributary-operator";
/// Pod-template annotation carrying the hash of the rendered config and referenced Secrets.
pub const CONFIG_HASH_ANNOTATION: &str = "tributary.dev/config-hash";
/// Label naming the owning Tributary resource on every child.
pub const OWNER_LABEL: &str = "tributary.dev/owner";
/// Label naming the owning resource's kind on every child.
pub const OWNER_KIND_LABEL: &str = "tributary.dev/owner-kind";

/// Why a desired child could not be built. An `Invalid` error is the user's to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    /// The object lacks metadata the API server always sets (name, namespace, uid).
    #[error("object has no {0}")]
    MissingMetadata(&'static str),
    /// The spec cannot be turned into children.
    #[error("{0}")]
    Invalid(String),
    /// A workload's pods would mount a managed broker's administrator credentials (its own
    /// broker user is not set up): never rendered.
    #[error(
        "Secret {0:?} holds a managed broker's administrator credentials, which no workload mounts"
    )]
    AdministratorSecret(String),
}

/// Default RabbitMQ image of managed brokers (`--rabbitmq-image`).
pub const DEFAULT_RABBITMQ_IMAGE: &str = "rabbitmq:3-management";
/// Default gateway image (`--gateway-image`).
pub const DEFAULT_GATEWAY_IMAGE: &str = "tributary/gateway:0.1.0";
/// Default worker runtime image (`--worker-image`).
pub const DEFAULT_WORKER_IMAGE: &str = "tributary/worker:0.1.0";

/// Default application API image (`--api-image`).
pub const DEFAULT_API_IMAGE: &str = "tributary/api:0.1.0";

/// Images and defaults the operator was started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    /// RabbitMQ image for managed brokers.
    pub rabbitmq: String,
    /// Gateway image.
    pub gateway: String,
    /// Worker runtime image.
    pub worker: String,
    /// Application API image.
    pub api: String,
}

impl Default for Images {
    fn default() -> Self {
        Images {
            rabbitmq: DEFAULT_RABBITMQ_IMAGE.to_owned(),
            gateway: DEFAULT_GATEWAY_IMAGE.to_owned(),
            worker: DEFAULT_WORKER_IMAGE.to_owned(),
            api: DEFAULT_API_IMAGE.to_owned(),
        }
    }
}

/// Name and namespace of an object, or a `MissingMetadata` error.
pub fn name_and_namespace<K: Resource>(obj: &K) -> Result<(String, String), BuildError> {
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let namespace = obj
        .meta()
        .namespace
        .clone()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    Ok((name, namespace))
}

/// Labels of every child of `owner` for one component (e.g. `rabbitmq`, `gateway`).
pub fn labels(kind: &str, owner_name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), component.to_owned()),
        (
            "app.kubernetes.io/instance".to_owned(),
            owner_name.to_owned(),
        ),
        (
            "app.kubernetes.io/part-of".to_owned(),
            "tributary".to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            FIELD_MANAGER.to_owned(),
        ),
        (OWNER_LABEL.to_owned(), owner_name.to_owned()),
        (OWNER_KIND_LABEL.to_owned(), kind.to_lowercase()),
    ])
}

/// The labels that select the pods of a component (a stable subset of [`labels`]).
pub fn selector_labels(owner_name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), component.to_owned()),
        (
            "app.kubernetes.io/instance".to_owned(),
            owner_name.to_owned(),
        ),
    ])
}

/// Metadata of a child: name, owner's namespace, labels, and the controller owner
/// reference (so deleting the owner garbage-collects the child).
pub fn child_meta<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: &str,
    component: &str,
) -> Result<ObjectMeta, BuildError> {
    let (owner_name, namespace) = name_and_namespace(owner)?;
    if owner.meta().uid.is_none() {
        return Err(BuildError::MissingMetadata("uid"));
    }
    let owner_ref = owner
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("uid"))?;
    Ok(ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace),
        labels: Some(labels(&K::kind(&()), &owner_name, component)),
        owner_references: Some(vec![owner_ref]),
        ..ObjectMeta::default()
    })
}

/// Pod security context meeting Pod Security "restricted": non-root with a fixed uid/gid,
/// RuntimeDefault seccomp, and `fsGroup` so mounted volumes are writable.
pub fn restricted_pod_security(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// Container security context meeting Pod Security "restricted".
pub fn restricted_container_security(read_only_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(read_only_root),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

/// Hex SHA-256 over labelled parts, in order. Used for pod-template hash annotations, so
/// pods roll when the rendered config or a referenced Secret changes.
pub fn hash_parts<'a>(parts: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut hasher = Sha256::new();
    for (label, bytes) in parts {
        hasher.update((label.len() as u64).to_le_bytes());
        hasher.update(label.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The data of a referenced Secret, as dereferenced by a reconciler: name → key → bytes.
pub type SecretData = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// Hash of the rendered config plus every referenced Secret's content.
pub fn config_hash(config: &str, secrets: &SecretData) -> String {
    let mut parts: Vec<(String, Vec<u8>)> = vec![("config".to_owned(), config.as_bytes().to_vec())];
    for (name, data) in secrets {
        for (key, value) in data {
            parts.push((format!("secret/{name}/{key}"), value.clone()));
        }
    }
    hash_parts(
        parts
            .iter()
            .map(|(label, value)| (label.as_str(), value.as_slice())),
    )
}

/// Renders a config file as plain YAML: through a JSON value first, so enums become
/// one-key maps (`{postgres: {...}}`) instead of YAML tags (`!postgres`), which readers
/// that go through JSON values (the data plane) cannot parse.
pub fn render_yaml<T: serde::Serialize>(what: &str, config: &T) -> Result<String, BuildError> {
    let invalid =
        |error: String| BuildError::Invalid(format!("rendering the {what} config: {error}"));
    let value = serde_json::to_value(config).map_err(|e| invalid(e.to_string()))?;
    serde_yaml::to_string(&value).map_err(|e| invalid(e.to_string()))
}

/// `value` as gzip-compressed JSON (the device tables and rosters the data plane reads);
/// errors name `what` (`device table`, `roster`).
pub fn gzip_json<T: serde::Serialize>(what: &str, value: &T) -> Result<Vec<u8>, BuildError> {
    use std::io::Write;
    let failed = |e: std::io::Error| BuildError::Invalid(format!("compressing the {what}: {e}"));
    let json = serde_json::to_vec(value)
        .map_err(|e| BuildError::Invalid(format!("rendering the {what}: {e}")))?;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&json).map_err(failed)?;
    encoder.finish().map_err(failed)
}

/// Checks that a CEL expression is within the worker's bounds and compiles (the worker
/// checks and compiles it again at start).
pub fn check_cel(what: &str, source: &str) -> Result<(), BuildError> {
    tributary_contract::cel_bounds::check(source)
        .map_err(|error| BuildError::Invalid(format!("{what}: CEL expression refused: {error}")))?;
    cel::Program::compile(source)
        .map(|_| ())
        .map_err(|error| BuildError::Invalid(format!("{what}: invalid CEL {source:?}: {error}")))
}

/// Checks that `name` is a DNS-1035 label of at most `max` characters (Service names).
pub fn check_dns_label(what: &str, name: &str, max: usize) -> Result<(), BuildError> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(BuildError::Invalid(format!(
            "{what} {name:?} must be a lowercase DNS label (a-z, 0-9, '-') of at most {max} \
             characters starting with a letter"
        )))
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Loading of YAML fixtures from `operator/tests/fixtures/`.
    use serde::de::DeserializeOwned;

    /// Parses a fixture and gives it the metadata the API server would have set.
    pub fn load<K: DeserializeOwned + kube::Resource>(file: &str) -> K {
        let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut obj: K = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        let meta = obj.meta_mut();
        meta.namespace.get_or_insert_with(|| "factory".to_owned());
        meta.uid
            .get_or_insert_with(|| "00000000-0000-0000-0000-000000000001".to_owned());
        meta.generation.get_or_insert(1);
        obj
    }
}

#[cfg(test)]
mod snapshots;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_hash_changes_when_a_secret_value_changes() {
        let mut secrets = SecretData::new();
        secrets.insert(
            "creds".into(),
            BTreeMap::from([("passwords".into(), b"a:1".to_vec())]),
        );
        let before = config_hash("x: 1", &secrets);
        assert_eq!(before, config_hash("x: 1", &secrets), "hash is stable");
        secrets.insert(
            "creds".into(),
            BTreeMap::from([("passwords".into(), b"a:2".to_vec())]),
        );
        assert_ne!(before, config_hash("x: 1", &secrets));
        assert_ne!(before, config_hash("x: 2", &SecretData::new()));
    }

    #[test]
    fn dns_label_check_rejects_uppercase_and_long_names() {
        assert!(check_dns_label("queue", "telemetry-1", 40).is_ok());
        assert!(check_dns_label("queue", "Telemetry", 40).is_err());
        assert!(check_dns_label("queue", &"a".repeat(41), 40).is_err());
        assert!(check_dns_label("queue", "1abc", 40).is_err());
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    //! Shared assertions of builder tests.
    use k8s_openapi::api::core::v1::PodSpec;

    /// Asserts the Pod Security "restricted" profile's rules on a pod spec.
    pub fn assert_restricted(pod: &PodSpec) {
        let pod_sc = pod.security_context.as_ref().expect("pod securityContext");
        assert_eq!(pod_sc.run_as_non_root, Some(true));
        assert_eq!(pod_sc.run_as_user.map(|uid| uid > 0), Some(true));
        assert_eq!(
            pod_sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault")
        );
        let containers = pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten());
        for container in containers {
            let sc = container
                .security_context
                .as_ref()
                .expect("container securityContext");
            assert_eq!(
                sc.allow_privilege_escalation,
                Some(false),
                "{}",
                container.name
            );
            assert_ne!(sc.privileged, Some(true), "{}", container.name);
            let drop = sc
                .capabilities
                .as_ref()
                .and_then(|c| c.drop.clone())
                .unwrap_or_default();
            assert_eq!(drop, vec!["ALL".to_owned()], "{}", container.name);
            let add = sc
                .capabilities
                .as_ref()
                .and_then(|c| c.add.clone())
                .unwrap_or_default();
            assert!(add.is_empty(), "{}", container.name);
        }
        for volume in pod.volumes.iter().flatten() {
            assert!(volume.host_path.is_none(), "restricted forbids hostPath");
        }
        assert_ne!(pod.host_network, Some(true));
    }
}
