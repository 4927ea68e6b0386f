//! The shutdown signal: SIGTERM (what Kubernetes sends) or Ctrl-C.

use tokio_util::sync::CancellationToken;

/// Resolves on SIGTERM or Ctrl-C, and logs that it did. When SIGTERM cannot be listened for
/// (the error is logged), only Ctrl-C ends the wait.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate() => {}
    }
    tracing::info!("shutdown signal received");
}

#[cfg(unix)]
async fn terminate() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending::<()>().await;
}

/// Cancels `token` when the shutdown [`signal`] arrives (spawn it).
pub async fn cancel_on_signal(token: CancellationToken) {
    signal().await;
    token.cancel();
}
