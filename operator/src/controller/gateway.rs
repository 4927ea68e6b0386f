//! Gateway controller: dereferences the routed Queues and the device-credential Secrets,
//! renders the gateway config, and applies the ConfigMap, Deployment, Service and
//! PodDisruptionBudget.

use super::applied::{apply_child, apply_kept, apply_pdb};
use super::{
    being_deleted, broker_user, checked, patch_status, ready_condition, resolve_queue,
    resolve_secrets, Context, Error, Outcome, Step,
};
use crate::build::gateway::{self as build, GatewayChildren, GatewayInputs};
use crate::build::queue::access::{self, BrokerCredentials};
use crate::crd::{Gateway, GatewayStatus};
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::controller::Action;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::Instrument;

/// One reconcile of a Gateway.
pub async fn reconcile(gateway: Arc<Gateway>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile("Gateway");
    if being_deleted(&gateway.metadata) {
        // Children go with it through garbage collection; its broker users are removed.
        ctx.registry
            .withdraw(&(gateway.namespace().unwrap_or_default(), gateway.name_any()));
        return broker_user::finalize(&ctx, gateway.as_ref()).await;
    }
    let span = tracing::info_span!("reconcile", kind = "Gateway", name = %gateway.name_any(), namespace = ?gateway.namespace());
    let current = gateway.status.clone().unwrap_or_default();
    // `connectedDevices` and `deviceTable` belong to the device collector: never written
    // (nor compared) here.
    let mut status = GatewayStatus {
        ready_replicas: current.ready_replicas,
        ..GatewayStatus::default()
    };
    let comparable = GatewayStatus {
        connected_devices: None,
        device_table: None,
        ..current.clone()
    };
    let outcome = steps(&gateway, &ctx, &mut status).instrument(span).await?;
    status.conditions =
        ready_condition(&ctx, gateway.as_ref(), &current.conditions, &outcome.ready).await;
    status.observed_generation = gateway.metadata.generation;
    let written = gateway.status.as_ref().map(|_| &comparable);
    patch_status(&ctx.client, gateway.as_ref(), written, &status).await?;
    Ok(ctx.retries.pace(&ctx.metrics, gateway.as_ref(), &outcome))
}

/// The steps of a Gateway not being deleted: validate → dereference → build → apply → status. A step
/// that cannot go on ends the reconcile with its outcome (a condition) instead.
async fn steps(
    gateway: &Gateway,
    ctx: &Context,
    status: &mut GatewayStatus,
) -> Result<Outcome, Error> {
    let admitted = build::validate(gateway).and_then(|()| ctx.tenancy.admits_gateway(gateway));
    if let Err(outcome) = checked(admitted)? {
        return Ok(outcome);
    }
    let inputs = match dereference(ctx, gateway).await? {
        Ok(inputs) => inputs,
        Err(outcome) => return Ok(outcome),
    };
    let children = match checked(build::build(gateway, &inputs))? {
        Ok(children) => children,
        Err(outcome) => return Ok(outcome),
    };
    // Before the Deployment: its pods mount the registry Secret.
    let devices = super::gateway_registry::publish(ctx, gateway).await?;
    let deployment = apply_children(ctx, &children).await?;
    super::monitoring::ensure_for_gateway(ctx, gateway).await;
    let mut outcome = report(gateway, &deployment, status);
    if outcome.ready.ok {
        outcome.ready.message = format!("{}; {}", outcome.ready.message, devices.describe());
    }
    Ok(outcome)
}

/// Dereferences the Queues the routes name (each once), the gateway's own user on each
/// managed broker (ensured there: it may only publish), and every Secret the gateway
/// mounts: its own and the Queues' connection Secrets (its user's on a managed broker).
async fn dereference(ctx: &Context, gateway: &Gateway) -> Step<GatewayInputs> {
    let client = &ctx.client;
    let reads = &*ctx.reads;
    let namespace = gateway.namespace().unwrap_or_default();
    let mut queues = BTreeMap::new();
    for route in &gateway.spec.routes {
        if queues.contains_key(&route.queue) {
            continue;
        }
        match resolve_queue(reads, &namespace, &route.queue).await? {
            Ok(queue) => {
                queues.insert(route.queue.clone(), queue);
            }
            Err(outcome) => return Ok(Err(outcome)),
        }
    }
    let grants: broker_user::Grants = queues
        .iter()
        .filter(|(_, q)| q.credentials == BrokerCredentials::Administrator)
        .map(|(name, _)| {
            let commands = gateway.spec.commands.enabled;
            (
                name.clone(),
                access::gateway_permissions(&namespace, commands),
            )
        })
        .collect();
    let users = match broker_user::ensure(ctx, gateway, &grants).await? {
        Ok(users) => users,
        Err(outcome) => return Ok(Err(outcome)),
    };
    for (name, queue) in &mut queues {
        broker_user::substitute(&mut queue.uri, &mut queue.credentials, users.get(name));
    }
    let mut names = build::referenced_secrets(gateway);
    names.extend(
        queues
            .values()
            .filter_map(|q| access::mountable(&q.uri, q.credentials).ok())
            .map(|uri| uri.name.clone()),
    );
    names.extend(
        queues
            .values()
            .filter_map(|q| q.ca.as_ref())
            .map(|ca| ca.name.clone()),
    );
    let secrets = match resolve_secrets(reads, &namespace, names).await? {
        Ok(secrets) => secrets,
        Err(outcome) => return Ok(Err(outcome)),
    };
    let keys = ctx.registry.keys.get(client, &namespace).await?;
    Ok(Ok(GatewayInputs {
        queues,
        secrets,
        image: ctx.images.gateway.clone(),
        registry_key_id: keys.key_id(),
    }))
}

/// Applies the children; the Deployment last (its pods mount the ConfigMap), as applied.
async fn apply_children(ctx: &Context, children: &GatewayChildren) -> Result<Deployment, Error> {
    apply_child(ctx, &children.config_map).await?;
    apply_child(ctx, &children.service).await?;
    apply_pdb(ctx, &children.pdb).await?;
    apply_child(ctx, &children.network_policy).await?;
    apply_kept(ctx, &children.deployment).await
}

/// The status from the applied Deployment: endpoint, ready pods, and whether it is Ready.
fn report(gateway: &Gateway, deployment: &Deployment, status: &mut GatewayStatus) -> Outcome {
    let namespace = gateway.namespace().unwrap_or_default();
    let child = build::child_name(&gateway.name_any());
    status.endpoint = Some(format!("{child}.{namespace}.svc"));
    let (ready, outcome) =
        super::deployment_readiness(deployment, gateway.spec.replicas, "gateway");
    status.ready_replicas = Some(ready);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::load;
    use crate::conditions::reason;
    use crate::controller::mock_api::{
        context, deleted, events, mocked, path, ready_queue, secret, tributary, Exchange,
    };
    use crate::controller::RESYNC;
    use serde_json::{json, Value};

    fn gateway() -> Gateway {
        load("gateway.yaml")
    }

    fn object(gateway: &Gateway) -> Value {
        serde_json::to_value(gateway).expect("serializes")
    }

    /// The Event and the status write that end every reconcile, for a first `Ready`
    /// condition with `reason`.
    fn reported(gateway: &Gateway, reason: &str) -> Vec<Exchange> {
        vec![
            Exchange::post(&events("factory")).with("/reason", json!(reason)),
            Exchange::apply(&tributary("gateways", "line-1/status"))
                .with("/status/conditions/0/type", json!("Ready"))
                .with("/status/conditions/0/reason", json!(reason))
                .with("/status/observedGeneration", json!(1))
                .reply(object(gateway)),
        ]
    }

    fn child(group_version: &str, plural: &str) -> String {
        path(group_version, "factory", plural, "line-1-gateway")
    }

    #[tokio::test]
    async fn a_valid_gateway_applies_its_children_and_reports_ready_pods() {
        let gateway = gateway();
        let (client, server) = mocked();
        let mut scenario = vec![
            Exchange::get(&tributary("queues", "telemetry")).reply(ready_queue("telemetry")),
            Exchange::get(&path("v1", "factory", "secrets", "devices")).reply(secret(
                "devices",
                "passwords",
                "d1:$argon2id$x",
            )),
            Exchange::get(&path("v1", "factory", "secrets", "jwt-keys"))
                .reply(secret("jwt-keys", "a.pem", "-----")),
            Exchange::get(&path("v1", "factory", "secrets", "telemetry-uri")).reply(secret(
                "telemetry-uri",
                "uri",
                "amqp://broker",
            )),
            // The namespace's registry keys are made once...
            Exchange::get(&path(
                "v1",
                "factory",
                "secrets",
                "tributary-device-registry",
            ))
            .not_found(),
            Exchange::post("/api/v1/namespaces/factory/secrets")
                .with("/metadata/name", json!("tributary-device-registry")),
            // ...and the Gateway's (empty) device table stored for its pods.
            Exchange::get(&path("v1", "factory", "secrets", "line-1-gateway-registry")).not_found(),
            Exchange::apply(&path("v1", "factory", "secrets", "line-1-gateway-registry"))
                .with("/metadata/ownerReferences/0/kind", json!("Gateway"))
                .with("/type", json!("Opaque")),
            Exchange::apply(&child("v1", "configmaps")).with("/kind", json!("ConfigMap")),
            Exchange::apply(&child("v1", "services")).with("/spec/type", json!("NodePort")),
            Exchange::apply(&child("policy/v1", "poddisruptionbudgets"))
                .with("/apiVersion", json!("policy/v1")),
            Exchange::apply(&child("networking.k8s.io/v1", "networkpolicies"))
                .with("/spec/policyTypes", json!(["Ingress"])),
            Exchange::apply(&child("apps/v1", "deployments"))
                .with("/spec/replicas", json!(2))
                .reply(json!({ "status": { "readyReplicas": 2 } })),
        ];
        scenario.extend(reported(&gateway, reason::RECONCILED));
        let scenario = server.run(scenario);
        let action = reconcile(Arc::new(gateway), context(client)).await;
        assert_eq!(action.expect("reconciles"), Action::requeue(RESYNC));
        let bodies = scenario.done().await;
        let registry = bodies
            .iter()
            .find(|b| b["metadata"]["name"] == "line-1-gateway-registry")
            .expect("registry Secret applied");
        for key in [
            "devices.json.gz",
            "verifier-key",
            "sync-token",
            "device-ca.crt",
        ] {
            assert!(registry["data"][key].is_string(), "{key} in {registry}");
        }
        let status = &bodies.last().expect("status written")["status"];
        assert_eq!(status["readyReplicas"], 2);
        assert!(status["conditions"][0]["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("0 devices in its table")));
        assert_eq!(status["endpoint"], "line-1-gateway.factory.svc");
        assert_eq!(status["conditions"][0]["status"], "True");
    }

    #[tokio::test]
    async fn a_missing_queue_is_reported_and_nothing_is_applied() {
        let gateway = gateway();
        let (client, server) = mocked();
        let mut scenario = vec![Exchange::get(&tributary("queues", "telemetry")).not_found()];
        scenario.extend(reported(&gateway, reason::WAITING_FOR_QUEUE));
        let scenario = server.run(scenario);
        let action = reconcile(Arc::new(gateway), context(client)).await;
        assert_eq!(action.expect("reconciles"), Action::requeue(RESYNC));
        let bodies = scenario.done().await;
        let condition = &bodies.last().expect("status written")["status"]["conditions"][0];
        assert_eq!(condition["status"], "False");
        assert_eq!(condition["message"], "Queue \"telemetry\" does not exist");
    }

    #[tokio::test]
    async fn an_invalid_gateway_waits_for_a_new_spec_without_dereferencing() {
        let mut gateway = gateway();
        gateway.spec.routes.clear();
        let (client, server) = mocked();
        let scenario = server.run(reported(&gateway, reason::INVALID_SPEC));
        let action = reconcile(Arc::new(gateway), context(client)).await;
        assert_eq!(action.expect("reconciles"), Action::await_change());
        let bodies = scenario.done().await;
        let condition = &bodies.last().expect("status written")["status"]["conditions"][0];
        assert_eq!(
            condition["message"],
            "spec.routes must name at least one Queue"
        );
    }

    /// A Ready Queue `telemetry` on a managed broker: its connection Secret is the broker's
    /// administrator's.
    fn managed_queue() -> Value {
        let mut queue = ready_queue("telemetry");
        queue["status"]["brokerMode"] = json!("managed");
        queue["status"]["connectionSecretRef"]["name"] = json!("telemetry-rabbitmq-credentials");
        queue
    }

    #[tokio::test]
    async fn a_gateway_on_a_managed_broker_waits_for_its_own_broker_user_and_mounts_nothing() {
        let gateway = gateway();
        let (client, server) = mocked();
        let mut scenario = vec![
            Exchange::get(&tributary("queues", "telemetry")).reply(managed_queue()),
            // The finalizer comes before the user, so a deletion always removes it.
            Exchange::merge(&tributary("gateways", "line-1"))
                .with("/metadata/finalizers", json!([broker_user::FINALIZER]))
                .reply(object(&gateway)),
            Exchange::get(&path("v1", "factory", "services", "telemetry-rabbitmq"))
                .reply(json!({ "spec": {} })),
        ];
        scenario.extend(reported(&gateway, reason::BROKER_UNAVAILABLE));
        let scenario = server.run(scenario);
        let action = reconcile(Arc::new(gateway), context(client)).await;
        assert_eq!(
            action.expect("reconciles"),
            Action::requeue(crate::controller::RETRY)
        );
        let bodies = scenario.done().await;
        let condition = &bodies.last().expect("status written")["status"]["conditions"][0];
        assert_eq!(
            condition["message"],
            "the managed broker of Queue \"telemetry\" has no address yet"
        );
    }

    #[tokio::test]
    async fn a_deleted_gateway_whose_broker_is_gone_is_released_with_an_event() {
        let mut gateway = deleted(&gateway());
        gateway.metadata.finalizers = Some(vec![broker_user::FINALIZER.to_owned()]);
        let user_secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "line-1-gateway-amqp-telemetry",
                "namespace": "factory",
                "annotations": { "tributary.dev/broker-queue": "telemetry" },
            },
        });
        let (client, server) = mocked();
        let scenario = server.run(vec![
            Exchange::get("/api/v1/namespaces/factory").reply(json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "factory" },
            })),
            Exchange::get("/api/v1/namespaces/factory/secrets").reply(json!({
                "apiVersion": "v1", "kind": "SecretList", "metadata": {}, "items": [user_secret],
            })),
            Exchange::get(&path("v1", "factory", "services", "telemetry-rabbitmq")).not_found(),
            Exchange::post(&events("factory"))
                .with("/reason", json!(crate::conditions::event::BROKER_USER_LEFT)),
            Exchange::merge(&tributary("gateways", "line-1"))
                .with("/metadata/finalizers", json!([]))
                .reply(object(&gateway)),
        ]);
        let action = reconcile(Arc::new(gateway), context(client)).await;
        assert_eq!(action.expect("released"), Action::await_change());
        let bodies = scenario.done().await;
        assert!(
            bodies[3]["note"].as_str().is_some_and(
                |note| note.contains("gateway.factory.line-1") && note.contains("gone")
            ),
            "{}",
            bodies[3]
        );
    }

    #[tokio::test]
    async fn a_gateway_being_deleted_is_left_to_garbage_collection_without_a_request() {
        // Foreground deletion: the gateway stays, `deletionTimestamp` set, until its children are gone.
        let gateway = deleted(&gateway());
        let (client, server) = mocked();
        let scenario = server.run(Vec::new());
        let action = reconcile(Arc::new(gateway), context(client)).await;
        assert_eq!(action.expect("no request fails"), Action::await_change());
        assert!(scenario.done().await.is_empty());
    }
}
