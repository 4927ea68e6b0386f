//! `check-api`: a connectivity probe for the Kubernetes API, used by operators of the
//! operator (and the cluster smoke test) to prove a pod reaches the API with TLS verified.

use anyhow::Context;

/// Connects with the inferred configuration (in-cluster service account first, then the
/// kubeconfig) and prints the API server's version.
pub async fn run() -> anyhow::Result<()> {
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration found (neither in-cluster nor kubeconfig)")?;
    if config.accept_invalid_certs {
        anyhow::bail!("refusing to check the API with TLS verification disabled");
    }
    let cluster_url = config.cluster_url.clone();
    let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
    let version = client
        .apiserver_version()
        .await
        .with_context(|| format!("querying the API server at {cluster_url}"))?;
    println!(
        "api-server {cluster_url} reachable with TLS verified: version {}.{} ({})",
        version.major, version.minor, version.git_version
    );
    Ok(())
}
