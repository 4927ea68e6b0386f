//! Pod Security "restricted", as the examples must pass it.

use super::Object;
use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{Map, Value};

/// The pod spec of a workload object, if it has one.
pub fn pod_spec_value(object: &Object) -> Option<&Value> {
    let value = &object.value;
    let spec = match object.kind() {
        "Pod" => value.get("spec"),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            value.pointer("/spec/template/spec")
        }
        "CronJob" => value.pointer("/spec/jobTemplate/spec/template/spec"),
        _ => None,
    };
    spec.filter(|s| s.is_object())
}

/// Problems a pod spec has under Pod Security "restricted" (plus one practical rule:
/// third-party images get a numeric `runAsUser`, since the kubelet cannot prove that an
/// image's named or root `USER` is non-root).
pub fn restricted_violations(who: &str, pod_value: &Value) -> Vec<String> {
    let pod: PodSpec = match serde_json::from_value(pod_value.clone()) {
        Ok(pod) => pod,
        Err(e) => return vec![format!("{who}: pod spec does not parse: {e}")],
    };
    let mut problems = Vec::new();
    let mut fail = |what: String| problems.push(format!("{who}: {what}"));
    let pod_sc = pod.security_context.clone().unwrap_or_default();
    if pod.host_network == Some(true) || pod.host_pid == Some(true) || pod.host_ipc == Some(true) {
        fail("uses host namespaces".into());
    }
    let allowed_volumes = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for volume in pod_value["volumes"].as_array().into_iter().flatten() {
        for key in volume.as_object().into_iter().flat_map(Map::keys) {
            if key != "name" && !allowed_volumes.contains(&key.as_str()) {
                fail(format!("volume type {key} is not allowed"));
            }
        }
    }
    let pod_seccomp = pod_sc.seccomp_profile.as_ref().map(|p| p.type_.clone());
    let containers = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    for container in containers {
        let name = &container.name;
        let sc = container.security_context.clone().unwrap_or_default();
        if sc.allow_privilege_escalation != Some(false) {
            fail(format!(
                "container {name}: allowPrivilegeEscalation must be false"
            ));
        }
        if sc.privileged == Some(true) {
            fail(format!("container {name}: privileged"));
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        if !caps.drop.unwrap_or_default().iter().any(|c| c == "ALL") {
            fail(format!(
                "container {name}: capabilities.drop must contain ALL"
            ));
        }
        if caps
            .add
            .unwrap_or_default()
            .iter()
            .any(|c| c != "NET_BIND_SERVICE")
        {
            fail(format!("container {name}: adds capabilities"));
        }
        if sc.run_as_non_root.or(pod_sc.run_as_non_root) != Some(true) {
            fail(format!("container {name}: runAsNonRoot must be true"));
        }
        let uid = sc.run_as_user.or(pod_sc.run_as_user);
        if uid == Some(0) {
            fail(format!("container {name}: runs as uid 0"));
        }
        let image = container.image.clone().unwrap_or_default();
        if uid.is_none() && !image.starts_with("tributary/") {
            fail(format!(
                "container {name}: image {image} needs a numeric runAsUser (e.g. 999)"
            ));
        }
        let seccomp = sc
            .seccomp_profile
            .as_ref()
            .map(|p| p.type_.clone())
            .or_else(|| pod_seccomp.clone());
        if !matches!(seccomp.as_deref(), Some("RuntimeDefault" | "Localhost")) {
            fail(format!(
                "container {name}: seccompProfile must be RuntimeDefault"
            ));
        }
        for port in container.ports.iter().flatten() {
            if port.host_port.is_some_and(|p| p != 0) {
                fail(format!("container {name}: hostPort"));
            }
        }
    }
    problems
}

#[test]
fn restricted_check_catches_a_root_pod() {
    let pod = serde_json::json!({
        "containers": [{"name": "c", "image": "postgres:15"}],
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
    });
    let problems = restricted_violations("pod", &pod).join("\n");
    for expected in [
        "hostPath",
        "allowPrivilegeEscalation",
        "drop must contain ALL",
        "runAsNonRoot",
        "numeric runAsUser",
        "seccompProfile",
    ] {
        assert!(
            problems.contains(expected),
            "{expected} missing in:\n{problems}"
        );
    }
}
