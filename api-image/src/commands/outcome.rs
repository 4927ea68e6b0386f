//! What became of a command, and the HTTP answer for each outcome.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};

use crate::commands::message::Answer;

/// Seconds a client is asked to wait before retrying a command to a full device queue.
pub const QUEUE_FULL_RETRY_AFTER_SECONDS: u64 = 5;
/// Seconds a client is asked to wait when too many requests are waiting for answers.
pub const BUSY_RETRY_AFTER_SECONDS: u64 = 1;

/// What the broker and the device made of a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The broker confirmed it into the device's queue (202).
    Queued,
    /// The device answered within `waitSeconds` (200).
    Answered {
        /// The answer.
        answer: Answer,
        /// Seconds from publishing to the answer.
        seconds: f64,
    },
    /// Queued, but no answer within `waitSeconds` (504).
    Timeout,
    /// The broker returned it: no queue takes commands for the device (409).
    Undeliverable {
        /// The broker's reply text (`NO_ROUTE`).
        reason: String,
    },
    /// The broker refused it: the device's queue is full (429).
    QueueFull,
    /// Not sent: too many requests are waiting for answers (503).
    Busy,
    /// Not sent, or its fate is unknown: the broker is unreachable, did not confirm, or the
    /// connection was lost while waiting (503).
    Unavailable(String),
}

impl Outcome {
    /// The `result` label of `tributary_api_commands_total`.
    pub fn result(&self) -> &'static str {
        match self {
            Outcome::Queued => "queued",
            Outcome::Answered { .. } => "answered",
            Outcome::Timeout => "timeout",
            Outcome::Undeliverable { .. } => "undeliverable",
            Outcome::QueueFull => "queueFull",
            Outcome::Busy => "refused",
            Outcome::Unavailable(_) => "error",
        }
    }

    /// The HTTP status, JSON body and `Retry-After` seconds of the answer.
    pub fn answer(&self, id: &str) -> (StatusCode, Value, Option<u64>) {
        match self {
            Outcome::Queued => (
                StatusCode::ACCEPTED,
                json!({"commandId": id, "status": "queued"}),
                None,
            ),
            Outcome::Answered { answer, .. } => (StatusCode::OK, answered(id, answer), None),
            Outcome::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                json!({"commandId": id, "status": "timeout",
                       "error": "the device did not answer within waitSeconds; the command stays queued until its ttlSeconds run out"}),
                None,
            ),
            Outcome::Undeliverable { reason } => (
                StatusCode::CONFLICT,
                json!({"commandId": id, "status": "undeliverable", "reason": reason,
                       "error": "no queue takes commands for this device: it never subscribed to commands, or its session ended"}),
                None,
            ),
            Outcome::QueueFull => (
                StatusCode::TOO_MANY_REQUESTS,
                json!({"commandId": id, "status": "queueFull",
                       "error": "the device's command queue is full; retry once it has taken some"}),
                Some(QUEUE_FULL_RETRY_AFTER_SECONDS),
            ),
            Outcome::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "busy",
                       "error": "too many requests are waiting for answers (commands.maxWaiting); retry, or send without waitSeconds"}),
                Some(BUSY_RETRY_AFTER_SECONDS),
            ),
            Outcome::Unavailable(message) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"commandId": id, "status": "error", "error": message}),
                None,
            ),
        }
    }

    /// The whole HTTP answer.
    pub fn into_response(self, id: &str) -> Response {
        let (status, body, retry_after) = self.answer(id);
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The body of an answered command: the device's payload as JSON when it parses as JSON,
/// else base64.
fn answered(id: &str, answer: &Answer) -> Value {
    let (response, encoding) = match serde_json::from_slice::<Value>(&answer.body) {
        Ok(value) => (value, "json"),
        Err(_) => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(&answer.body)),
            "base64",
        ),
    };
    json!({
        "commandId": id,
        "status": "answered",
        "responseStatus": answer.status,
        "contentType": answer.content_type,
        "response": response,
        "responseEncoding": encoding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &[u8]) -> Outcome {
        Outcome::Answered {
            answer: Answer {
                status: 201,
                content_type: Some("application/json".into()),
                body: body.to_vec(),
            },
            seconds: 0.1,
        }
    }

    #[test]
    fn json_answers_are_inlined_and_others_are_base64() {
        let (status, body, _) = answer(br#"{"rpm": 1200}"#).answer("c1");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"commandId": "c1", "status": "answered", "responseStatus": 201,
                   "contentType": "application/json", "response": {"rpm": 1200},
                   "responseEncoding": "json"})
        );
        let (_, body, _) = answer(&[0xff, 0x00]).answer("c1");
        assert_eq!(body["response"], json!("/wA="));
        assert_eq!(body["responseEncoding"], json!("base64"));
        let (_, body, _) = answer(b"").answer("c1");
        assert_eq!(body["response"], json!(""));
        assert_eq!(body["responseEncoding"], json!("base64"));
    }

    #[test]
    fn each_outcome_has_its_status_result_and_retry_hint() {
        let cases = [
            (Outcome::Queued, 202, "queued", "queued", None),
            (Outcome::Timeout, 504, "timeout", "timeout", None),
            (
                Outcome::Undeliverable {
                    reason: "NO_ROUTE".into(),
                },
                409,
                "undeliverable",
                "undeliverable",
                None,
            ),
            (Outcome::QueueFull, 429, "queueFull", "queueFull", Some(5)),
            (Outcome::Busy, 503, "busy", "refused", Some(1)),
            (
                Outcome::Unavailable("down".into()),
                503,
                "error",
                "error",
                None,
            ),
        ];
        for (outcome, status, body_status, result, retry) in cases {
            let (code, body, retry_after) = outcome.answer("c1");
            assert_eq!(code.as_u16(), status, "{outcome:?}");
            assert_eq!(body["status"], json!(body_status), "{outcome:?}");
            assert_eq!(outcome.result(), result);
            assert_eq!(retry_after, retry, "{outcome:?}");
            if status >= 400 {
                assert!(body["error"].is_string(), "{outcome:?} explains itself");
            }
        }
        let response = Outcome::QueueFull.into_response("c1");
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
    }
}
