use super::*;
use crate::build::fixtures::load;
use crate::build::queue::access::BrokerCredentials;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn inputs() -> WorkerInputs {
    WorkerInputs {
        queue: ResolvedQueue {
            ca: None,
            broker_queue: "factory.telemetry".into(),
            uri: SecretKeyRef {
                name: "ingest-worker-amqp-telemetry".into(),
                key: "uri".into(),
            },
            credentials: BrokerCredentials::Workload,
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
        Some("/etc/tributary/secrets/ingest-worker-amqp-telemetry/uri")
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
        ca: None,
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
    assert!(mounts.contains(&"/etc/tributary/secrets/ingest-worker-amqp-telemetry"));
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

#[test]
fn a_worker_never_mounts_a_managed_brokers_administrator_secret() {
    let worker: Worker = load("worker-pipeline.yaml");
    let mut with_admin = inputs();
    with_admin.queue.uri.name = "telemetry-rabbitmq-credentials".into();
    with_admin.queue.credentials = BrokerCredentials::Administrator;
    assert!(!mounted_secrets(&with_admin).contains("telemetry-rabbitmq-credentials"));
    let error = build(&worker, &with_admin).expect_err("refused");
    assert!(
        matches!(&error, BuildError::AdministratorSecret(name) if name == "telemetry-rabbitmq-credentials"),
        "{error}"
    );
    // Nor a `queue` sink's target broker's administrator Secret.
    let mut target_admin = inputs();
    target_admin.sinks = vec![(
        load("sink-queue.yaml"),
        Some(crate::build::sink::ResolvedTarget {
            ca: None,
            broker_queue: "factory.alerts".into(),
            uri: SecretKeyRef {
                name: "alerts-rabbitmq-credentials".into(),
                key: "uri".into(),
            },
            credentials: BrokerCredentials::Administrator,
        }),
    )];
    assert!(!mounted_secrets(&target_admin).contains("alerts-rabbitmq-credentials"));
    assert!(build(&worker, &target_admin).is_err());
}

#[test]
fn a_sinks_ca_secret_is_mounted_read_only_and_named_in_the_config() {
    let worker: Worker = load("worker-pipeline.yaml");
    let mut sink: crate::crd::sink::Sink = load("sink-postgres.yaml");
    if let Some(postgres) = sink.spec.postgres.as_mut() {
        postgres.ca_secret_ref = Some(SecretKeyRef {
            name: "pg-ca".into(),
            key: "ca.crt".into(),
        });
    }
    let with_ca = WorkerInputs {
        sinks: vec![(sink, None)],
        ..inputs()
    };
    let children = build(&worker, &with_ca).expect("builds");
    let pod = children
        .deployment
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod");
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/etc/tributary/secrets/pg-ca")
        .expect("the CA secret is mounted");
    assert_eq!(mount.read_only, Some(true));
    let text = &children.config_map.data.expect("data")[CONFIG_KEY];
    assert!(
        text.contains("caFile: /etc/tributary/secrets/pg-ca/ca.crt"),
        "{text}"
    );
}

#[test]
fn an_over_long_cel_expression_is_a_validation_error() {
    let mut worker: Worker = load("worker-pipeline.yaml");
    worker.spec.pipeline[0].filter = Some(format!("payload.v{}", " + 1".repeat(1100)));
    let error = validate(&worker).expect_err("too long").to_string();
    assert!(
        error.contains("spec.pipeline[0].filter: CEL expression refused")
            && error.contains("4096 allowed"),
        "{error}"
    );
}

#[test]
fn a_custom_container_is_probed_on_its_health_path_only_when_it_names_one() {
    let mut worker: Worker = load("worker-container.yaml");
    let processor = |worker: &Worker| {
        let children = build(worker, &inputs()).expect("builds");
        let pod = children
            .deployment
            .spec
            .and_then(|d| d.template.spec)
            .expect("pod");
        pod.containers
            .into_iter()
            .find(|c| c.name == "processor")
            .expect("processor container")
    };
    let unprobed = processor(&worker);
    assert_eq!(
        (unprobed.readiness_probe, unprobed.liveness_probe),
        (None, None)
    );
    if let Some(container) = worker.spec.container.as_mut() {
        container.health_path = Some("/healthz".into());
    }
    let probed = processor(&worker);
    for probe in [&probed.readiness_probe, &probed.liveness_probe] {
        let http = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("http probe");
        assert_eq!(http.path.as_deref(), Some("/healthz"));
        assert_eq!(http.port, IntOrString::String("processor".into()));
    }
}

#[test]
fn a_queues_private_broker_ca_is_mounted_and_named_for_the_queue_and_a_republish_target() {
    let worker: Worker = load("worker-pipeline.yaml");
    let ca = |name: &str| {
        Some(SecretKeyRef {
            name: name.into(),
            key: "ca.crt".into(),
        })
    };
    let mut with_ca = inputs();
    with_ca.queue.ca = ca("rabbit-ca");
    with_ca.sinks.push((
        load("sink-queue.yaml"),
        Some(crate::build::sink::ResolvedTarget {
            ca: ca("alerts-ca"),
            broker_queue: "factory.alerts".into(),
            uri: SecretKeyRef {
                name: "alerts-amqp".into(),
                key: "uri".into(),
            },
            credentials: BrokerCredentials::Supplied,
        }),
    ));
    let mounted = mounted_secrets(&with_ca);
    assert!(
        mounted.contains("rabbit-ca") && mounted.contains("alerts-ca"),
        "{mounted:?}"
    );
    let config = render_config(&worker, &with_ca).expect("renders");
    assert_eq!(
        config.queue.ca_file.as_deref().and_then(|p| p.to_str()),
        Some("/etc/tributary/secrets/rabbit-ca/ca.crt")
    );
    let republish = config.sinks.iter().find_map(|sink| match sink {
        contract::SinkConfig::Republish(r) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(
        republish
            .and_then(|r| r.ca_file)
            .as_deref()
            .and_then(|p| p.to_str()),
        Some("/etc/tributary/secrets/alerts-ca/ca.crt")
    );
    let children = build(&worker, &with_ca).expect("builds");
    let pod = children
        .deployment
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod");
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/etc/tributary/secrets/rabbit-ca")
        .expect("the broker CA secret is mounted");
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(
        render_config(&worker, &inputs())
            .expect("renders")
            .queue
            .ca_file,
        None
    );
}
