//! NetworkPolicies of the pipeline's own pods and the pieces every policy shares.
//!
//! Gateway pods accept device traffic on their listener ports from anywhere and their
//! health and metrics port only from pods of the cluster (probes come from the node,
//! which CNIs admit); worker pods accept only their metrics and status port, from pods of
//! the cluster (the operator reads `/status`, Prometheus scrapes). Nothing else reaches
//! them once a CNI enforces the policy (the local test cluster's bridge CNI does not).
//! Managed brokers have their own, stricter policy (`queue::network_policy`).

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// A selector matching exactly `labels`.
pub fn selector<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            labels
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        ),
        ..LabelSelector::default()
    }
}

/// A TCP port of an ingress rule.
pub fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_owned()),
        ..NetworkPolicyPort::default()
    }
}

/// Every pod of every namespace: in-cluster clients, never addresses outside the cluster.
fn pods_of_the_cluster() -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    }
}

/// An ingress-only policy for the pods matching `pods`: `public` ports from anywhere
/// (a rule without `from`), `in_cluster` ports from pods of the cluster, nothing else.
pub fn pod_ingress_policy(
    metadata: ObjectMeta,
    pods: &BTreeMap<String, String>,
    public: &[i32],
    in_cluster: &[i32],
) -> NetworkPolicy {
    let mut ingress = Vec::new();
    if !public.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            ports: Some(public.iter().copied().map(tcp).collect()),
            from: None,
        });
    }
    if !in_cluster.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            ports: Some(in_cluster.iter().copied().map(tcp).collect()),
            from: Some(vec![pods_of_the_cluster()]),
        });
    }
    NetworkPolicy {
        metadata,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(pods.iter().map(|(k, v)| (k.as_str(), v.as_str())))),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn public_ports_are_open_to_all_and_in_cluster_ports_only_to_pods() {
        let pods = BTreeMap::from([("app".to_owned(), "gw".to_owned())]);
        let policy = pod_ingress_policy(ObjectMeta::default(), &pods, &[1883, 8883], &[8080]);
        let spec = serde_json::to_value(policy.spec.expect("spec")).expect("json");
        assert_eq!(spec["podSelector"], json!({"matchLabels": {"app": "gw"}}));
        assert_eq!(spec["policyTypes"], json!(["Ingress"]));
        assert_eq!(
            spec["ingress"],
            json!([
                {"ports": [{"port": 1883, "protocol": "TCP"}, {"port": 8883, "protocol": "TCP"}]},
                {"ports": [{"port": 8080, "protocol": "TCP"}], "from": [{"namespaceSelector": {}}]},
            ])
        );
    }

    #[test]
    fn a_pod_without_public_ports_admits_only_in_cluster_traffic() {
        let pods = BTreeMap::from([("app".to_owned(), "worker".to_owned())]);
        let policy = pod_ingress_policy(ObjectMeta::default(), &pods, &[], &[9090]);
        let spec = serde_json::to_value(policy.spec.expect("spec")).expect("json");
        assert_eq!(
            spec["ingress"],
            json!([{"ports": [{"port": 9090, "protocol": "TCP"}], "from": [{"namespaceSelector": {}}]}])
        );
    }
}
