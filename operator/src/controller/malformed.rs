//! One malformed object must not stall the watcher of its kind. The controllers watch
//! `DeserializeGuard<K>`: an object the operator cannot read (a spec its types refuse)
//! arrives as an `InvalidObject`, its metadata and the error, instead of failing the list or
//! watch of every object of the kind. It is logged, counted
//! (`tributary_operator_reconcile_errors_total{error="malformed"}`) and reported on its
//! `Ready` condition, with an Event; the others reconcile as usual.

use super::{ready_condition, Context, Error};
use crate::conditions::{self, reason, Desired};
use crate::crd::Condition;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::error_boundary::InvalidObject;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Api, Resource};
use std::future::Future;
use std::sync::Arc;

/// The field manager of the `Ready` condition of a malformed object. Not the operator's
/// own: a server-side apply of the condition alone under that manager would drop the other
/// status fields it owns; the operator's next apply, once the object is fixed, takes the
/// condition back.
pub const FIELD_MANAGER: &str = "tributary-operator-malformed";

/// The reconcile entry of a watched kind: `reconcile` for an object that deserialized,
/// the malformed-object report for one that did not.
pub async fn guarded<K, Fut>(
    object: Arc<DeserializeGuard<K>>,
    ctx: Arc<Context>,
    reconcile: impl FnOnce(Arc<K>, Arc<Context>) -> Fut,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone,
    Fut: Future<Output = Result<Action, Error>>,
{
    match &object.0 {
        Ok(valid) => reconcile(Arc::new(valid.clone()), ctx).await,
        Err(invalid) => report(&ctx, object.as_ref(), invalid).await,
    }
}

/// Logs and counts a malformed object, and sets its `Ready` condition to `InvalidSpec`
/// (with an Event) unless it says so already; then waits for the object to change.
async fn report<K>(
    ctx: &Context,
    object: &DeserializeGuard<K>,
    invalid: &InvalidObject,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    let kind = K::kind(&());
    let meta = object.meta();
    let name = meta.name.clone().unwrap_or_default();
    let namespace = meta.namespace.clone().unwrap_or_default();
    ctx.metrics.error(&kind, "malformed");
    tracing::warn!(%kind, %name, %namespace, error = %invalid.error, "cannot read the object; it is not reconciled until it changes");
    // The watched copy holds only metadata: read the stored conditions from the raw object.
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &namespace, &resource);
    let Some(stored) = api.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    let existing = stored_conditions(&stored);
    let desired = Desired::ready(
        false,
        reason::INVALID_SPEC,
        format!("the operator cannot read this {kind}: {}", invalid.error),
    );
    let merged = ready_condition(ctx, object, &existing, &desired).await;
    let ready = conditions::ready(&merged);
    if ready.is_none() || ready == conditions::ready(&existing) {
        return Ok(Action::await_change());
    }
    let patch = serde_json::json!({
        "apiVersion": resource.api_version,
        "kind": kind,
        "status": { "conditions": [ready], "observedGeneration": meta.generation },
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&name, &params, &Patch::Apply(&patch))
        .await?;
    Ok(Action::await_change())
}

/// The conditions in a raw object's status (none when absent or unreadable).
fn stored_conditions(object: &DynamicObject) -> Vec<Condition> {
    object
        .data
        .pointer("/status/conditions")
        .and_then(|value| serde_json::from_value(value.clone()).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
