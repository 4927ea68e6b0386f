//! `/healthz` and readiness answers.

use axum::http::StatusCode;

/// `/healthz`: the process answers, so its runtime is not wedged.
pub async fn alive() -> (StatusCode, &'static str) {
    (StatusCode::OK, "ok\n")
}

/// A readiness flag as a response: 200 `ok` or 503 `not ok`.
pub fn flag(ready: bool) -> (StatusCode, &'static str) {
    if ready {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ok\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn alive_and_flags_answer_with_their_statuses() {
        assert_eq!(alive().await, (StatusCode::OK, "ok\n"));
        assert_eq!(flag(true), (StatusCode::OK, "ok\n"));
        assert_eq!(flag(false), (StatusCode::SERVICE_UNAVAILABLE, "not ok\n"));
    }
}
