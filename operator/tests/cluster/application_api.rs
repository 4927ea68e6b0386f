//! The application API on the real cluster: a Queue, the factory example's PostgreSQL (its
//! `postgres.yaml`, as `tests/e2e` runs it) with its `readings-db` Sink, and an
//! ApplicationApi over them. The operator issues the key into `<name>-api-keys`, the API pod
//! becomes ready, and `GET /v1/devices` with that key answers the row put into the table
//! (and 401 without it). Needs the image `tributary/api:0.1.0` on the node
//! (`tests/images/build-project-images.sh`), `kubectl` and `curl` on this host.

use super::*;
use tributary_operator::crd::ApplicationApi;

const QUEUE: &str = "apiVersion: tributary.dev/v1alpha1
kind: Queue
metadata: {name: telemetry}
spec:
  broker:
    managed: {replicas: 1}
";

const API: &str = "apiVersion: tributary.dev/v1alpha1
kind: ApplicationApi
metadata: {name: factory}
spec:
  history: {sink: readings-db}
  apiKeys:
    - {name: reader, scope: all}
";

/// Applies every document of an example file into the test namespace with `kubectl`.
pub(super) async fn kubectl_apply_example(ns: &str, file: &str) {
    let path = format!(
        "{}/../examples/factory-telemetry/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let text = text.replace("namespace: factory", &format!("namespace: {ns}"));
    let mut child = tokio::process::Command::new("kubectl")
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).await.expect("write");
    drop(stdin);
    assert!(
        child.wait().await.expect("kubectl").success(),
        "kubectl apply {file}"
    );
}

/// The factory example's PostgreSQL and its Sink `readings-db` (an ApplicationApi's
/// history), Ready.
pub(super) async fn history_sink(ns: &TestNamespace) {
    kubectl_apply_example(&ns.name, "postgres.yaml").await;
    let sinks_yaml = std::fs::read_to_string(format!(
        "{}/../examples/factory-telemetry/sinks.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("sinks.yaml");
    let readings_db = sinks_yaml
        .split("\n---")
        .next()
        .expect("first document")
        .replace("  namespace: factory\n", "");
    apply_yaml(&ns.api::<Sink>(), &readings_db).await;
    wait_ready(&ns.api::<Sink>(), "readings-db", "Sink ready", |s, _| {
        s == "True"
    })
    .await;
}

/// Runs SQL in the PostgreSQL pod; true when it succeeded.
async fn sql(ns: &str, statement: &str) -> bool {
    tokio::process::Command::new("kubectl")
        .args(["-n", ns, "exec", "postgres-0", "-c", "postgres", "--"])
        // Over TCP with the example's password (the image's server has no local socket).
        .args([
            "env",
            "PGPASSWORD=factory-demo-db-password",
            "psql",
            "-h",
            "127.0.0.1",
        ])
        .args(["-U", "tributary", "-d", "factory", "-c", statement])
        .output()
        .await
        .is_ok_and(|out| out.status.success())
}

/// `curl` of the API; (status code, body).
pub(super) async fn get(url: &str, key: Option<&str>) -> (String, String) {
    let mut command = tokio::process::Command::new("curl");
    command.args(["-s", "-m", "5", "-w", "\n%{http_code}"]);
    if let Some(key) = key {
        command.args(["-H", &format!("Authorization: Bearer {key}")]);
    }
    let out = command.arg(url).output().await.expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_owned(), body.to_owned())
}

#[tokio::test]
#[ignore = "needs the test cluster: tests/cluster/cluster.sh up"]
async fn the_api_serves_devices_with_the_key_the_operator_issued() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "api").await;
    start_operator(&ns.name);
    step("PostgreSQL of the factory example, its Sink and a Queue");
    history_sink(&ns).await;
    apply_yaml(&ns.api::<Queue>(), QUEUE).await;

    step("the ApplicationApi, Ready with its key issued");
    let apis: Api<ApplicationApi> = ns.api();
    apply_yaml(&apis, API).await;
    wait_ready(&apis, "factory", "ApplicationApi ready", |s, _| s == "True").await;
    let secrets: Api<Secret> = ns.api();
    let key = wait_for("the issued key", || async {
        let data = secrets.get_opt("factory-api-keys").await.ok()??.data?;
        String::from_utf8(data.get("reader")?.0.clone()).ok()
    })
    .await;
    assert_eq!(key.len(), 43, "32 random bytes, URL-safe base64");
    let config_maps: Api<ConfigMap> = ns.api();
    let config = config_maps.get("factory-api").await.expect("config");
    let text = config.data.expect("data")["api.yaml"].clone();
    assert!(!text.contains(&key), "the config holds only the key's hash");
    let status = apis
        .get("factory")
        .await
        .expect("api")
        .status
        .expect("status");
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("factory-api.{}.svc:8080", ns.name).as_str())
    );

    step("a row in the table, read back through the API");
    wait_for("the readings table", || async {
        sql(
            &ns.name,
            "INSERT INTO readings (id, machine, seq, temperature_c, vibration, rpm, topic, \
             received_at) VALUES ('m1', 'machine-1', 1, 21.5, 0.2, 1500, \
             'factory/l/machine-1/telemetry', now()) ON CONFLICT DO NOTHING",
        )
        .await
        .then_some(())
    })
    .await;
    let ip = ready_pod_ip(&ns, "api", "factory").await;
    let url = format!("http://{ip}:8080/v1/devices");
    let (code, body) = get(&url, Some(&key)).await;
    assert_eq!(code, "200", "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["devices"][0]["device"], "machine-1", "{answer}");
    let (code, _) = get(&url, None).await;
    assert_eq!(code, "401", "no key, no data");
    let (code, _) = get(&format!("http://{ip}:8080/dashboard"), None).await;
    assert_eq!(code, "200", "the dashboard page needs no key");
}
