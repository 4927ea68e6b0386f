//! Desired state of a Worker: validation (CEL included), the rendered worker config, and
//! the Deployment running the worker runtime (plus the user's container, if any).

use super::network_policy::pod_ingress_policy;
use super::pod::{
    config_and_secret_volumes, deployment, http_probe, resources, validate_resources, CONFIG_DIR,
    PROCESSOR_RESOURCES, WORKER_RESOURCES,
};
use super::queue::access::{mountable, BrokerCredentials};
use super::sink::{self as sink_build, ResolvedTarget, SinkKind};
use super::{
    check_cel, child_meta, config_hash, name_and_namespace, selector_labels, BuildError, SecretData,
};
use crate::crd::worker::CustomContainer;
use crate::crd::{SecretKeyRef, Sink, Worker};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, ContainerPort, EnvVar, Probe, VolumeMount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use std::collections::{BTreeMap, BTreeSet};
use tributary_contract::worker_config::{
    self as contract, BatchConfig, ContainerConfig, DeadLetterConfig, HttpConfig, PipelineConfig,
    ProcessingConfig, QueueConfig, RetryConfig, SetStep, SinkConfig, WorkerConfig,
};

/// Key of the rendered config inside the worker ConfigMap.
pub const CONFIG_KEY: &str = "worker.yaml";
/// Port of the worker runtime's metrics and health endpoint.
pub const METRICS_PORT: i32 = 9090;
const COMPONENT: &str = "worker";

/// The consumed Queue, as dereferenced from its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedQueue {
    /// Queue name on the broker.
    pub broker_queue: String,
    /// Secret key with the broker's AMQP URI.
    pub uri: SecretKeyRef,
    /// Whose credentials `uri` holds: a managed broker's administrator Secret is never
    /// mounted (the Worker and Gateway controllers put the workload's own user there).
    pub credentials: BrokerCredentials,
    /// Secret key with the PEM bundle of the broker's private CA (an external broker's
    /// `caSecretRef`), mounted next to the URI.
    pub ca: Option<SecretKeyRef>,
    /// Dead-letter queue on the broker, when the Queue has one.
    pub dead_letter_queue: Option<String>,
    /// Deliveries after which the worker itself dead-letters a message that keeps coming
    /// back: set for classic queues, `None` where the broker counts (quorum) or nothing is
    /// redelivered (stream).
    pub delivery_limit: Option<u32>,
}

/// Everything a Worker's children depend on besides its spec.
#[derive(Clone, Debug)]
pub struct WorkerInputs {
    /// The consumed Queue.
    pub queue: ResolvedQueue,
    /// The Sinks, in `spec.sinks` order, each with its target when it is a `queue` sink.
    pub sinks: Vec<(Sink, Option<ResolvedTarget>)>,
    /// Content of every referenced Secret (for the pod-template hash only).
    pub secrets: SecretData,
    /// Default worker image.
    pub image: String,
    /// Whether the Deployment carries `spec.replicas`; false once the autoscaler owns it.
    pub set_replicas: bool,
}

/// The Worker's children.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerChildren {
    /// The rendered config.
    pub config_map: ConfigMap,
    /// The worker pods.
    pub deployment: Deployment,
    /// Only the metrics and status port, from the cluster's pods.
    pub network_policy: NetworkPolicy,
}

/// Name of the worker Deployment and ConfigMap.
pub fn child_name(worker: &str) -> String {
    format!("{worker}-worker")
}

/// Validates a Worker's spec without looking at other resources.
pub fn validate(worker: &Worker) -> Result<(), BuildError> {
    name_and_namespace(worker)?;
    let spec = &worker.spec;
    validate_resources("spec.resources", spec.resources.as_ref())?;
    let container_resources = spec.container.as_ref().and_then(|c| c.resources.as_ref());
    validate_resources("spec.container.resources", container_resources)?;
    if !spec.pipeline.is_empty() && spec.container.is_some() {
        return Err(BuildError::Invalid(
            "set at most one of spec.pipeline and spec.container".into(),
        ));
    }
    for (index, step) in spec.pipeline.iter().enumerate() {
        let at = format!("spec.pipeline[{index}]");
        let set = [
            step.filter.is_some(),
            step.set.is_some(),
            step.drop.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err(BuildError::Invalid(format!(
                "{at}: set exactly one of filter, set and drop"
            )));
        }
        if let Some(filter) = &step.filter {
            check_cel(&format!("{at}.filter"), filter)?;
        }
        if let Some(set) = &step.set {
            check_cel(&format!("{at}.set.expr"), &set.expr)?;
        }
    }
    let scaling = &spec.scaling;
    if scaling.min_replicas > scaling.max_replicas {
        return Err(BuildError::Invalid(format!(
            "spec.scaling.minReplicas ({}) exceeds maxReplicas ({})",
            scaling.min_replicas, scaling.max_replicas
        )));
    }
    let unique: BTreeSet<_> = spec.sinks.iter().collect();
    if unique.len() != spec.sinks.len() {
        return Err(BuildError::Invalid("spec.sinks lists a Sink twice".into()));
    }
    if spec.sinks.is_empty() {
        return Err(BuildError::Invalid(
            "spec.sinks must name at least one Sink".into(),
        ));
    }
    Ok(())
}

/// The contract's default batch of each sink type (the worker's documented defaults).
fn default_batch(kind: SinkKind) -> BatchConfig {
    match kind {
        SinkKind::Postgres => contract::DEFAULT_POSTGRES_BATCH,
        SinkKind::Redis => contract::DEFAULT_REDIS_BATCH,
        SinkKind::S3 => contract::DEFAULT_S3_BATCH,
        SinkKind::Webhook => contract::DEFAULT_WEBHOOK_BATCH,
        SinkKind::Queue | SinkKind::Command | SinkKind::Live => contract::DEFAULT_REPUBLISH_BATCH,
    }
}

/// The smallest prefetch the operator chooses when the Worker sets none: the worker's own
/// default.
pub const DEFAULT_PREFETCH: u16 = contract::DEFAULT_PREFETCH;

/// A worker pod's AMQP prefetch: the Worker's own, or one that lets the largest sink batch
/// fill (so batches are written by size, not only by age), at least [`DEFAULT_PREFETCH`].
pub fn prefetch(requested: Option<i32>, sinks: &[SinkConfig]) -> Result<u16, BuildError> {
    if let Some(requested) = requested {
        return u16::try_from(requested)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| out_of_range("spec.prefetch"));
    }
    let largest_batch = sinks
        .iter()
        .map(|sink| sink.batch().max_messages)
        .max()
        .unwrap_or(0);
    Ok(u16::try_from(largest_batch)
        .unwrap_or(u16::MAX)
        .max(DEFAULT_PREFETCH))
}

fn out_of_range(field: &str) -> BuildError {
    BuildError::Invalid(format!("{field} is out of range"))
}

/// Renders the worker config file (the `tributary-contract` type) for this Worker.
pub fn render_config(worker: &Worker, inputs: &WorkerInputs) -> Result<WorkerConfig, BuildError> {
    validate(worker)?;
    let spec = &worker.spec;
    let processing = if let Some(container) = &spec.container {
        Some(ProcessingConfig::Container(ContainerConfig {
            url: format!("http://127.0.0.1:{}{}", container.port, container.path),
            timeout_ms: u64::try_from(container.timeout_ms)
                .map_err(|_| out_of_range("spec.container.timeoutMs"))?,
        }))
    } else if spec.pipeline.is_empty() {
        None
    } else {
        let steps = spec
            .pipeline
            .iter()
            .filter_map(|step| {
                if let Some(filter) = &step.filter {
                    Some(contract::PipelineStep::Filter(filter.clone()))
                } else if let Some(set) = &step.set {
                    Some(contract::PipelineStep::Set(SetStep {
                        field: set.field.clone(),
                        expr: set.expr.clone(),
                    }))
                } else {
                    step.drop.clone().map(contract::PipelineStep::Drop)
                }
            })
            .collect();
        Some(ProcessingConfig::Pipeline(PipelineConfig { steps }))
    };
    let sinks = inputs
        .sinks
        .iter()
        .map(|(sink, target)| sink_build::to_config(sink, target.as_ref(), &default_batch))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(WorkerConfig {
        queue: QueueConfig {
            delivery_limit: inputs.queue.delivery_limit,
            uri_file: {
                let uri = mountable(&inputs.queue.uri, inputs.queue.credentials)?;
                sink_build::secret_file(&uri.name, &uri.key)
            },
            ca_file: inputs
                .queue
                .ca
                .as_ref()
                .map(|ca| sink_build::secret_file(&ca.name, &ca.key)),
            name: inputs.queue.broker_queue.clone(),
            prefetch: prefetch(spec.prefetch, &sinks)?,
            concurrency: u32::try_from(spec.concurrency)
                .map_err(|_| out_of_range("spec.concurrency"))?,
            declare: false,
        },
        dead_letter: inputs
            .queue
            .dead_letter_queue
            .as_ref()
            .map(|dlq| DeadLetterConfig {
                exchange: String::new(),
                routing_key: dlq.clone(),
            }),
        retry: RetryConfig {
            max_attempts: u32::try_from(spec.retry.max_attempts)
                .map_err(|_| out_of_range("spec.retry.maxAttempts"))?,
            initial_backoff_ms: u64::try_from(spec.retry.initial_backoff_ms)
                .map_err(|_| out_of_range("spec.retry.initialBackoffMs"))?,
            max_backoff_ms: u64::try_from(spec.retry.max_backoff_ms)
                .map_err(|_| out_of_range("spec.retry.maxBackoffMs"))?,
        },
        processing,
        sinks,
        http: HttpConfig {
            listen: format!("0.0.0.0:{METRICS_PORT}"),
        },
        shutdown_grace_seconds: contract::DEFAULT_SHUTDOWN_GRACE_SECONDS,
    })
}

/// Every Secret (by name) the worker pod mounts: the queue's (URI and CA) and the sinks'
/// (never a managed broker's administrator Secret).
pub fn mounted_secrets(inputs: &WorkerInputs) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    if let Ok(uri) = mountable(&inputs.queue.uri, inputs.queue.credentials) {
        names.insert(uri.name.clone());
    }
    names.extend(inputs.queue.ca.iter().map(|ca| ca.name.clone()));
    for (sink, target) in &inputs.sinks {
        names.extend(
            sink_build::referenced_secrets(sink)
                .into_iter()
                .map(|r| r.name),
        );
        if let Some(uri) = target
            .as_ref()
            .and_then(|t| mountable(&t.uri, t.credentials).ok())
        {
            names.insert(uri.name.clone());
        }
        names.extend(target.iter().flat_map(|t| &t.ca).map(|ca| ca.name.clone()));
    }
    names
}

/// Replicas the Deployment should run when the operator (not the autoscaler) sets them:
/// `minReplicas` for an autoscaled worker (its starting point), otherwise `spec.replicas`
/// (`kubectl scale`, HPA) clamped to the scaling bounds.
pub fn desired_replicas(worker: &Worker) -> i32 {
    let scaling = &worker.spec.scaling;
    let max = scaling.max_replicas.max(scaling.min_replicas);
    if scaling.enabled {
        return scaling.min_replicas;
    }
    worker
        .spec
        .replicas
        .unwrap_or(scaling.min_replicas)
        .clamp(scaling.min_replicas, max)
}

/// The worker runtime container: metrics port, config and Secret mounts, probes.
fn runtime_container(
    worker: &Worker,
    inputs: &WorkerInputs,
    mounts: Vec<VolumeMount>,
) -> Container {
    Container {
        name: "worker".to_owned(),
        image: Some(
            worker
                .spec
                .image
                .clone()
                .unwrap_or_else(|| inputs.image.clone()),
        ),
        args: Some(vec![
            "--config".to_owned(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".to_owned()),
            container_port: METRICS_PORT,
            ..ContainerPort::default()
        }]),
        volume_mounts: Some(mounts),
        readiness_probe: Some(http_probe("/readyz", "metrics", 2)),
        liveness_probe: Some(http_probe("/healthz", "metrics", 10)),
        resources: Some(resources(&WORKER_RESOURCES, worker.spec.resources.as_ref())),
        ..Container::default()
    }
}

/// The user's processing container, told its port in `PORT`.
fn processor_container(custom: &CustomContainer) -> Container {
    let mut env: Vec<EnvVar> = custom
        .env
        .iter()
        .map(|(name, value)| EnvVar {
            name: name.clone(),
            value: Some(value.clone()),
            ..EnvVar::default()
        })
        .collect();
    env.push(EnvVar {
        name: "PORT".to_owned(),
        value: Some(custom.port.to_string()),
        ..EnvVar::default()
    });
    Container {
        name: "processor".to_owned(),
        image: Some(custom.image.clone()),
        command: (!custom.command.is_empty()).then(|| custom.command.clone()),
        args: (!custom.args.is_empty()).then(|| custom.args.clone()),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("processor".to_owned()),
            container_port: custom.port,
            ..ContainerPort::default()
        }]),
        resources: Some(resources(&PROCESSOR_RESOURCES, custom.resources.as_ref())),
        readiness_probe: processor_probe(custom, 0, 3),
        // Generous: a container restarted for a slow start would never get going.
        liveness_probe: processor_probe(custom, 30, 6),
        ..Container::default()
    }
}

/// With `healthPath`, the user's container is healthy while that path answers on its port.
/// Without it, no probe: a processor often listens on loopback only (the runtime posts to
/// it from inside the pod), where the kubelet's probes, sent to the pod's address, cannot
/// reach it.
fn processor_probe(custom: &CustomContainer, initial_delay: i32, failures: i32) -> Option<Probe> {
    custom.health_path.as_ref().map(|path| Probe {
        failure_threshold: Some(failures),
        ..http_probe(path, "processor", initial_delay)
    })
}

/// Builds the Worker's ConfigMap and Deployment.
pub fn build(worker: &Worker, inputs: &WorkerInputs) -> Result<WorkerChildren, BuildError> {
    let (name, _) = name_and_namespace(worker)?;
    let config = render_config(worker, inputs)?;
    let text = super::render_yaml("worker", &config)?;
    let child = child_name(&name);
    let secrets = mounted_secrets(inputs);
    let (volumes, mounts) = config_and_secret_volumes(&child, &secrets);
    let mut containers = vec![runtime_container(worker, inputs, mounts)];
    containers.extend(worker.spec.container.as_ref().map(processor_container));
    let hash = config_hash(&text, &inputs.secrets);
    let pods = selector_labels(&name, COMPONENT);
    let network_policy = pod_ingress_policy(
        child_meta(worker, &child, COMPONENT)?,
        &pods,
        &[],
        &[METRICS_PORT],
    );
    let mut deployment = deployment(
        child_meta(worker, &child, COMPONENT)?,
        pods,
        desired_replicas(worker),
        hash,
        containers,
        volumes,
    );
    if !inputs.set_replicas {
        if let Some(spec) = deployment.spec.as_mut() {
            spec.replicas = None;
        }
    }
    Ok(WorkerChildren {
        config_map: ConfigMap {
            metadata: child_meta(worker, &child, COMPONENT)?,
            data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), text)])),
            ..ConfigMap::default()
        },
        deployment,
        network_policy,
    })
}

/// The labels that select the Worker's pods.
pub fn pod_labels(worker: &Worker) -> Result<BTreeMap<String, String>, BuildError> {
    let (name, _) = name_and_namespace(worker)?;
    Ok(selector_labels(&name, COMPONENT))
}

/// The pods' labels as a label selector (all of them the Deployment's selector).
pub const WORKER_POD_SELECTOR: &str = "app.kubernetes.io/name=worker";

/// The `/scale` label selector of a Worker's pods, as `status.selector` text.
pub fn selector_string(worker: &Worker) -> Result<String, BuildError> {
    Ok(pod_labels(worker)?
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(","))
}

#[cfg(test)]
mod tests;
