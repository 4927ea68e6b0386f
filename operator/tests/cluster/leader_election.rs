//! One operator per namespace at a time.

use super::*;

#[tokio::test]
#[ignore = "needs the test cluster: cargo test -p tributary-operator --test cluster -- --ignored"]
async fn a_second_operator_on_the_same_namespace_refuses_to_start_while_the_first_reconciles() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "two-operators").await;
    // The first operator, with leader election (its Lease in the namespace it watches).
    let first = tributary_operator::run::Settings {
        lease_namespace: Some(ns.name.clone()),
        lease_name: "tributary-first".to_owned(),
        identity: "first".to_owned(),
        listen: "127.0.0.1:0".parse().expect("address"),
        ..operator_settings(&ns.name)
    };
    tokio::spawn(async move {
        if let Err(error) = tributary_operator::run::run(first).await {
            panic!("the first operator stopped: {error}");
        }
    });
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = ns.api();
    wait_for("the first operator holding its Lease", || async {
        let lease = leases.get_opt("tributary-first").await.ok()??;
        (lease.spec?.holder_identity.as_deref() == Some("first")).then_some(())
    })
    .await;

    // A second installation on the same namespace (another release: another Lease).
    let second = tributary_operator::run::Settings {
        lease_namespace: Some(ns.name.clone()),
        lease_name: "tributary-second".to_owned(),
        identity: "second".to_owned(),
        listen: "127.0.0.1:0".parse().expect("address"),
        ..operator_settings(&ns.name)
    };
    let refused = tokio::time::timeout(DEADLINE, tributary_operator::run::run(second))
        .await
        .expect("the second operator decides within the deadline");
    let message = match refused {
        Err(error @ tributary_operator::run::RunError::AnotherOperator(_)) => error.to_string(),
        other => panic!("the second operator should refuse to start, got {other:?}"),
    };
    assert!(
        message.contains(&format!("Lease {}/tributary-first held by first", ns.name)),
        "{message}"
    );
    let second_lease = leases.get_opt("tributary-second").await.expect("get");
    assert!(
        second_lease
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .is_none(),
        "the refusing operator gave its Lease up"
    );

    // The first keeps reconciling.
    let queues: Api<Queue> = ns.api();
    apply_yaml(&queues, "apiVersion: tributary.dev/v1alpha1\nkind: Queue\nmetadata: {name: both}\nspec:\n  broker:\n    managed: {}\n    external: {uriSecretRef: {name: x, key: uri}}\n").await;
    wait_ready(
        &queues,
        "both",
        "the first operator reconciling a new Queue",
        |s, r| s == "False" && r == "InvalidSpec",
    )
    .await;
}
