//! Desired state of a Worker: validation (CEL included), the rendered worker config, and
//! the Deployment running the worker runtime (plus the user's container, if any).

use super::pod::{config_and_secret_volumes, deployment, http_probe, CONFIG_DIR};
use super::sink::{self as sink_build, ResolvedTarget, SinkKind};
use super::{
    check_cel, child_meta, config_hash, name_and_namespace, selector_labels, BuildError, SecretData,
};
use crate::crd::{SecretKeyRef, Sink, Worker};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, ContainerPort, EnvVar};
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
}

/// Name of the worker Deployment and ConfigMap.
pub fn child_name(worker: &str) -> String {
    format!("{worker}-worker")
}

/// Validates a Worker's spec without looking at other resources.
pub fn validate(worker: &Worker) -> Result<(), BuildError> {
    name_and_namespace(worker)?;
    let spec = &worker.spec;
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
    let (max_messages, max_bytes, max_age_ms) = match kind {
        SinkKind::Postgres => (1000, 4 << 20, 200),
        SinkKind::Redis => (500, 4 << 20, 50),
        SinkKind::S3 => (10_000, 8 << 20, 60_000),
        SinkKind::Webhook => (50, 1 << 20, 50),
        SinkKind::Queue => (500, 4 << 20, 20),
    };
    BatchConfig {
        max_messages,
        max_bytes,
        max_age_ms,
    }
}

/// The smallest prefetch the operator chooses when the Worker sets none.
pub const DEFAULT_PREFETCH: u16 = 500;

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
            uri_file: sink_build::secret_file(&inputs.queue.uri.name, &inputs.queue.uri.key),
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
        shutdown_grace_seconds: 25,
    })
}

/// Every Secret (by name) the worker pod mounts: the queue's and the sinks'.
pub fn mounted_secrets(inputs: &WorkerInputs) -> BTreeSet<String> {
    let mut names = BTreeSet::from([inputs.queue.uri.name.clone()]);
    for (sink, target) in &inputs.sinks {
        names.extend(
            sink_build::referenced_secrets(sink)
                .into_iter()
                .map(|r| r.name),
        );
        if let Some(target) = target {
            names.insert(target.uri.name.clone());
        }
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

/// Builds the Worker's ConfigMap and Deployment.
pub fn build(worker: &Worker, inputs: &WorkerInputs) -> Result<WorkerChildren, BuildError> {
    let (name, _) = name_and_namespace(worker)?;
    let config = render_config(worker, inputs)?;
    let text = super::render_yaml("worker", &config)?;
    let child = child_name(&name);
    let secrets = mounted_secrets(inputs);
    let (volumes, mounts) = config_and_secret_volumes(&child, &secrets);
    let runtime = Container {
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
        ..Container::default()
    };
    let mut containers = vec![runtime];
    if let Some(custom) = &worker.spec.container {
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
        containers.push(Container {
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
            ..Container::default()
        });
    }
    let hash = config_hash(&text, &inputs.secrets);
    Ok(WorkerChildren {
        config_map: ConfigMap {
            metadata: child_meta(worker, &child, COMPONENT)?,
            data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), text)])),
            ..ConfigMap::default()
        },
        deployment: {
            let mut deployment = deployment(
                child_meta(worker, &child, COMPONENT)?,
                selector_labels(&name, COMPONENT),
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
            deployment
        },
    })
}

/// The `/scale` label selector of a Worker's pods, as `status.selector` text.
pub fn selector_string(worker: &Worker) -> Result<String, BuildError> {
    let (name, _) = name_and_namespace(worker)?;
    Ok(selector_labels(&name, COMPONENT)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::load;

    fn inputs() -> WorkerInputs {
        WorkerInputs {
            queue: ResolvedQueue {
                broker_queue: "factory.telemetry".into(),
                uri: SecretKeyRef {
                    name: "telemetry-rabbitmq-credentials".into(),
                    key: "uri".into(),
                },
                dead_letter_queue: Some("factory.telemetry.dlq".into()),
                delivery_limit: None,
            },
            sinks: vec![(load("sink-postgres.yaml"), None)],
            secrets: SecretData::from([(
                "pg".into(),
                BTreeMap::from([("url".into(), b"postgres://x".to_vec())]),
            )]),
            image: "tributary/worker:0.1.0".into(),
            set_replicas: true,
        }
    }

    #[test]
    fn pipeline_worker_renders_config_with_queue_sinks_and_steps() {
        let worker: Worker = load("worker-pipeline.yaml");
        let config = render_config(&worker, &inputs()).expect("renders");
        assert_eq!(config.queue.name, "factory.telemetry");
        assert_eq!(
            config.queue.uri_file.to_str(),
            Some("/etc/tributary/secrets/telemetry-rabbitmq-credentials/uri")
        );
        assert_eq!(
            config.dead_letter.map(|d| d.routing_key).as_deref(),
            Some("factory.telemetry.dlq")
        );
        let Some(ProcessingConfig::Pipeline(pipeline)) = config.processing else {
            panic!("pipeline expected");
        };
        assert_eq!(pipeline.steps.len(), 3);
        assert_eq!(config.sinks[0].name(), "readings");
    }

    #[test]
    fn classic_queue_delivery_limit_reaches_the_worker_config_and_quorum_has_none() {
        use crate::crd::queue::QueueType;
        let worker: Worker = load("worker-pipeline.yaml");
        let mut queue: crate::crd::Queue = load("queue-managed.yaml");
        let resolved = |queue: &crate::crd::Queue| ResolvedQueue {
            delivery_limit: crate::build::queue::worker_delivery_limit(queue),
            ..inputs().queue
        };
        // Quorum: the broker counts (x-delivery-limit); the worker does not.
        let quorum = WorkerInputs {
            queue: resolved(&queue),
            ..inputs()
        };
        let config = render_config(&worker, &quorum).expect("renders");
        assert_eq!(config.queue.delivery_limit, None);
        // Classic: the worker counts, with the Queue's limit (3 in the fixture).
        queue.spec.queue_type = QueueType::Classic;
        let classic = WorkerInputs {
            queue: resolved(&queue),
            ..inputs()
        };
        let config = render_config(&worker, &classic).expect("renders");
        assert_eq!(config.queue.delivery_limit, Some(3));
        let text = crate::build::render_yaml("worker", &config).expect("yaml");
        assert!(text.contains("deliveryLimit: 3"), "{text}");
    }

    #[test]
    fn worker_of_a_queue_without_dlq_renders_no_dead_letter_target() {
        let worker: Worker = load("worker-pipeline.yaml");
        let mut opted_out = inputs();
        opted_out.queue.dead_letter_queue = None;
        let config = render_config(&worker, &opted_out).expect("renders");
        assert_eq!(config.dead_letter, None);
    }

    #[test]
    fn prefetch_defaults_to_the_largest_sink_batch_and_keeps_the_workers_own() {
        let mut worker: Worker = load("worker-pipeline.yaml");
        assert_eq!(worker.spec.prefetch, None);
        let config = render_config(&worker, &inputs()).expect("renders");
        // The PostgreSQL sink's default batch is 1000 messages.
        assert_eq!(config.sinks[0].batch().max_messages, 1000);
        assert_eq!(config.queue.prefetch, 1000);
        assert_eq!(prefetch(None, &[]), Ok(DEFAULT_PREFETCH));

        let mut huge = config.sinks[0].clone();
        if let SinkConfig::Postgres(postgres) = &mut huge {
            postgres.batch.max_messages = 100_000;
        }
        assert_eq!(prefetch(None, &[huge]), Ok(u16::MAX));

        worker.spec.prefetch = Some(200);
        let config = render_config(&worker, &inputs()).expect("renders");
        assert_eq!(config.queue.prefetch, 200);
        for bad in [0, 70_000] {
            assert!(prefetch(Some(bad), &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn worker_deployment_mounts_queue_and_sink_secrets_and_passes_restricted() {
        let worker: Worker = load("worker-pipeline.yaml");
        let children = build(&worker, &inputs()).expect("builds");
        let spec = children.deployment.spec.expect("spec");
        assert_eq!(spec.replicas, Some(2));
        // Once the autoscaler owns the replica count, the operator leaves it out.
        let handed_over = WorkerInputs {
            set_replicas: false,
            ..inputs()
        };
        let without = build(&worker, &handed_over).expect("builds");
        assert_eq!(without.deployment.spec.expect("spec").replicas, None);
        let pod = spec.template.spec.expect("pod");
        crate::build::tests_support::assert_restricted(&pod);
        let mounts: Vec<_> = pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert!(mounts.contains(&"/etc/tributary/secrets/telemetry-rabbitmq-credentials"));
        assert!(mounts.contains(&"/etc/tributary/secrets/pg"));
        assert!(mounts.contains(&"/etc/tributary/config"));
        let text = &children.config_map.data.expect("data")[CONFIG_KEY];
        // The data plane reads YAML through JSON values: no YAML tags allowed.
        assert!(!text.contains('!'), "{text}");
        let value: serde_json::Value = serde_yaml::from_str(text).expect("YAML");
        let parsed: WorkerConfig = serde_json::from_value(value).expect("worker can parse it");
        assert_eq!(parsed.queue.name, "factory.telemetry");
    }

    #[test]
    fn secret_change_rolls_the_worker_pods() {
        let worker: Worker = load("worker-pipeline.yaml");
        let hash = |inputs: &WorkerInputs| {
            build(&worker, inputs)
                .expect("builds")
                .deployment
                .spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.annotations)
                .map(|a| a[crate::build::CONFIG_HASH_ANNOTATION].clone())
        };
        let mut changed = inputs();
        changed.secrets.insert(
            "pg".into(),
            BTreeMap::from([("url".into(), b"postgres://y".to_vec())]),
        );
        assert_ne!(hash(&inputs()), hash(&changed));
    }

    #[test]
    fn custom_container_runs_beside_the_runtime() {
        let worker: Worker = load("worker-container.yaml");
        let config = render_config(&worker, &inputs()).expect("renders");
        let Some(ProcessingConfig::Container(container)) = config.processing else {
            panic!("container expected");
        };
        assert_eq!(container.url, "http://127.0.0.1:8000/process");
        let pod = build(&worker, &inputs())
            .expect("builds")
            .deployment
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod");
        let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["worker", "processor"]);
        assert_eq!(
            pod.containers[1].image.as_deref(),
            Some("example/enricher:1.0")
        );
        crate::build::tests_support::assert_restricted(&pod);
    }

    #[test]
    fn invalid_cel_is_a_clear_validation_error() {
        let mut worker: Worker = load("worker-pipeline.yaml");
        worker.spec.pipeline[0].filter = Some("payload.temp >".into());
        let error = validate(&worker).expect_err("invalid");
        assert!(
            error
                .to_string()
                .contains("spec.pipeline[0].filter: invalid CEL"),
            "{error}"
        );
    }

    #[test]
    fn pipeline_and_container_together_are_invalid() {
        let mut worker: Worker = load("worker-container.yaml");
        let pipeline: Worker = load("worker-pipeline.yaml");
        worker.spec.pipeline = pipeline.spec.pipeline;
        assert!(validate(&worker).is_err());
    }

    #[test]
    fn replicas_are_clamped_to_the_scaling_bounds() {
        let mut worker: Worker = load("worker-pipeline.yaml");
        worker.spec.scaling.enabled = false;
        worker.spec.replicas = Some(50);
        assert_eq!(desired_replicas(&worker), 5);
        worker.spec.replicas = None;
        assert_eq!(desired_replicas(&worker), 2);
        // Autoscaled: spec.replicas is ignored; the autoscaler starts from the minimum.
        worker.spec.scaling.enabled = true;
        worker.spec.replicas = Some(4);
        assert_eq!(desired_replicas(&worker), 2);
        assert_eq!(
            selector_string(&worker).expect("selector"),
            "app.kubernetes.io/instance=ingest,app.kubernetes.io/name=worker"
        );
    }
}
