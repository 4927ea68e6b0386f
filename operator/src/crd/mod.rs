//! Custom resource types of `tributary.dev/v1alpha1`: [`Queue`], [`Gateway`], [`Worker`],
//! [`Sink`], [`Device`] and [`ApplicationApi`], plus the pieces they share (conditions, Secret references).
//!
//! The CRD YAML in `crds/` is generated from these types (`tributary-operator crds`, or
//! `hack/gen-crds.sh`); a unit test fails when the committed files are stale.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

// `printcolumn(...)` repeats `type_ = ...` by design; clippy mistakes that for duplicates.
#[allow(clippy::duplicated_attributes)]
pub mod application_api;
#[allow(clippy::duplicated_attributes)]
pub mod device;
#[allow(clippy::duplicated_attributes)]
pub mod gateway;
#[allow(clippy::duplicated_attributes)]
pub mod queue;
#[allow(clippy::duplicated_attributes)]
pub mod sink;
#[allow(clippy::duplicated_attributes)]
pub mod worker;

pub use application_api::{ApplicationApi, ApplicationApiSpec, ApplicationApiStatus};
pub use device::{Device, DeviceSpec, DeviceStatus};
pub use gateway::{Gateway, GatewaySpec, GatewayStatus};
pub use queue::{Queue, QueueSpec, QueueStatus};
pub use sink::{Sink, SinkSpec, SinkStatus};
pub use worker::{Scaling, ScalingStatus, Worker, WorkerSpec, WorkerStatus};

/// The API group of every Tributary resource.
pub const GROUP: &str = "tributary.dev";
/// The API version of every Tributary resource.
pub const VERSION: &str = "v1alpha1";

/// One status condition, shaped like `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Status of the condition: `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason for the last transition, in CamelCase.
    pub reason: String,
    /// Human-readable details about the last transition.
    pub message: String,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
}

/// A reference to one key of a Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as the resource.
    pub name: String,
    /// Key inside the Secret.
    pub key: String,
}

/// CPU and memory for a container, as Kubernetes quantities (`cpu: 250m`, `memory: 256Mi`).
/// Each key given replaces the operator's default for that key; the others keep theirs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeResources {
    /// Requested amounts (`cpu`, `memory`, `ephemeral-storage`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    /// Limits (`cpu`, `memory`, `ephemeral-storage`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

/// A reference to a whole Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret, in the same namespace as the resource.
    pub name: String,
}

/// Every CRD of the operator, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    [
        Queue::crd(),
        Gateway::crd(),
        Worker::crd(),
        Sink::crd(),
        Device::crd(),
        ApplicationApi::crd(),
    ]
    .into_iter()
    .map(without_nullable)
    .collect()
}

/// Drops `nullable: true` from the spec schemas. Kubernetes 1.20 publishes nullable fields
/// without a type, so `kubectl explain` shows `<>`; absent optional spec fields are omitted,
/// never `null`. The status keeps it: 1.20's server-side apply writes `null` for a status
/// field the operator stops sending.
fn without_nullable(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("nullable");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    for version in &mut crd.spec.versions {
        let Some(schema) = version.schema.as_mut() else {
            continue;
        };
        let Some(Ok(mut value)) = schema.open_api_v3_schema.as_ref().map(serde_json::to_value)
        else {
            continue;
        };
        if let Some(spec) = value.pointer_mut("/properties/spec") {
            strip(spec);
        }
        if let Ok(stripped) = serde_json::from_value(value) {
            schema.open_api_v3_schema = Some(stripped);
        }
    }
    crd
}

/// File name (inside `crds/`) of a CRD: `<plural>.<group>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// Renders one CRD as YAML, the way it is committed in `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(crd)
}

/// All CRDs as one multi-document YAML stream.
pub fn all_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn crds_dirs() -> [PathBuf; 2] {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        [root.join("../crds"), root.join("../charts/tributary/crds")]
    }

    #[test]
    fn committed_crds_match_the_rust_types() {
        let mut stale = Vec::new();
        for crd in all() {
            let name = file_name(&crd);
            let want = to_yaml(&crd).expect("CRD renders as YAML");
            for dir in crds_dirs() {
                let path = dir.join(&name);
                if std::fs::read_to_string(&path).unwrap_or_default() != want {
                    stale.push(path.display().to_string());
                }
            }
        }
        assert!(
            stale.is_empty(),
            "crds/ is stale for {stale:?}: run hack/gen-crds.sh and commit the result"
        );
    }

    #[test]
    fn crds_use_only_features_kubernetes_1_20_serves() {
        let yaml = all_yaml().expect("CRDs render");
        for newer in ["x-kubernetes-validations", "selectableFields"] {
            assert!(
                !yaml.contains(newer),
                "CRDs must not use {newer} (needs > 1.20)"
            );
        }
        for crd in all() {
            let version = &crd.spec.versions[0];
            assert!(version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some());
            assert!(!version
                .additional_printer_columns
                .clone()
                .unwrap_or_default()
                .is_empty());
            assert!(!crd
                .spec
                .names
                .short_names
                .clone()
                .unwrap_or_default()
                .is_empty());
            assert_eq!(crd.spec.scope, "Namespaced");
        }
    }

    #[test]
    fn only_worker_has_the_scale_subresource() {
        for crd in all() {
            let scale = crd.spec.versions[0]
                .subresources
                .as_ref()
                .and_then(|s| s.scale.as_ref());
            assert_eq!(
                scale.is_some(),
                crd.spec.names.kind == "Worker",
                "{}",
                crd.spec.names.kind
            );
        }
    }
}
