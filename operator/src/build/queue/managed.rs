//! The children of a managed RabbitMQ: credentials Secret, configuration, headless and
//! client Services, and the StatefulSet of broker nodes.

use crate::build::pod::{resources, BROKER_RESOURCES, INIT_RESOURCES};
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
    PodSpec, PodTemplateSpec, ResourceRequirements, Secret, SecretVolumeSource, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
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
use crate::build::pod::tcp_probe;

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

pub(super) const COMPONENT: &str = "rabbitmq";

/// Metadata of a managed broker's child. Under `deletionPolicy: Delete` the Queue owns it
/// (garbage-collected once the finalizer deleted the broker queue); under `Retain` it carries
/// no owner reference, only the labels naming the Queue, so the broker, its storage and
/// credentials outlive the Queue and a new Queue of the same name adopts them.
pub(super) fn broker_meta(queue: &Queue, name: &str) -> Result<ObjectMeta, BuildError> {
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

/// The Secret key holding the broker's administrator as a `conf.d` file, mounted as a file
/// so the credentials never sit in the container's environment.
const KEY_DEFAULT_USER_CONF: &str = "default-user.conf";

/// `default_user`/`default_pass` in RabbitMQ's configuration syntax. The generated user name
/// and password are alphanumeric, so neither can end the line early.
fn default_user_conf(user: &str, password: &str) -> String {
    format!("default_user = {user}\ndefault_pass = {password}\n")
}

fn credentials_secret(
    queue: &Queue,
    names: &ManagedNames,
    namespace: &str,
    credentials: &Credentials,
) -> Result<Secret, BuildError> {
    let host = names.host(namespace);
    let user = &credentials.username;
    let password = &credentials.password;
    let data = BTreeMap::from([
        (KEY_USERNAME.to_owned(), user.clone()),
        (KEY_PASSWORD.to_owned(), password.clone()),
        (KEY_COOKIE.to_owned(), credentials.erlang_cookie.clone()),
        (
            KEY_DEFAULT_USER_CONF.to_owned(),
            default_user_conf(user, password),
        ),
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

/// The environment of a broker node (no secrets: those are files), and for a cluster the
/// long node names other nodes resolve.
fn broker_env(managed: &ManagedBroker, names: &ManagedNames, namespace: &str) -> Vec<EnvVar> {
    let mut envs = vec![env("HOME", "/var/lib/rabbitmq"), env("RABBITMQ_LOGS", "-")];
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
    envs
}

fn data_mount() -> VolumeMount {
    mount("data", "/var/lib/rabbitmq", None, false)
}

/// The init container copying the Erlang cookie: it must be a private file in $HOME before
/// the node starts.
fn erlang_cookie_init(image: &str) -> Container {
    Container {
        name: "erlang-cookie".to_owned(),
        image: Some(image.to_owned()),
        command: Some(vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "cp /tmp/cookie/.erlang.cookie /var/lib/rabbitmq/.erlang.cookie && \
             chmod 600 /var/lib/rabbitmq/.erlang.cookie"
                .to_owned(),
        ]),
        volume_mounts: Some(vec![
            data_mount(),
            mount("cookie", "/tmp/cookie", None, true),
        ]),
        resources: Some(resources(&INIT_RESOURCES, None)),
        security_context: Some(restricted_container_security(true)),
        ..Container::default()
    }
}

fn container_port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: number,
        ..ContainerPort::default()
    }
}

/// The broker container: AMQP, management and clustering ports, data and config mounts,
/// probes and resources.
fn broker_container(image: &str, envs: Vec<EnvVar>, resources: ResourceRequirements) -> Container {
    Container {
        name: "rabbitmq".to_owned(),
        image: Some(image.to_owned()),
        env: Some(envs),
        ports: Some(vec![
            container_port("amqp", AMQP_PORT),
            container_port("management", MANAGEMENT_PORT),
            container_port("epmd", 4369),
            container_port("dist", 25672),
        ]),
        volume_mounts: Some(vec![
            data_mount(),
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
            // The administrator as a conf.d file: RabbitMQ reads every file there.
            mount("default-user", "/etc/rabbitmq/conf.d", None, true),
            // The root file system is read-only: scratch space for Erlang and the scripts, and
            // a directory for what RabbitMQ writes as files despite console logging (its
            // upgrade log, a crash dump).
            mount("tmp", "/tmp", None, false),
            mount("logs", "/var/log/rabbitmq", None, false),
        ]),
        // A node boots in 10-35 s here, rejoining a running cluster included. Debian's
        // RabbitMQ 3.10.8 sometimes hangs for good while rejoining (rabbitmq-server #6034):
        // the startup probe restarts a node whose AMQP port is still closed two minutes
        // after it started, and the restarted node rejoins.
        startup_probe: Some(tcp_probe(AMQP_PORT, 5, 5, 24)),
        readiness_probe: Some(tcp_probe(AMQP_PORT, 0, 5, 3)),
        liveness_probe: Some(tcp_probe(AMQP_PORT, 0, 10, 6)),
        resources: Some(resources),
        security_context: Some(restricted_container_security(true)),
        ..Container::default()
    }
}

/// The config files, the administrator and the Erlang cookie (secrets readable by their
/// owner only), and scratch space.
fn config_and_cookie_volumes(names: &ManagedNames) -> Vec<Volume> {
    vec![
        Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.config.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        secret_file_volume(
            names,
            "default-user",
            KEY_DEFAULT_USER_CONF,
            "10-default-user.conf",
        ),
        scratch_volume("tmp"),
        scratch_volume("logs"),
        secret_file_volume(names, "cookie", KEY_COOKIE, ".erlang.cookie"),
    ]
}

/// An `emptyDir` volume for files that live as long as the pod.
fn scratch_volume(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// One key of the credentials Secret as a file readable by its owner only.
fn secret_file_volume(names: &ManagedNames, volume: &str, key: &str, path: &str) -> Volume {
    Volume {
        name: volume.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(names.credentials.clone()),
            items: Some(vec![KeyToPath {
                key: key.to_owned(),
                path: path.to_owned(),
                mode: Some(0o400),
            }]),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Where the broker keeps its data: with `storage`, a claim template per node (the claims
/// outlive the pods); without, an `emptyDir` volume. Exactly one of the two is set.
fn data_storage(managed: &ManagedBroker) -> (Option<Vec<PersistentVolumeClaim>>, Option<Volume>) {
    let Some(storage) = &managed.storage else {
        return (
            None,
            Some(Volume {
                name: "data".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }),
        );
    };
    let claim = PersistentVolumeClaim {
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
    };
    (Some(vec![claim]), None)
}

/// How a broker whose data is an `emptyDir` starts. A start that failed half-way through
/// joining leaves `schema_upgrade_lock` in the node's directory, and every later start of the
/// container (the emptyDir outlives it) refuses to boot with `previous_upgrade_failed`: the
/// pod crash-loops for good. That directory holds nothing a new pod would not lose anyway
/// (its queues' replicas come back from the other nodes), so it is cleared and the node
/// joins as a fresh one. The entrypoint is the official image's (and the stand-in's).
const EPHEMERAL_START: &str = r#"dir="/var/lib/rabbitmq/mnesia/${RABBITMQ_NODENAME:-rabbit@$(hostname -s)}"
if [ -e "$dir/schema_upgrade_lock" ]; then
  echo "tributary: an earlier start of this node failed half-way (schema_upgrade_lock); its ephemeral data is cleared and it joins the cluster afresh"
  rm -rf "$dir" "$dir-"*
fi
exec docker-entrypoint.sh rabbitmq-server"#;

/// The broker container's command: the image's own, or [`EPHEMERAL_START`] when the data
/// is an `emptyDir`.
fn broker_command(ephemeral: bool) -> Option<Vec<String>> {
    ephemeral.then(|| vec!["sh".to_owned(), "-c".to_owned(), EPHEMERAL_START.to_owned()])
}

/// The broker pod: the cookie init container, the broker, and its volumes.
fn broker_pod_spec(
    managed: &ManagedBroker,
    names: &ManagedNames,
    namespace: &str,
    image: &str,
    data_volume: Option<Volume>,
) -> PodSpec {
    let mut volumes = config_and_cookie_volumes(names);
    let ephemeral = data_volume.is_some();
    volumes.extend(data_volume);
    let mut broker = broker_container(
        image,
        broker_env(managed, names, namespace),
        resources(&BROKER_RESOURCES, managed.resources.as_ref()),
    );
    broker.command = broker_command(ephemeral);
    PodSpec {
        automount_service_account_token: Some(false),
        security_context: Some(restricted_pod_security(RABBITMQ_UID)),
        termination_grace_period_seconds: Some(60),
        init_containers: Some(vec![erlang_cookie_init(image)]),
        containers: vec![broker],
        volumes: Some(volumes),
        ..PodSpec::default()
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
    let image = managed.image.as_deref().unwrap_or(default_image);
    let config_hash = hash_parts(config.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
    let (claims, data_volume) = data_storage(managed);
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
                spec: Some(broker_pod_spec(
                    managed,
                    names,
                    namespace,
                    image,
                    data_volume,
                )),
            },
            volume_claim_templates: claims,
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    })
}

#[cfg(test)]
mod tests;
