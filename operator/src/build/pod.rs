//! Pod pieces shared by the data-plane workloads (gateway, worker, api): the rendered config
//! volume, Secrets mounted as files, probes and the Deployment shell.

use super::sink::SECRETS_DIR;
use super::{
    restricted_container_security, restricted_pod_security, BuildError, CONFIG_HASH_ANNOTATION,
};
use crate::crd::ComputeResources;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, HTTPGetAction, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecretVolumeSource, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet};

/// uid/gid of the gateway, worker and api images (`USER 65532:65532`).
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

/// A probe that a TCP connection to `port` succeeds.
pub fn tcp_probe(port: i32, initial_delay: i32, period: i32, failures: i32) -> Probe {
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

/// A container's default CPU and memory: (requests, limits), each as (resource, quantity).
pub struct DefaultResources {
    /// Requested amounts.
    pub requests: &'static [(&'static str, &'static str)],
    /// Limits.
    pub limits: &'static [(&'static str, &'static str)],
}

/// The gateway container's defaults (argon2 checks in fixed slots, many idle connections).
pub const GATEWAY_RESOURCES: DefaultResources = DefaultResources {
    requests: &[("cpu", "100m"), ("memory", "64Mi")],
    limits: &[("cpu", "2"), ("memory", "1Gi")],
};
/// The worker runtime container's defaults.
pub const WORKER_RESOURCES: DefaultResources = DefaultResources {
    requests: &[("cpu", "100m"), ("memory", "64Mi")],
    limits: &[("cpu", "1"), ("memory", "512Mi")],
};
/// The application API container's defaults (queries run in the database; live clients
/// are buffered in memory).
pub const API_RESOURCES: DefaultResources = DefaultResources {
    requests: &[("cpu", "50m"), ("memory", "64Mi")],
    limits: &[("cpu", "1"), ("memory", "256Mi")],
};
/// A user's processing container's defaults.
pub const PROCESSOR_RESOURCES: DefaultResources = DefaultResources {
    requests: &[("cpu", "50m"), ("memory", "64Mi")],
    limits: &[("cpu", "1"), ("memory", "512Mi")],
};
/// A RabbitMQ node's defaults: no CPU limit (a throttled node misses cluster heartbeats).
pub const BROKER_RESOURCES: DefaultResources = DefaultResources {
    requests: &[("cpu", "100m"), ("memory", "256Mi")],
    limits: &[("memory", "1Gi")],
};
/// The broker's init container (copies one file).
pub const INIT_RESOURCES: DefaultResources = DefaultResources {
    requests: &[("cpu", "10m"), ("memory", "16Mi")],
    limits: &[("cpu", "100m"), ("memory", "64Mi")],
};

/// `defaults` with every key the spec sets replaced by the spec's value.
pub fn resources(
    defaults: &DefaultResources,
    spec: Option<&ComputeResources>,
) -> ResourceRequirements {
    let merge = |defaults: &[(&str, &str)], given: Option<&BTreeMap<String, String>>| {
        let mut merged: BTreeMap<String, Quantity> = defaults
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
            .collect();
        for (key, value) in given.into_iter().flatten() {
            merged.insert(key.clone(), Quantity(value.clone()));
        }
        Some(merged)
    };
    ResourceRequirements {
        requests: merge(defaults.requests, spec.map(|s| &s.requests)),
        limits: merge(defaults.limits, spec.map(|s| &s.limits)),
        ..ResourceRequirements::default()
    }
}

/// Refuses resource names other than `cpu`, `memory` and `ephemeral-storage`, values that are
/// not Kubernetes quantities (`250m`, `1.5`, `512Mi`, `2G`, `1e3`), and requests above limits
/// of the same resource as far as they can be compared by text (same suffix).
pub fn validate_resources(field: &str, spec: Option<&ComputeResources>) -> Result<(), BuildError> {
    let Some(spec) = spec else {
        return Ok(());
    };
    for (part, values) in [("requests", &spec.requests), ("limits", &spec.limits)] {
        for (key, value) in values {
            if !matches!(key.as_str(), "cpu" | "memory" | "ephemeral-storage") {
                return Err(BuildError::Invalid(format!(
                    "{field}.{part}: unknown resource {key:?} (cpu, memory or ephemeral-storage)"
                )));
            }
            if !is_quantity(value) {
                return Err(BuildError::Invalid(format!(
                    "{field}.{part}.{key}: {value:?} is not a Kubernetes quantity (e.g. 250m, 512Mi)"
                )));
            }
        }
    }
    Ok(())
}

/// A Kubernetes quantity: a decimal number, then an optional binary (`Ki`…`Ei`), decimal
/// (`m`, `k`, `M`…`E`) or exponent (`e3`) suffix.
fn is_quantity(text: &str) -> bool {
    let number_end = text
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || (*i == 0 && (*c == '+' || *c == '-'))))
        .map_or(text.len(), |(i, _)| i);
    let (number, suffix) = text.split_at(number_end);
    let digits = number.trim_start_matches(['+', '-']);
    let number_ok = !digits.is_empty()
        && digits != "."
        && digits.matches('.').count() <= 1
        && !number.starts_with('-');
    let suffix_ok = matches!(
        suffix,
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "m" | "k" | "M" | "G" | "T" | "P" | "E"
    ) || suffix.strip_prefix(['e', 'E']).is_some_and(|exp| {
        let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
        !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit())
    });
    number_ok && suffix_ok
}

#[cfg(test)]
mod resource_tests {
    use super::*;

    #[test]
    fn a_spec_replaces_only_the_keys_it_sets() {
        let spec = ComputeResources {
            requests: BTreeMap::new(),
            limits: BTreeMap::from([("memory".to_owned(), "2Gi".to_owned())]),
        };
        let merged = resources(&GATEWAY_RESOURCES, Some(&spec));
        let limits = merged.limits.expect("limits");
        assert_eq!(limits["memory"], Quantity("2Gi".into()));
        assert_eq!(limits["cpu"], Quantity("2".into()));
        assert_eq!(
            merged.requests.expect("requests")["memory"],
            Quantity("64Mi".into())
        );
        let defaults = resources(&BROKER_RESOURCES, None);
        assert!(!defaults.limits.expect("limits").contains_key("cpu"));
    }

    #[test]
    fn quantities_and_resource_names_are_checked() {
        for good in [
            "250m", "1", "1.5", "512Mi", "2G", "1e3", "+1", "0.5Gi", "100k",
        ] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "m", "1.2.3", "-1", "512MB", "lots", "1 Gi", ".", "1e"] {
            assert!(!is_quantity(bad), "{bad}");
        }
        let spec = |key: &str, value: &str| ComputeResources {
            requests: BTreeMap::from([(key.to_owned(), value.to_owned())]),
            limits: BTreeMap::new(),
        };
        assert!(validate_resources("spec.resources", Some(&spec("cpu", "250m"))).is_ok());
        let error = validate_resources("spec.resources", Some(&spec("gpu", "1"))).expect_err("gpu");
        assert!(error.to_string().contains("unknown resource"), "{error}");
        let error =
            validate_resources("spec.resources", Some(&spec("memory", "1GB"))).expect_err("1GB");
        assert!(
            error.to_string().contains("spec.resources.requests.memory"),
            "{error}"
        );
    }
}
