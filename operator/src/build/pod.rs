//! Pod pieces shared by the data-plane workloads (gateway, worker): the rendered config
//! volume, Secrets mounted as files, probes and the Deployment shell.

use super::sink::SECRETS_DIR;
use super::{restricted_container_security, restricted_pod_security, CONFIG_HASH_ANNOTATION};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, HTTPGetAction, PodSpec, PodTemplateSpec, Probe,
    SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet};

/// uid/gid of the gateway and worker images (`USER 65532:65532`).
pub const DATA_PLANE_UID: i64 = 65532;
/// Folder where the rendered config ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/tributary/config";

/// Volumes and mounts for the config ConfigMap and every referenced Secret (each Secret
/// once, at `<SECRETS_DIR>/<name>/`).
pub fn config_and_secret_volumes(
    config_map: &str,
    secrets: &BTreeSet<String>,
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![Volume {
        name: "config".to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.to_owned(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "config".to_owned(),
        mount_path: CONFIG_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    for (index, secret) in secrets.iter().enumerate() {
        let volume = format!("secret-{index}");
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: format!("{SECRETS_DIR}/{secret}"),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    (volumes, mounts)
}

/// An HTTP GET probe on a named container port.
pub fn http_probe(path: &str, port: &str, initial_delay: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(port.to_owned()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(10),
        timeout_seconds: Some(3),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// The Deployment shell around data-plane containers: restricted pod security, selector,
/// config-hash annotation, no service-account token.
pub fn deployment(
    meta: ObjectMeta,
    selector: BTreeMap<String, String>,
    replicas: i32,
    config_hash: String,
    containers: Vec<Container>,
    volumes: Vec<Volume>,
) -> Deployment {
    let containers = containers
        .into_iter()
        .map(|mut c| {
            c.security_context = Some(restricted_container_security(true));
            c
        })
        .collect();
    let pod_labels = meta.labels.clone();
    Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
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
                    enable_service_links: Some(false),
                    security_context: Some(restricted_pod_security(DATA_PLANE_UID)),
                    termination_grace_period_seconds: Some(30),
                    containers,
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}
