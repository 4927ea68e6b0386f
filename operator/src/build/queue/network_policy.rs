//! Who may reach a managed broker: its AMQP port only the pipeline's pods of its namespace
//! (gateways, workers — every pod the operator runs there) and the operator; its
//! management port only the operator; Erlang distribution only the broker's own nodes.
//! Everything else is refused once a policy selects the broker pods (CNIs that enforce
//! NetworkPolicies; the local test cluster's bridge CNI does not).

use super::managed::{broker_meta, COMPONENT};
use super::{ManagedNames, AMQP_PORT, MANAGEMENT_PORT};
use crate::build::network_policy::{selector, tcp};
use crate::build::{name_and_namespace, selector_labels, BuildError, FIELD_MANAGER};
use crate::crd::Queue;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

/// The Erlang port mapper and the inter-node distribution port of the broker nodes.
pub const EPMD_PORT: i32 = 4369;
/// See [`EPMD_PORT`].
pub const DISTRIBUTION_PORT: i32 = 25672;

/// The label every operator pod carries (the Helm chart's `app.kubernetes.io/name`).
const OPERATOR_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "tributary-operator");
/// Set on every namespace by Kubernetes 1.21 and later.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The operator's pods: in `operator_namespace` when known, else in any namespace (an
/// operator run outside a pod cannot be selected; such a setup enforces nothing it needs).
fn operator_peer(operator_namespace: Option<&str>) -> NetworkPolicyPeer {
    let namespace_selector = match operator_namespace {
        Some(namespace) => selector([(NAMESPACE_NAME_LABEL, namespace)]),
        None => LabelSelector::default(),
    };
    NetworkPolicyPeer {
        namespace_selector: Some(namespace_selector),
        pod_selector: Some(selector([OPERATOR_POD_LABEL])),
        ..NetworkPolicyPeer::default()
    }
}

/// Every pod the operator runs in the broker's namespace (gateways, workers, brokers).
fn pipeline_pods() -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(selector([
            ("app.kubernetes.io/part-of", "tributary"),
            ("app.kubernetes.io/managed-by", FIELD_MANAGER),
        ])),
        ..NetworkPolicyPeer::default()
    }
}

/// The NetworkPolicy of a managed broker (kept or owned like the broker's other children).
pub fn broker_network_policy(
    queue: &Queue,
    operator_namespace: Option<&str>,
) -> Result<NetworkPolicy, BuildError> {
    let (name, _) = name_and_namespace(queue)?;
    let names = ManagedNames::for_queue(&name);
    let brokers: BTreeMap<String, String> = selector_labels(&name, COMPONENT);
    let broker_nodes = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(brokers.clone()),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    let rule =
        |ports: Vec<NetworkPolicyPort>, from: Vec<NetworkPolicyPeer>| NetworkPolicyIngressRule {
            ports: Some(ports),
            from: Some(from),
        };
    Ok(NetworkPolicy {
        metadata: broker_meta(queue, &names.broker)?,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(brokers),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                rule(
                    vec![tcp(AMQP_PORT)],
                    vec![pipeline_pods(), operator_peer(operator_namespace)],
                ),
                rule(
                    vec![tcp(MANAGEMENT_PORT)],
                    vec![operator_peer(operator_namespace)],
                ),
                rule(
                    vec![tcp(EPMD_PORT), tcp(DISTRIBUTION_PORT)],
                    vec![broker_nodes],
                ),
            ]),
            ..NetworkPolicySpec::default()
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::load;
    use serde_json::json;

    #[test]
    fn only_the_pipeline_and_the_operator_reach_amqp_and_only_the_operator_management() {
        let queue: Queue = load("queue-managed.yaml");
        let policy = broker_network_policy(&queue, Some("tributary-system")).expect("builds");
        let spec = serde_json::to_value(policy.spec.expect("spec")).expect("json");
        let operator = json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "tributary-system"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "tributary-operator"}},
        });
        let brokers = json!({"app.kubernetes.io/instance": "telemetry", "app.kubernetes.io/name": "rabbitmq"});
        assert_eq!(spec["podSelector"]["matchLabels"], brokers);
        assert_eq!(spec["policyTypes"], json!(["Ingress"]));
        let ingress = spec["ingress"].as_array().expect("rules");
        assert_eq!(ingress.len(), 3, "no other port is reachable");
        assert_eq!(
            ingress[0]["ports"],
            json!([{"port": 5672, "protocol": "TCP"}])
        );
        assert_eq!(
            ingress[0]["from"],
            json!([
                {"podSelector": {"matchLabels": {
                    "app.kubernetes.io/managed-by": "tributary-operator",
                    "app.kubernetes.io/part-of": "tributary",
                }}},
                operator,
            ])
        );
        assert_eq!(
            ingress[1]["ports"],
            json!([{"port": 15672, "protocol": "TCP"}])
        );
        assert_eq!(ingress[1]["from"], json!([operator]));
        assert_eq!(
            ingress[2]["ports"],
            json!([{"port": 4369, "protocol": "TCP"}, {"port": 25672, "protocol": "TCP"}])
        );
        assert_eq!(
            ingress[2]["from"],
            json!([{"podSelector": {"matchLabels": brokers}}])
        );
    }

    #[test]
    fn without_a_known_namespace_the_operator_is_selected_by_its_pod_label_anywhere() {
        let queue: Queue = load("queue-managed.yaml");
        let policy = broker_network_policy(&queue, None).expect("builds");
        let spec = serde_json::to_value(policy.spec.expect("spec")).expect("json");
        assert_eq!(
            spec["ingress"][1]["from"][0]["namespaceSelector"],
            json!({})
        );
    }

    #[test]
    fn the_policy_is_kept_with_the_broker_under_retain_and_owned_under_delete() {
        let mut queue: Queue = load("queue-managed.yaml");
        queue.spec.deletion_policy = crate::crd::queue::DeletionPolicy::Retain;
        let kept = broker_network_policy(&queue, None).expect("builds");
        assert_eq!(kept.metadata.owner_references, None);
        queue.spec.deletion_policy = crate::crd::queue::DeletionPolicy::Delete;
        let owned = broker_network_policy(&queue, None).expect("builds");
        assert_eq!(owned.metadata.owner_references.map(|o| o.len()), Some(1));
    }
}
