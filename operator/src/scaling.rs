//! What the Worker controller and the autoscaler share about a Worker: who owns the worker
//! Deployment's `spec.replicas` (the autoscaler's field manager, once it took the field
//! over), how that field is written, and the condition the autoscaler sets beside the
//! controller's `Ready`. Both depend on this module; neither on the other.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

/// Field manager of the replica counts the autoscaler writes.
pub const FIELD_MANAGER: &str = "tributary-autoscaler";

/// Condition type the autoscaler sets on a Worker: whether every sink (and the custom
/// container) is available as its pods see it. The Worker controller leaves it alone.
pub const SINKS_AVAILABLE: &str = "SinksAvailable";

/// Whether `manager` owns `spec.replicas` of `deployment` (from its managed fields).
pub fn owns_replicas(deployment: &Deployment, manager: &str) -> bool {
    deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| entry.manager.as_deref() == Some(manager))
        .filter_map(|entry| entry.fields_v1.as_ref())
        .any(|fields| fields.0["f:spec"].get("f:replicas").is_some())
}

/// Writes `spec.replicas` of a Deployment under the autoscaler's field manager.
pub async fn set_replicas(
    client: &Client,
    namespace: &str,
    name: &str,
    replicas: i32,
) -> Result<(), kube::Error> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": namespace },
        "spec": { "replicas": replicas },
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(name, &params, &Patch::Apply(&patch)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    fn managed(manager: &str, fields: serde_json::Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.to_owned()),
            operation: Some("Apply".to_owned()),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        }
    }

    #[test]
    fn replicas_ownership_is_read_from_managed_fields() {
        let mut deployment = Deployment::default();
        assert!(!owns_replicas(&deployment, FIELD_MANAGER));
        deployment.metadata.managed_fields = Some(vec![
            managed(
                "tributary-operator",
                serde_json::json!({"f:spec": {"f:replicas": {}, "f:template": {}}}),
            ),
            managed(FIELD_MANAGER, serde_json::json!({"f:metadata": {}})),
        ]);
        assert!(!owns_replicas(&deployment, FIELD_MANAGER));
        deployment
            .metadata
            .managed_fields
            .get_or_insert_with(Vec::new)
            .push(managed(
                FIELD_MANAGER,
                serde_json::json!({"f:spec": {"f:replicas": {}}}),
            ));
        assert!(owns_replicas(&deployment, FIELD_MANAGER));
    }
}
