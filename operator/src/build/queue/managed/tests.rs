use super::super::{validate, BrokerPlan};
use super::*;
use crate::build::fixtures::load;

fn credentials() -> Credentials {
    Credentials {
        username: "tributary".into(),
        password: "s3cret".into(),
        erlang_cookie: "cookie".into(),
    }
}

fn managed_children(file: &str) -> ManagedChildren {
    let queue: Queue = load(file);
    let BrokerPlan::Managed(managed) = validate(&queue).expect("valid") else {
        panic!("fixture must be managed");
    };
    build_managed(&queue, &managed, &credentials(), "rabbitmq:3-management").expect("builds")
}

#[test]
fn managed_queue_builds_statefulset_services_secret_and_config() {
    let children = managed_children("queue-managed.yaml");
    let sts = children.stateful_set;
    assert_eq!(sts.metadata.name.as_deref(), Some("telemetry-rabbitmq"));
    let spec = sts.spec.expect("spec");
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.service_name.as_deref(),
        Some("telemetry-rabbitmq-nodes")
    );
    let pod = spec.template.spec.expect("pod");
    let broker = &pod.containers[0];
    assert_eq!(broker.image.as_deref(), Some("rabbitmq:3-management"));
    // Secrets are files, never environment variables, and the root file system is read-only.
    assert!(
        broker.env.iter().flatten().all(|e| e
            .value_from
            .as_ref()
            .is_none_or(|v| v.secret_key_ref.is_none())),
        "no secret in the environment: {:?}",
        broker.env
    );
    for container in pod.init_containers.iter().flatten().chain(&pod.containers) {
        let security = container
            .security_context
            .as_ref()
            .expect("security context");
        assert_eq!(
            security.read_only_root_filesystem,
            Some(true),
            "{}",
            container.name
        );
    }
    let mounts: Vec<_> = broker
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert!(mounts.contains(&"/var/lib/rabbitmq"));
    assert!(mounts.contains(&"/etc/rabbitmq/rabbitmq.conf"));
    assert!(mounts.contains(&"/etc/rabbitmq/conf.d") && mounts.contains(&"/tmp"));
    let volume = |name: &str| {
        pod.volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("volume {name}"))
    };
    assert!(volume("data").empty_dir.is_some(), "ephemeral data");
    // Ephemeral data: a node left half-upgraded by a failed start is cleared, not looped on.
    let command = broker.command.as_ref().expect("a start script").join(" ");
    assert!(
        command.contains("schema_upgrade_lock")
            && command.ends_with("exec docker-entrypoint.sh rabbitmq-server"),
        "{command}"
    );
    let default_user = volume("default-user")
        .secret
        .as_ref()
        .expect("a Secret volume");
    assert_eq!(
        default_user.secret_name.as_deref(),
        Some("telemetry-rabbitmq-credentials")
    );
    assert_eq!(
        children
            .headless_service
            .spec
            .expect("spec")
            .cluster_ip
            .as_deref(),
        Some("None")
    );
    let ports: Vec<i32> = children
        .service
        .spec
        .expect("spec")
        .ports
        .iter()
        .flatten()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, vec![5672, 15672]);
    let plugins = &children.config_map.data.expect("data")["enabled_plugins"];
    assert!(plugins.contains("rabbitmq_management"));
    let secret = children.secret.data.expect("data");
    assert_eq!(
        secret[KEY_URI].0,
        b"amqp://tributary:s3cret@telemetry-rabbitmq.factory.svc:5672/%2f"
    );
    assert_eq!(
        secret["default-user.conf"].0,
        b"default_user = tributary\ndefault_pass = s3cret\n"
    );
}

fn metas(children: &ManagedChildren) -> Vec<&ObjectMeta> {
    vec![
        &children.secret.metadata,
        &children.config_map.metadata,
        &children.headless_service.metadata,
        &children.service.metadata,
        &children.stateful_set.metadata,
    ]
}

#[test]
fn retain_leaves_the_broker_unowned_but_labelled_with_the_queue() {
    let queue: Queue = load("queue-managed.yaml");
    assert_eq!(queue.spec.deletion_policy, DeletionPolicy::Retain);
    let children = managed_children("queue-managed.yaml");
    for meta in metas(&children) {
        let name = meta.name.clone().unwrap_or_default();
        assert_eq!(meta.owner_references, None, "{name} must outlive the Queue");
        let labels = meta.labels.clone().expect("labels");
        assert_eq!(labels[OWNER_LABEL], "telemetry", "{name}");
        assert_eq!(labels[OWNER_KIND_LABEL], "queue", "{name}");
        assert!(belongs_to(meta, &queue), "{name}");
    }
    // Storage stays with the broker: the claims come from the StatefulSet's template.
    let ha = managed_children("queue-managed-ha.yaml");
    assert_eq!(ha.stateful_set.metadata.owner_references, None);
}

#[test]
fn delete_policy_makes_the_queue_own_its_broker() {
    let mut queue: Queue = load("queue-managed.yaml");
    queue.spec.deletion_policy = DeletionPolicy::Delete;
    let BrokerPlan::Managed(managed) = validate(&queue).expect("valid") else {
        panic!("managed");
    };
    let children =
        build_managed(&queue, &managed, &credentials(), "rabbitmq:3-management").expect("builds");
    for meta in metas(&children) {
        let owner = &meta.owner_references.as_ref().expect("owned")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("Queue", "telemetry", Some(true))
        );
        assert!(belongs_to(meta, &queue));
    }
}

#[test]
fn broker_children_of_other_queues_or_owners_do_not_belong() {
    let queue: Queue = load("queue-managed.yaml");
    let mut other: Queue = load("queue-managed.yaml");
    other.metadata.uid = Some("00000000-0000-0000-0000-000000000002".into());
    other.spec.deletion_policy = DeletionPolicy::Delete;
    let BrokerPlan::Managed(managed) = validate(&other).expect("valid") else {
        panic!("managed");
    };
    // Same name, owned by another Queue (another uid): not ours to delete.
    let owned_by_other = build_managed(&other, &managed, &credentials(), "img").expect("builds");
    assert!(!belongs_to(&owned_by_other.stateful_set.metadata, &queue));
    // Unowned, but labelled for another Queue.
    let mut foreign = managed_children("queue-managed.yaml").stateful_set.metadata;
    foreign
        .labels
        .as_mut()
        .expect("labels")
        .insert(OWNER_LABEL.into(), "other".into());
    assert!(!belongs_to(&foreign, &queue));
    // A user's object of the same name without our labels.
    let plain = ObjectMeta {
        name: Some("telemetry-rabbitmq".into()),
        ..ObjectMeta::default()
    };
    assert!(!belongs_to(&plain, &queue));
}

#[test]
fn three_replicas_form_a_cluster_with_long_names_and_persistent_storage() {
    let children = managed_children("queue-managed-ha.yaml");
    let conf = &children.config_map.data.expect("data")["rabbitmq.conf"];
    assert!(conf.contains("cluster_formation.classic_config.nodes.3 = rabbit@ha-rabbitmq-2.ha-rabbitmq-nodes.factory.svc.cluster.local"), "{conf}");
    let spec = children.stateful_set.spec.expect("spec");
    assert_eq!(spec.replicas, Some(3));
    let claims = spec.volume_claim_templates.expect("claims");
    let requests = claims[0]
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .expect("requests");
    assert_eq!(requests["storage"].0, "2Gi");
    let pod = spec.template.spec.expect("pod");
    // Persistent data is never cleared: the image's own start.
    assert_eq!(pod.containers[0].command, None);
    assert!(pod.containers[0]
        .env
        .iter()
        .flatten()
        .any(|e| e.name == "RABBITMQ_USE_LONGNAME"));
}

#[test]
fn a_broker_node_that_never_opens_its_port_is_restarted_within_two_minutes() {
    let pod = managed_children("queue-managed-ha.yaml")
        .stateful_set
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod");
    let startup = pod.containers[0]
        .startup_probe
        .as_ref()
        .expect("startup probe");
    let seconds = startup.initial_delay_seconds.unwrap_or(0)
        + startup.period_seconds.unwrap_or(10) * startup.failure_threshold.unwrap_or(3);
    assert!(seconds <= 125, "{seconds} s");
    // Well above the 10-35 s a node takes to boot or rejoin.
    assert!(seconds >= 90, "{seconds} s");
}

#[test]
fn broker_pod_passes_pod_security_restricted() {
    let pod = managed_children("queue-managed.yaml")
        .stateful_set
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod");
    crate::build::tests_support::assert_restricted(&pod);
}

#[test]
fn config_change_changes_the_pod_template_hash() {
    let one = managed_children("queue-managed.yaml").stateful_set;
    let three = managed_children("queue-managed-ha.yaml").stateful_set;
    let hash = |s: &StatefulSet| {
        s.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .map(|a| a[CONFIG_HASH_ANNOTATION].clone())
    };
    assert!(hash(&one).is_some());
    assert_ne!(hash(&one), hash(&three));
}
