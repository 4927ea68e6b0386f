//! Queue controller: runs the managed RabbitMQ (or dereferences the external one), declares
//! the queue topology over AMQP, repairs drift, reports counts, and — with
//! `deletionPolicy: Delete` — removes the broker queue behind a finalizer ([`finalizer`]).
//!
//! Steps: validate → (deleted: [`finalizer`]) → build and apply the broker ([`managed`]) →
//! dereference its endpoint → apply the topology (declare, replay) → status (counts). The
//! broker I/O goes through [`crate::broker`], over the connections the [`Context`] keeps.

mod finalizer;
mod managed;

pub use finalizer::FINALIZER;

use super::{patch_status, ready_condition, Context, Error, Outcome, PROGRESS_POLL, RETRY};
use crate::broker::endpoint::{self, Endpoint, LookupError, Unreachable};
use crate::broker::ReplayRequest;
use crate::build::queue::{self as build, BrokerPlan};
use crate::build::BuildError;
use crate::conditions::{self, event, reason};
use crate::crd::queue::ReplayStatus;
use crate::crd::{Queue, QueueStatus};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Resync of a ready Queue: how soon a queue deleted by hand on the broker comes back.
pub const DRIFT_CHECK: Duration = Duration::from_secs(20);

impl From<LookupError> for Error {
    fn from(error: LookupError) -> Self {
        match error {
            LookupError::Kube(error) => Error::Kube(error),
            LookupError::Build(error) => Error::Build(error),
        }
    }
}

/// The broker queues of a Queue: its own and its dead-letter queue.
struct BrokerQueues {
    queue: String,
    dead_letter: Option<String>,
}

impl BrokerQueues {
    fn of(queue: &Queue) -> Result<Self, BuildError> {
        Ok(BrokerQueues {
            queue: build::broker_queue_name(queue)?,
            dead_letter: build::dead_letter_queue_name(queue)?,
        })
    }

    /// The names joined by `separator`.
    fn joined(&self, separator: &str) -> String {
        std::iter::once(self.queue.as_str())
            .chain(self.dead_letter.as_deref())
            .collect::<Vec<_>>()
            .join(separator)
    }
}

/// What the `Ready` condition says while the broker cannot be reached.
fn unreachable(why: Unreachable) -> Outcome {
    match why {
        Unreachable::Invalid(message) => Outcome::invalid(message),
        Unreachable::NoAddress => {
            Outcome::waiting(reason::PROGRESSING, why.to_string(), PROGRESS_POLL)
        }
        Unreachable::MissingSecret { .. } => {
            Outcome::waiting(reason::WAITING_FOR_SECRET, why.to_string(), RETRY * 4)
        }
    }
}

/// Dereferences how to reach the broker, or the outcome that says why not yet.
async fn endpoint(
    ctx: &Context,
    queue: &Queue,
    plan: &BrokerPlan,
) -> Result<Result<Endpoint, Outcome>, Error> {
    Ok(endpoint::lookup_plan(&ctx.reads, queue, plan)
        .await?
        .map_err(unreachable))
}

/// Publishes a Kubernetes Event about the Queue (best effort: a failure is only logged, for
/// example in a namespace that is being deleted).
async fn publish_event(ctx: &Context, queue: &Queue, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &queue.object_ref(&())).await {
        tracing::warn!(%error, reason, "publishing an Event failed");
    }
}

/// One reconcile of a Queue.
pub async fn reconcile(queue: Arc<Queue>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile("Queue");
    let current = queue.status.clone().unwrap_or_default();
    let mut status = QueueStatus {
        conditions: current.conditions.clone(),
        replay: current.replay.clone(),
        ..QueueStatus::default()
    };
    let span = tracing::info_span!("reconcile", kind = "Queue", name = %queue.name_any(), namespace = ?queue.namespace());
    let outcome = run(&queue, &ctx, &mut status).instrument(span).await?;
    let Some(outcome) = outcome else {
        // Deleted: no status to write.
        ctx.metrics
            .forget_queue(&queue.namespace().unwrap_or_default(), &queue.name_any());
        return Ok(Action::await_change());
    };
    status.conditions =
        ready_condition(&ctx, queue.as_ref(), &current.conditions, &outcome.ready).await;
    status.observed_generation = queue.metadata.generation;
    if !outcome.ready.ok {
        // Keep the last known counts while not ready.
        status.ready_messages = status.ready_messages.or(current.ready_messages);
        status.unacked_messages = status.unacked_messages.or(current.unacked_messages);
        status.consumers = status.consumers.or(current.consumers);
        status.dead_lettered_messages = status
            .dead_lettered_messages
            .or(current.dead_lettered_messages);
    }
    patch_status(&ctx.client, queue.as_ref(), queue.status.as_ref(), &status).await?;
    Ok(ctx.retries.pace(&ctx.metrics, queue.as_ref(), &outcome))
}

/// The reconcile steps; `Ok(None)` once a deleted Queue is fully cleaned up.
async fn run(
    queue: &Queue,
    ctx: &Context,
    status: &mut QueueStatus,
) -> Result<Option<Outcome>, Error> {
    // Validate.
    let plan = match build::validate(queue) {
        Ok(plan) => plan,
        Err(BuildError::Invalid(message)) => {
            return finalizer::invalid_spec(ctx, queue, message).await
        }
        Err(other) => return Err(other.into()),
    };
    let names = BrokerQueues::of(queue)?;
    if super::being_deleted(&queue.metadata) {
        return finalizer::finalize(ctx, queue, &plan, &names).await;
    }
    if let Err(BuildError::Invalid(message)) = ctx.tenancy.admits_queue(queue) {
        return finalizer::invalid_spec(ctx, queue, message).await;
    }
    finalizer::follow_policy(ctx, queue).await?;
    // Build and apply the broker, then dereference how to reach it.
    if let Some(outcome) = apply_broker(ctx, queue, &plan, &names, status).await? {
        return Ok(Some(outcome));
    }
    let endpoint = match endpoint(ctx, queue, &plan).await? {
        Ok(endpoint) => endpoint,
        Err(outcome) => return Ok(Some(outcome)),
    };
    // Apply the topology, then what `spec.replay` asks for.
    if let Some(outcome) = declare(ctx, queue, &endpoint, &names).await? {
        return Ok(Some(outcome));
    }
    if let Some(outcome) = replay(ctx, queue, endpoint.amqp(), &names, status).await {
        return Ok(Some(outcome));
    }
    // Status.
    read_counts(ctx, queue, &endpoint, &names, status).await;
    let mut outcome = Outcome::ready(format!("queue {} is declared on the broker", names.queue));
    outcome.action = Action::requeue(DRIFT_CHECK);
    super::monitoring::ensure_for_queue(ctx, queue).await;
    Ok(Some(outcome))
}

/// Builds and applies the broker side: the managed RabbitMQ (or, on an external broker,
/// the removal of a managed one), and the status fields clients connect with.
/// `Some(outcome)` while the broker is not ready.
async fn apply_broker(
    ctx: &Context,
    queue: &Queue,
    plan: &BrokerPlan,
    names: &BrokerQueues,
    status: &mut QueueStatus,
) -> Result<Option<Outcome>, Error> {
    if let BrokerPlan::External { .. } = plan {
        // The managed broker (if any) must be empty before it is removed.
        if let Some(outcome) = managed::switch_away(ctx, queue, names, status).await? {
            return Ok(Some(outcome));
        }
    }
    status.queue_name = Some(names.queue.clone());
    status.dead_letter_queue_name = names.dead_letter.clone();
    status.connection_secret_ref = Some(build::connection_secret_ref(queue, plan)?);
    match plan {
        BrokerPlan::Managed(managed) => {
            status.broker_mode = Some("managed".to_owned());
            managed::apply_broker(ctx, queue, managed).await
        }
        BrokerPlan::External { .. } => {
            status.broker_mode = Some("external".to_owned());
            Ok(None)
        }
    }
}

/// Declares the queue and its dead-letter queue (re-creating them after a deletion by
/// hand); `Some(outcome)` when the broker refused or could not be reached.
async fn declare(
    ctx: &Context,
    queue: &Queue,
    endpoint: &Endpoint,
    names: &BrokerQueues,
) -> Result<Option<Outcome>, Error> {
    let args = build::declare_arguments(queue)?;
    let dead_letter_args = build::dead_letter_arguments(queue);
    let dead_letter = names
        .dead_letter
        .as_deref()
        .map(|dlq| (dlq, &dead_letter_args));
    let declared = ctx
        .broker
        .declare(endpoint.amqp(), &names.queue, &args, dead_letter)
        .await;
    let Err(error) = declared else {
        return Ok(None);
    };
    let mut message = error.to_string();
    if message.contains("inequivalent arg") {
        // The queue exists with other arguments (for example declared before dead-letter
        // queues became the default): RabbitMQ cannot change them in place.
        message.push_str(
            "; the arguments of an existing broker queue cannot change: drain and delete \
             it on the broker (the operator declares it again), or set another queueName",
        );
    }
    Ok(Some(Outcome::waiting(
        reason::BROKER_UNAVAILABLE,
        message,
        RETRY,
    )))
}

/// Reads the queue's counts from the management API, when there is one, into the status
/// and the metrics (a failure only leaves them as they were).
async fn read_counts(
    ctx: &Context,
    queue: &Queue,
    endpoint: &Endpoint,
    names: &BrokerQueues,
    status: &mut QueueStatus,
) {
    let Some(management) = &endpoint.management else {
        return;
    };
    let counts = ctx
        .broker
        .counts(management, &names.queue, names.dead_letter.as_deref())
        .await;
    match counts {
        Ok(counts) => {
            status.ready_messages = Some(counts.ready);
            status.unacked_messages = Some(counts.unacked);
            status.consumers = Some(counts.consumers);
            status.dead_lettered_messages = counts.dead_lettered;
            ctx.metrics.queue_counts(
                &queue.namespace().unwrap_or_default(),
                &queue.name_any(),
                &counts,
            );
        }
        Err(error) => tracing::debug!(%error, "reading queue counts failed"),
    }
}

/// Whether `spec.replay` asks for a replay that `status.replay` has not answered yet.
pub fn replay_requested(queue: &Queue) -> bool {
    let Some(replay) = &queue.spec.replay else {
        return false;
    };
    let answered = queue
        .status
        .as_ref()
        .and_then(|s| s.replay.as_ref())
        .map(|r| r.request.as_str());
    answered != Some(replay.request.as_str())
}

/// Moves dead-lettered messages back when `spec.replay` asks for it; `Some(outcome)` when
/// the broker failed (the request stays unanswered and is retried).
async fn replay(
    ctx: &Context,
    queue: &Queue,
    uri: crate::broker::Amqp<'_>,
    names: &BrokerQueues,
    status: &mut QueueStatus,
) -> Option<Outcome> {
    let broker_queue = names.queue.as_str();
    let (Some(spec), Some(dlq)) = (&queue.spec.replay, names.dead_letter.as_deref()) else {
        return None;
    };
    if !replay_requested(queue) {
        return None;
    }
    let request = ReplayRequest {
        dead_letter_queue: dlq,
        queue: broker_queue,
        reason_kind: spec.reason_kind.as_deref(),
        max_messages: spec.max_messages.and_then(|m| u64::try_from(m).ok()),
    };
    match ctx.broker.replay(uri, &request).await {
        Ok(report) => {
            let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            status.replay = Some(ReplayStatus {
                request: spec.request.clone(),
                moved: count(report.moved),
                skipped: count(report.skipped),
                remaining: count(report.remaining),
                completed_at: conditions::now(),
            });
            publish_event(
                ctx,
                queue,
                EventType::Normal,
                event::REPLAYED,
                format!(
                    "replay {:?}: moved {} dead-lettered messages back into {broker_queue}; \
                     {} skipped, {} remain in {dlq}",
                    spec.request, report.moved, report.skipped, report.remaining
                ),
            )
            .await;
            None
        }
        Err(error) => Some(Outcome::waiting(
            reason::BROKER_UNAVAILABLE,
            format!("replay {:?} failed: {error}", spec.request),
            RETRY,
        )),
    }
}

#[cfg(test)]
mod tests;
