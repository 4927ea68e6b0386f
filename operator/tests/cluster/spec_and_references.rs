//! Invalid specs and missing references: conditions, and the operator keeps going.

use super::*;

#[tokio::test]
#[ignore = "needs the test cluster: cargo test -p tributary-operator --test cluster -- --ignored"]
async fn invalid_spec_sets_condition_and_operator_keeps_reconciling() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "invalid").await;
    start_operator(&ns.name);
    let queues: Api<Queue> = ns.api();
    apply_yaml(&queues, "apiVersion: tributary.dev/v1alpha1\nkind: Queue\nmetadata: {name: both}\nspec:\n  broker:\n    managed: {}\n    external: {uriSecretRef: {name: x, key: uri}}\n").await;
    let (_, reason) = wait_ready(&queues, "both", "Queue InvalidSpec", |s, r| {
        s == "False" && r == "InvalidSpec"
    })
    .await;
    assert_eq!(reason, "InvalidSpec");
    let workers: Api<Worker> = ns.api();
    apply_yaml(&workers, "apiVersion: tributary.dev/v1alpha1\nkind: Worker\nmetadata: {name: bad-cel}\nspec:\n  queue: q\n  sinks: [s]\n  pipeline:\n    - filter: 'payload.temp >'\n").await;
    wait_ready(&workers, "bad-cel", "Worker InvalidSpec", |s, r| {
        s == "False" && r == "InvalidSpec"
    })
    .await;
    let message = workers
        .get("bad-cel")
        .await
        .expect("get")
        .status
        .expect("status")
        .conditions[0]
        .message
        .clone();
    assert!(message.contains("invalid CEL"), "{message}");
    // Fixing the spec clears the condition (the operator did not give up on it).
    apply_yaml(&workers, "apiVersion: tributary.dev/v1alpha1\nkind: Worker\nmetadata: {name: bad-cel}\nspec:\n  queue: q\n  sinks: [s]\n  pipeline:\n    - filter: 'payload.temp > 1.0'\n").await;
    wait_ready(
        &workers,
        "bad-cel",
        "Worker waits for its Queue after the fix",
        |_, r| r == "WaitingForQueue",
    )
    .await;
    // And it still serves other resources.
    let sinks: Api<Sink> = ns.api();
    let secrets: Api<Secret> = ns.api();
    apply_yaml(
        &secrets,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: hook}\nstringData: {key: abc}\n",
    )
    .await;
    apply_yaml(&sinks, "apiVersion: tributary.dev/v1alpha1\nkind: Sink\nmetadata: {name: hook}\nspec:\n  webhook:\n    url: http://hook-receiver:9/hook\n    hmacSecretRef: {name: hook, key: key}\n").await;
    wait_ready(&sinks, "hook", "Sink Ready", |s, _| s == "True").await;
    // A webhook to the node's loopback is refused by default (--allow-internal-webhooks).
    apply_yaml(&sinks, "apiVersion: tributary.dev/v1alpha1\nkind: Sink\nmetadata: {name: loopback}\nspec:\n  webhook:\n    url: http://127.0.0.1:9/hook\n    hmacSecretRef: {name: hook, key: key}\n").await;
    wait_ready(&sinks, "loopback", "Sink InvalidSpec", |s, r| {
        s == "False" && r == "InvalidSpec"
    })
    .await;
    let message = sinks
        .get("loopback")
        .await
        .expect("get")
        .status
        .expect("status")
        .conditions[0]
        .message
        .clone();
    assert!(message.contains("loopback"), "{message}");
}

#[tokio::test]
#[ignore = "needs the test cluster: cargo test -p tributary-operator --test cluster -- --ignored"]
async fn sink_waits_for_its_secret_and_recovers_when_it_appears() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "sink").await;
    start_operator(&ns.name);
    let sinks: Api<Sink> = ns.api();
    apply_yaml(&sinks, "apiVersion: tributary.dev/v1alpha1\nkind: Sink\nmetadata: {name: readings}\nspec:\n  postgres:\n    urlSecretRef: {name: pg, key: url}\n    table: readings\n    columns: [{name: device, expr: device}]\n").await;
    wait_ready(&sinks, "readings", "Sink WaitingForSecret", |_, r| {
        r == "WaitingForSecret"
    })
    .await;
    let secrets: Api<Secret> = ns.api();
    apply_yaml(&secrets, "apiVersion: v1\nkind: Secret\nmetadata: {name: pg}\nstringData: {url: 'postgres://u:p@db/x'}\n").await;
    wait_ready(
        &sinks,
        "readings",
        "Sink Ready after its Secret appeared",
        |s, _| s == "True",
    )
    .await;
}
