//! The children of a managed RabbitMQ: credentials Secret, configuration, headless and
//! client Services, and the StatefulSet of broker nodes.

use crate::build::{
    child_meta, hash_parts, name_and_namespace, restricted_container_security,
    restricted_pod_security, selector_labels, BuildError, CONFIG_HASH_ANNOTATION, OWNER_KIND_LABEL,
    OWNER_LABEL,
};
use crate::crd::queue::{DeletionPolicy, ManagedBroker};
use crate::crd::Queue;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret, SecretKeySelector,
    SecretVolumeSource, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use std::collections::BTreeMap;

use super::{
    Credentials, ManagedNames, AMQP_PORT, KEY_COOKIE, KEY_MANAGEMENT_URI, KEY_PASSWORD, KEY_URI,
    KEY_USERNAME, MANAGEMENT_PORT, RABBITMQ_UID,
};

/// The children of a managed broker.
#[derive(Clone, Debug, PartialEq)]
pub struct ManagedChildren {
    /// Generated credentials.
    pub secret: Secret,
    /// Broker configuration files.
    pub config_map: ConfigMap,
    /// Per-node DNS names.
    pub headless_service: Service,
    /// AMQP and management endpoint for clients.
    pub service: Service,
    /// The broker nodes.
    pub stateful_set: StatefulSet,
}

const COMPONENT: &str = "rabbitmq";

/// Metadata of a managed broker's child. Under `deletionPolicy: Delete` the Queue owns it
/// (garbage-collected once the finalizer deleted the broker queue); under `Retain` it carries
/// no owner reference, only the labels naming the Queue, so the broker, its storage and
/// credentials outlive the Queue and a new Queue of the same name adopts them.
fn broker_meta(queue: &Queue, name: &str) -> Result<ObjectMeta, BuildError> {
    let mut meta = child_meta(queue, name, COMPONENT)?;
    if queue.spec.deletion_policy != DeletionPolicy::Delete {
        meta.owner_references = None;
    }
    Ok(meta)
}

/// Whether an existing object is a managed broker child of this Queue: owned by it, or
/// (kept under `Retain`) owned by no Queue and labelled with its name.
pub fn belongs_to(meta: &ObjectMeta, queue: &Queue) -> bool {
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    if owners
        .iter()
        .any(|o| Some(&o.uid) == queue.metadata.uid.as_ref())
    {
        return true;
    }
    let labels = meta.labels.clone().unwrap_or_default();
    !owners.iter().any(|o| o.kind == "Queue")
        && labels.get(OWNER_KIND_LABEL).map(String::as_str) == Some("queue")
        && labels.get(OWNER_LABEL) == queue.metadata.name.as_ref()
        && labels.get("app.kubernetes.io/name").map(String::as_str) == Some(COMPONENT)
}

/// Builds every child of a managed broker.
pub fn build_managed(
    queue: &Queue,
    managed: &ManagedBroker,
    credentials: &Credentials,
    default_image: &str,
) -> Result<ManagedChildren, BuildError> {
    let (name, namespace) = name_and_namespace(queue)?;
    let names = ManagedNames::for_queue(&name);
    let config = render_config(&names, &namespace, managed.replicas);
    Ok(ManagedChildren {
        secret: credentials_secret(queue, &names, &namespace, credentials)?,
        headless_service: headless_service(queue, &names)?,
        service: client_service(queue, &names)?,
        stateful_set: stateful_set(queue, managed, &names, &namespace, &config, default_image)?,
        config_map: ConfigMap {
            metadata: broker_meta(queue, &names.config)?,
            data: Some(config),
            ..ConfigMap::default()
        },
    })
}

fn credentials_secret(
    queue: &Queue,
    names: &ManagedNames,
    namespace: &str,
    credentials: &Credentials,
) -> Result<Secret, BuildError> {
    let host = format!("{}.{namespace}.svc", names.broker);
    let user = &credentials.username;
    let password = &credentials.password;
    let data = BTreeMap::from([
        (KEY_USERNAME.to_owned(), user.clone()),
        (KEY_PASSWORD.to_owned(), password.clone()),
        (KEY_COOKIE.to_owned(), credentials.erlang_cookie.clone()),
        (
            KEY_URI.to_owned(),
            format!("amqp://{user}:{password}@{host}:{AMQP_PORT}/%2f"),
        ),
        (
            KEY_MANAGEMENT_URI.to_owned(),
            format!("http://{user}:{password}@{host}:{MANAGEMENT_PORT}"),
        ),
    ]);
    Ok(Secret {
        metadata: broker_meta(queue, &names.credentials)?,
        // `data`, not `stringData`: server-side apply then owns exactly the stored fields.
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    })
}

/// `rabbitmq.conf` and `enabled_plugins`.
fn render_config(names: &ManagedNames, namespace: &str, replicas: i32) -> BTreeMap<String, String> {
    let mut conf = format!(
        "# Rendered by tributary-operator; edits are overwritten.\n\
         listeners.tcp.default = {AMQP_PORT}\n\
         management.tcp.port = {MANAGEMENT_PORT}\n\
         log.console = true\n\
         log.file = false\n\
         total_memory_available_override_value = 1073741824\n\
         vm_memory_high_watermark.relative = 0.6\n"
    );
    if replicas > 1 {
        conf.push_str("cluster_formation.peer_discovery_backend = classic_config\n");
        for ordinal in 0..replicas {
            conf.push_str(&format!(
                "cluster_formation.classic_config.nodes.{} = rabbit@{}-{ordinal}.{}.{namespace}.svc.cluster.local\n",
                ordinal + 1,
                names.broker,
                names.headless
            ));
        }
    }
    BTreeMap::from([
        ("rabbitmq.conf".to_owned(), conf),
        (
            "enabled_plugins".to_owned(),
            "[rabbitmq_management].\n".to_owned(),
        ),
    ])
}

fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: number,
        target_port: Some(IntOrString::Int(number)),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

fn headless_service(queue: &Queue, names: &ManagedNames) -> Result<Service, BuildError> {
    let (name, _) = name_and_namespace(queue)?;
    Ok(Service {
        metadata: broker_meta(queue, &names.headless)?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&name, COMPONENT)),
            ports: Some(vec![
                port("epmd", 4369),
                port("amqp", AMQP_PORT),
                port("dist", 25672),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

fn client_service(queue: &Queue, names: &ManagedNames) -> Result<Service, BuildError> {
    let (name, _) = name_and_namespace(queue)?;
    Ok(Service {
        metadata: broker_meta(queue, &names.broker)?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(&name, COMPONENT)),
            ports: Some(vec![
                port("amqp", AMQP_PORT),
                port("management", MANAGEMENT_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    }
}

fn mount(name: &str, path: &str, sub_path: Option<&str>, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        sub_path: sub_path.map(str::to_owned),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

fn tcp_probe(port: i32, initial_delay: i32, period: i32, failures: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port),
            ..TCPSocketAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(5),
        ..Probe::default()
    }
}

fn stateful_set(
    queue: &Queue,
    managed: &ManagedBroker,
    names: &ManagedNames,
    namespace: &str,
    config: &BTreeMap<String, String>,
    default_image: &str,
) -> Result<StatefulSet, BuildError> {
    let (name, _) = name_and_namespace(queue)?;
    let meta = broker_meta(queue, &names.broker)?;
    let image = managed
        .image
        .clone()
        .unwrap_or_else(|| default_image.to_owned());
    let config_hash = hash_parts(config.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
    let mut envs = vec![
        secret_env("RABBITMQ_DEFAULT_USER", &names.credentials, KEY_USERNAME),
        secret_env("RABBITMQ_DEFAULT_PASS", &names.credentials, KEY_PASSWORD),
        env("HOME", "/var/lib/rabbitmq"),
        env("RABBITMQ_LOGS", "-"),
    ];
    if managed.replicas > 1 {
        // Clustered nodes need names other nodes can resolve: the pod's DNS name under the
        // headless Service.
        envs.push(EnvVar {
            name: "POD_NAME".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
        envs.push(env("RABBITMQ_USE_LONGNAME", "true"));
        envs.push(env(
            "RABBITMQ_NODENAME",
            &format!(
                "rabbit@$(POD_NAME).{}.{namespace}.svc.cluster.local",
                names.headless
            ),
        ));
    }
    let data_mount = mount("data", "/var/lib/rabbitmq", None, false);
    // The cookie must be a private file in $HOME before the node starts.
    let init = Container {
        name: "erlang-cookie".to_owned(),
        image: Some(image.clone()),
        command: Some(vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "cp /tmp/cookie/.erlang.cookie /var/lib/rabbitmq/.erlang.cookie && \
             chmod 600 /var/lib/rabbitmq/.erlang.cookie"
                .to_owned(),
        ]),
        volume_mounts: Some(vec![
            data_mount.clone(),
            mount("cookie", "/tmp/cookie", None, true),
        ]),
        security_context: Some(restricted_container_security(false)),
        ..Container::default()
    };
    let broker = Container {
        name: "rabbitmq".to_owned(),
        image: Some(image),
        env: Some(envs),
        ports: Some(vec![
            ContainerPort {
                name: Some("amqp".to_owned()),
                container_port: AMQP_PORT,
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("management".to_owned()),
                container_port: MANAGEMENT_PORT,
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("epmd".to_owned()),
                container_port: 4369,
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("dist".to_owned()),
                container_port: 25672,
                ..ContainerPort::default()
            },
        ]),
        volume_mounts: Some(vec![
            data_mount,
            mount(
                "config",
                "/etc/rabbitmq/rabbitmq.conf",
                Some("rabbitmq.conf"),
                true,
            ),
            mount(
                "config",
                "/etc/rabbitmq/enabled_plugins",
                Some("enabled_plugins"),
                true,
            ),
        ]),
        // A node boots in 10-35 s here, rejoining a running cluster included. Debian's
        // RabbitMQ 3.10.8 sometimes hangs for good while rejoining (rabbitmq-server #6034):
        // the startup probe restarts a node whose AMQP port is still closed two minutes
        // after it started, and the restarted node rejoins.
        startup_probe: Some(tcp_probe(AMQP_PORT, 5, 5, 24)),
        readiness_probe: Some(tcp_probe(AMQP_PORT, 0, 5, 3)),
        liveness_probe: Some(tcp_probe(AMQP_PORT, 0, 10, 6)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("100m".to_owned())),
                ("memory".to_owned(), Quantity("256Mi".to_owned())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity("1Gi".to_owned()),
            )])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(restricted_container_security(false)),
        ..Container::default()
    };
    let mut volumes = vec![
        Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.config.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "cookie".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names.credentials.clone()),
                items: Some(vec![KeyToPath {
                    key: KEY_COOKIE.to_owned(),
                    path: ".erlang.cookie".to_owned(),
                    mode: Some(0o400),
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let claims = match &managed.storage {
        Some(storage) => Some(vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                storage_class_name: storage.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_owned(),
                        Quantity(storage.size.clone()),
                    )])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        }]),
        None => {
            volumes.push(Volume {
                name: "data".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            });
            None
        }
    };
    let pod_labels = meta.labels.clone();
    Ok(StatefulSet {
        metadata: meta,
        spec: Some(StatefulSetSpec {
            replicas: Some(managed.replicas),
            service_name: Some(names.headless.clone()),
            pod_management_policy: Some("Parallel".to_owned()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name, COMPONENT)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: pod_labels,
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_owned(),
                        config_hash,
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    security_context: Some(restricted_pod_security(RABBITMQ_UID)),
                    termination_grace_period_seconds: Some(60),
                    init_containers: Some(vec![init]),
                    containers: vec![broker],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: claims,
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    })
}

#[cfg(test)]
mod tests {
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
        let env: Vec<_> = broker
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        assert!(env.contains(&"RABBITMQ_DEFAULT_USER") && env.contains(&"RABBITMQ_DEFAULT_PASS"));
        let mounts: Vec<_> = broker
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert!(mounts.contains(&"/var/lib/rabbitmq"));
        assert!(mounts.contains(&"/etc/rabbitmq/rabbitmq.conf"));
        assert!(
            pod.volumes.iter().flatten().any(|v| v.empty_dir.is_some()),
            "ephemeral data"
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
        let children = build_managed(&queue, &managed, &credentials(), "rabbitmq:3-management")
            .expect("builds");
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
        let owned_by_other =
            build_managed(&other, &managed, &credentials(), "img").expect("builds");
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
}
