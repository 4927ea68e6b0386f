//! Sink controller: validates the spec, checks the referenced Secret keys (and target
//! Queue), and reports Ready. Sinks have no children: Workers render them.

use super::{
    checked, patch_status, ready_condition, resolve_queue, skip_deleted, Context, Error, Outcome,
    Step, RESYNC,
};
use crate::build::sink as build;
use crate::conditions::reason;
use crate::crd::{Sink, SinkStatus};
use crate::reads::Reads;
use kube::runtime::controller::Action;
use kube::ResourceExt;
use std::sync::Arc;
use tracing::Instrument;

/// One reconcile of a Sink.
pub async fn reconcile(sink: Arc<Sink>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile("Sink");
    if let Some(action) = skip_deleted(sink.as_ref()) {
        return Ok(action);
    }
    let span = tracing::info_span!("reconcile", kind = "Sink", name = %sink.name_any(), namespace = ?sink.namespace());
    let current = sink.status.clone().unwrap_or_default();
    let mut status = SinkStatus::default();
    let outcome = steps(&sink, &ctx, &mut status).instrument(span).await?;
    status.conditions =
        ready_condition(&ctx, sink.as_ref(), &current.conditions, &outcome.ready).await;
    status.observed_generation = sink.metadata.generation;
    patch_status(&ctx.client, sink.as_ref(), sink.status.as_ref(), &status).await?;
    Ok(ctx.retries.pace(&ctx.metrics, sink.as_ref(), &outcome))
}

/// The steps after [`skip_deleted`]: validate → dereference → status. A step that cannot go
/// on ends the reconcile with its outcome (a condition) instead.
async fn steps(sink: &Sink, ctx: &Context, status: &mut SinkStatus) -> Result<Outcome, Error> {
    let kind = match checked(build::validate(sink, &ctx.sink_policy))? {
        Ok(kind) => kind,
        Err(outcome) => return Ok(outcome),
    };
    status.sink_type = Some(kind.as_str().to_owned());
    if let Err(outcome) = dereference(&ctx.reads, sink).await? {
        return Ok(outcome);
    }
    Ok(Outcome::ready(format!("{} sink is valid", kind.as_str())))
}

/// Checks that every referenced Secret key exists, then that the target Queue is Ready.
async fn dereference(reads: &Reads, sink: &Sink) -> Step<()> {
    let namespace = sink.namespace().unwrap_or_default();
    for reference in build::referenced_secrets(sink) {
        let data = reads.secret_data(&namespace, &reference.name).await?;
        if !data.is_some_and(|d| d.contains_key(&reference.key)) {
            return Ok(Err(Outcome::waiting(
                reason::WAITING_FOR_SECRET,
                format!(
                    "Secret {:?} with key {:?} does not exist",
                    reference.name, reference.key
                ),
                RESYNC,
            )));
        }
    }
    let Some(target) = build::target_queue(sink) else {
        return Ok(Ok(()));
    };
    Ok(resolve_queue(reads, &namespace, target)
        .await?
        .map(|_ready| ()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::load;
    use crate::controller::mock_api::{
        context, deleted, events, mocked, path, ready_queue, secret, tributary, Exchange,
    };
    use serde_json::json;

    /// The Event and the status write that end every reconcile, for a first `Ready`
    /// condition with `reason`.
    fn reported(sink: &Sink, reason: &str) -> Vec<Exchange> {
        let name = sink.name_any();
        vec![
            Exchange::post(&events("factory")).with("/reason", json!(reason)),
            Exchange::apply(&tributary("sinks", &format!("{name}/status")))
                .with("/status/conditions/0/reason", json!(reason))
                .with("/status/observedGeneration", json!(1))
                .reply(serde_json::to_value(sink).expect("serializes")),
        ]
    }

    #[tokio::test]
    async fn a_sink_whose_secret_key_exists_is_ready() {
        let sink: Sink = load("sink-postgres.yaml");
        let (client, server) = mocked();
        let mut scenario = vec![Exchange::get(&path("v1", "factory", "secrets", "pg"))
            .reply(secret("pg", "url", "postgres://db"))];
        scenario.extend(reported(&sink, reason::RECONCILED));
        let scenario = server.run(scenario);
        let action = reconcile(Arc::new(sink), context(client)).await;
        assert_eq!(action.expect("reconciles"), Action::requeue(RESYNC));
        let bodies = scenario.done().await;
        let status = &bodies.last().expect("status written")["status"];
        assert_eq!(status["sinkType"], "postgres");
        assert_eq!(status["conditions"][0]["status"], "True");
    }

    #[tokio::test]
    async fn a_missing_secret_key_is_reported() {
        let sink: Sink = load("sink-postgres.yaml");
        let (client, server) = mocked();
        let mut scenario = vec![Exchange::get(&path("v1", "factory", "secrets", "pg"))
            .reply(secret("pg", "password", "x"))];
        scenario.extend(reported(&sink, reason::WAITING_FOR_SECRET));
        let scenario = server.run(scenario);
        let action = reconcile(Arc::new(sink), context(client)).await;
        assert_eq!(action.expect("reconciles"), Action::requeue(RESYNC));
        let bodies = scenario.done().await;
        assert_eq!(
            bodies.last().expect("status written")["status"]["conditions"][0]["message"],
            "Secret \"pg\" with key \"url\" does not exist"
        );
    }

    #[tokio::test]
    async fn a_queue_sink_waits_for_its_target_queue() {
        let sink: Sink = load("sink-queue.yaml");
        let (client, server) = mocked();
        let mut scenario = vec![Exchange::get(&tributary("queues", "alerts")).not_found()];
        scenario.extend(reported(&sink, reason::WAITING_FOR_QUEUE));
        let scenario = server.run(scenario);
        let action = reconcile(Arc::new(sink), context(client)).await;
        assert_eq!(action.expect("reconciles"), Action::requeue(RESYNC));
        scenario.done().await;
    }

    #[tokio::test]
    async fn a_queue_sink_is_ready_once_its_target_queue_is() {
        let sink: Sink = load("sink-queue.yaml");
        let (client, server) = mocked();
        let mut scenario =
            vec![Exchange::get(&tributary("queues", "alerts")).reply(ready_queue("alerts"))];
        scenario.extend(reported(&sink, reason::RECONCILED));
        let scenario = server.run(scenario);
        let action = reconcile(Arc::new(sink), context(client)).await;
        assert_eq!(action.expect("reconciles"), Action::requeue(RESYNC));
        scenario.done().await;
    }

    #[tokio::test]
    async fn a_sink_without_a_type_waits_for_a_new_spec() {
        let mut sink: Sink = load("sink-postgres.yaml");
        sink.spec.postgres = None;
        let (client, server) = mocked();
        let scenario = server.run(reported(&sink, reason::INVALID_SPEC));
        let action = reconcile(Arc::new(sink), context(client)).await;
        assert_eq!(action.expect("reconciles"), Action::await_change());
        let bodies = scenario.done().await;
        assert_eq!(
            bodies.last().expect("status written")["status"].get("sinkType"),
            None
        );
    }

    #[tokio::test]
    async fn a_sink_being_deleted_is_left_to_garbage_collection_without_a_request() {
        // A Sink has no children: once deleted, nothing is left to apply or report.
        let sink = deleted(&load::<Sink>("sink-postgres.yaml"));
        let (client, server) = mocked();
        let scenario = server.run(Vec::new());
        let action = reconcile(Arc::new(sink), context(client)).await;
        assert_eq!(action.expect("no request fails"), Action::await_change());
        assert!(scenario.done().await.is_empty());
    }
}
