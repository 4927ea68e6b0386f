//! The autoscaler: every `pollIntervalSeconds`, for each Worker, it asks the worker pods
//! which targets they find unavailable ([`sinks`]: the `SinksAvailable` condition, its
//! Events and a gauge); then, for a Worker with scaling enabled, it reads the queue's
//! backlog, decides the replica count ([`policy`]; no scale-up while a pod reports an
//! outage), writes the worker Deployment's `spec.replicas` under its own field manager, and
//! tells the story in the Worker's `status.scaling` and in Events.
//!
//! The Worker controller leaves `spec.replicas` of an autoscaled Deployment to this field
//! manager (see [`crate::scaling::owns_replicas`]); with scaling disabled it writes
//! `spec.replicas` from the Worker itself (the `/scale` subresource), taking the field back.
//!
//! The autoscaler reaches the broker through [`crate::broker`] (the same kept connections
//! as the Queue controller); of the controllers it uses only the condition helpers.

pub mod policy;
pub mod sinks;

use crate::broker::{self, Broker, Endpoint, Reading};
use crate::build::BuildError;
use crate::conditions;
use crate::crd::{Condition, ScalingStatus, Worker};
use crate::metrics::Metrics;
use crate::scaling::{set_replicas, FIELD_MANAGER};
use futures::future::join_all;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use policy::History;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often the loop looks for Workers whose poll is due.
const TICK: Duration = Duration::from_millis(500);

/// What the autoscaler works with.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Kept connections to the brokers (shared with the Queue controller).
    pub broker: Arc<Broker>,
    /// Reads through the operator's watch caches (shared with the controllers).
    pub reads: Arc<crate::reads::Reads>,
}

/// Why a poll failed (logged; the next poll tries again).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A Worker or Queue lacks what the API server always sets, or is invalid.
    #[error("building children: {0}")]
    Build(#[from] BuildError),
}

impl From<broker::endpoint::LookupError> for Error {
    fn from(error: broker::endpoint::LookupError) -> Self {
        match error {
            broker::endpoint::LookupError::Kube(error) => Error::Kube(error),
            broker::endpoint::LookupError::Build(error) => Error::Build(error),
        }
    }
}

/// Per-Worker memory of the loop.
#[derive(Default)]
struct Tracked {
    history: History,
    next_poll: Option<Instant>,
    /// The `SinksAvailable` condition this loop last wrote or confirmed, with the Worker's
    /// uid: the watched copy may lag behind the loop's own write, and an outage must raise
    /// one Event, not one per poll.
    sinks: Option<(Option<String>, Condition)>,
    /// Whether the last decision held the replicas below the backlog's ask.
    held: bool,
}

/// Runs the autoscaler over the Workers in `workers` until `stop` fires.
pub async fn run(
    ctx: Arc<Context>,
    workers: Store<DeserializeGuard<Worker>>,
    mut stop: watch::Receiver<bool>,
) {
    let origin = Instant::now();
    let reader = sinks::Reader::default();
    let mut tracked: HashMap<ObjectRef<Worker>, Tracked> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {},
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let now = Instant::now();
        // Every Worker: the sinks' status is read for all; scaling only where enabled.
        // Malformed Workers (the controller reports them) are left out.
        let watched: Vec<Arc<Worker>> = workers
            .state()
            .into_iter()
            .filter_map(|w| w.0.as_ref().ok().map(|w| Arc::new(w.clone())))
            .filter(|w| w.metadata.deletion_timestamp.is_none())
            .collect();
        let present: HashSet<ObjectRef<Worker>> = watched
            .iter()
            .map(|w| ObjectRef::from_obj(w.as_ref()))
            .collect();
        tracked.retain(|key, _| {
            let keep = present.contains(key);
            if !keep {
                ctx.metrics
                    .forget_worker(key.namespace.as_deref().unwrap_or_default(), &key.name);
            }
            keep
        });
        let due: Vec<(ObjectRef<Worker>, Arc<Worker>, Tracked)> = watched
            .into_iter()
            .filter_map(|worker| {
                let key = ObjectRef::from_obj(worker.as_ref());
                let state = tracked.remove(&key).unwrap_or_default();
                if state.next_poll.is_some_and(|at| at > now) {
                    tracked.insert(key, state);
                    return None;
                }
                Some((key, worker, state))
            })
            .collect();
        let reader = &reader;
        let polls = due.into_iter().map(|(key, worker, mut state)| {
            let ctx = ctx.clone();
            async move {
                let seconds = origin.elapsed().as_secs_f64();
                let polled = poll(&ctx, reader, &worker, &mut state, seconds).await;
                if let Err(error) = polled {
                    tracing::warn!(
                        worker = %worker.name_any(),
                        namespace = ?worker.namespace(),
                        %error,
                        "autoscaler poll failed"
                    );
                }
                let interval = worker.spec.scaling.poll_interval_seconds.max(1);
                state.next_poll =
                    Some(Instant::now() + Duration::from_secs(interval.unsigned_abs()));
                (key, state)
            }
        });
        for (key, state) in join_all(polls).await {
            tracked.insert(key, state);
        }
        ctx.broker.close_idle().await;
    }
}

/// Why a reading could not be taken (shown in `status.scaling.error`).
fn unreadable(worker: &Worker, message: String) -> ScalingStatus {
    ScalingStatus {
        error: Some(message),
        ..current_status(worker)
    }
}

fn current_status(worker: &Worker) -> ScalingStatus {
    worker
        .status
        .as_ref()
        .and_then(|s| s.scaling.clone())
        .unwrap_or_default()
}

/// One poll of one Worker: the pods' sink status, then (when enabled) a scaling decision.
async fn poll(
    ctx: &Context,
    reader: &sinks::Reader,
    worker: &Worker,
    state: &mut Tracked,
    now: f64,
) -> Result<(), Error> {
    if !worker.spec.scaling.enabled {
        observe_sinks(ctx, reader, worker, &mut state.sinks).await;
        return Ok(());
    }
    // Both at once: pods slow to answer add at most their timeout to the reading.
    let (verdict, reading) = tokio::join!(
        observe_sinks(ctx, reader, worker, &mut state.sinks),
        read_backlog(ctx, worker),
    );
    let Some((reading, current)) = reading? else {
        return Ok(());
    };
    let outage = verdict
        .as_ref()
        .and_then(sinks::SinkVerdict::outage_summary);
    scale(
        ctx,
        worker,
        state,
        &reading,
        current,
        outage.as_deref(),
        now,
    )
    .await
}

/// Reads what the Worker's pods report at `/status`; sets the `SinksAvailable` condition,
/// publishes an Event when an outage starts or ends, and updates the gauge. Failures are
/// logged: they must not stop the scaling decision.
async fn observe_sinks(
    ctx: &Context,
    reader: &sinks::Reader,
    worker: &Worker,
    memory: &mut Option<(Option<String>, Condition)>,
) -> Option<sinks::SinkVerdict> {
    let namespace = worker.namespace().unwrap_or_default();
    let name = worker.name_any();
    let verdict = match reader.read_worker(&ctx.reads, worker).await {
        Ok(verdict) => verdict,
        Err(error) => {
            tracing::warn!(worker = %name, %namespace, %error, "reading the worker pods' status failed");
            return None;
        }
    };
    if verdict.available().is_none() {
        // No pod answered: nothing is known, nothing changes.
        return Some(verdict);
    }
    ctx.metrics
        .sink_outages(&namespace, &name, verdict.outages.len());
    let uid = worker.uid();
    let stored = sinks::stored(worker);
    let previous = memory
        .as_ref()
        .filter(|(remembered, _)| *remembered == uid)
        .map(|(_, condition)| condition)
        .or(stored);
    let transition = sinks::transition(
        previous,
        &verdict,
        worker.metadata.generation,
        &conditions::now(),
    )?;
    if stored != Some(&transition.condition) {
        if let Err(error) = sinks::write_condition(&ctx.client, worker, &transition.condition).await
        {
            // Neither remembered nor announced: the next poll tries again.
            tracing::warn!(worker = %name, %namespace, %error, "writing the SinksAvailable condition failed");
            return Some(verdict);
        }
    }
    if let Some(event) = transition.event {
        let mut note = event.note;
        if event.warning && worker.spec.scaling.enabled {
            note.push_str("; the autoscaler adds no replicas for the backlog meanwhile");
        }
        tracing::info!(worker = %name, %namespace, reason = event.reason, note = %note, "sink availability changed");
        let event = Event {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.to_owned(),
            note: Some(truncate(&note, 1000)),
            action: "ReadWorkerStatus".to_owned(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &worker.object_ref(&())).await {
            tracing::warn!(%error, "publishing an Event failed");
        }
    }
    *memory = Some((uid, transition.condition));
    Some(verdict)
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// One reading of the Worker's queue and its Deployment's replicas; `None` when there is
/// none (why is then written to `status.scaling.error`, or the Deployment does not exist
/// yet).
async fn read_backlog(ctx: &Context, worker: &Worker) -> Result<Option<(Reading, i32)>, Error> {
    let namespace = worker.namespace().unwrap_or_default();
    let name = worker.name_any();
    let no_reading = |message: String| async move {
        write_status(ctx, worker, unreadable(worker, message))
            .await
            .map(|()| None)
    };
    let queue_name = &worker.spec.queue;
    let Some(queue) = ctx.reads.queue(&namespace, queue_name).await? else {
        return no_reading(format!("Queue {queue_name:?} does not exist")).await;
    };
    let Some(broker_queue) = queue.status.as_ref().and_then(|s| s.queue_name.clone()) else {
        return no_reading(format!("Queue {queue_name:?} is not ready yet")).await;
    };
    let endpoint = match broker::endpoint::lookup(&ctx.reads, &queue).await? {
        Ok(endpoint) => endpoint,
        Err(why) => return no_reading(why.to_string()).await,
    };
    let reading = match read_queue(&ctx.broker, &endpoint, &broker_queue).await {
        Ok(reading) => reading,
        Err(error) => return no_reading(error.to_string()).await,
    };
    let child = crate::build::worker::child_name(&name);
    let Some(deployment) = ctx.reads.deployment(&namespace, &child).await? else {
        // The Worker controller has not created it yet.
        return Ok(None);
    };
    let current = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    Ok(Some((reading, current)))
}

/// The scaling decision after one reading: replicas, `status.scaling`, Events.
async fn scale(
    ctx: &Context,
    worker: &Worker,
    state: &mut Tracked,
    reading: &Reading,
    current: i32,
    outage: Option<&str>,
    now: f64,
) -> Result<(), Error> {
    let namespace = worker.namespace().unwrap_or_default();
    let name = worker.name_any();
    let child = crate::build::worker::child_name(&name);
    let decision = policy::decide(
        &worker.spec.scaling,
        current,
        reading,
        &mut state.history,
        now,
        outage,
    );
    ctx.metrics
        .observed(&namespace, &name, reading.backlog(), decision.replicas);
    let mut status = ScalingStatus {
        backlog: Some(reading.backlog()),
        consumers: Some(reading.consumers),
        desired_replicas: Some(decision.replicas),
        error: None,
        hold: decision.held.clone(),
        ..current_status(worker)
    };
    let was_held = state.held || current_status(worker).hold.is_some();
    state.held = decision.held.is_some();
    if let (false, Some(held)) = (was_held, &decision.held) {
        tracing::info!(worker = %name, namespace = %namespace, %held, "scale-up held");
        let event = Event {
            type_: EventType::Normal,
            reason: "ScaleUpHeld".to_owned(),
            note: Some(truncate(held, 1000)),
            action: "Scale".to_owned(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &worker.object_ref(&())).await {
            tracing::warn!(%error, "publishing an Event failed");
        }
    }
    if let Some(reason) = decision.reason {
        set_replicas(&ctx.client, &namespace, &child, decision.replicas).await?;
        ctx.metrics.scaled(&namespace, &name);
        tracing::info!(worker = %name, namespace = %namespace, from = current, to = decision.replicas, %reason, "scaled");
        let event = Event {
            type_: EventType::Normal,
            // One reason per kind of change: Events of the same reason are aggregated
            // into a series, and `status.scaling` keeps the latest message.
            reason: decision.event.unwrap_or("Scaled").to_owned(),
            note: Some(reason.clone()),
            action: "Scale".to_owned(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &worker.object_ref(&())).await {
            tracing::warn!(%error, "publishing an Event failed");
        }
        status.last_scale_time = Some(conditions::now());
        status.last_scale_reason = Some(reason);
    }
    write_status(ctx, worker, status).await
}

/// One reading of `queue` over the broker's kept-open connection; a failed reading drops
/// the connection so the next poll starts afresh.
async fn read_queue(
    broker: &Broker,
    endpoint: &Endpoint,
    queue: &str,
) -> Result<Reading, broker::BrokerError> {
    broker
        .reading(endpoint.amqp(), endpoint.management.as_ref(), queue)
        .await
}

/// Writes `status.scaling` under the autoscaler's field manager when it changed.
async fn write_status(ctx: &Context, worker: &Worker, status: ScalingStatus) -> Result<(), Error> {
    if worker.status.as_ref().and_then(|s| s.scaling.as_ref()) == Some(&status) {
        return Ok(());
    }
    let namespace = worker.namespace().unwrap_or_default();
    let api: Api<Worker> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": Worker::api_version(&()),
        "kind": Worker::kind(&()),
        "status": { "scaling": status },
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&worker.name_any(), &params, &Patch::Apply(&patch))
        .await?;
    Ok(())
}
