//! HTTP webhook sink: one signed POST per message; the POSTs of a batch run concurrently.
//!
//! Headers: `Content-Type: application/json`, `X-Tributary-Id: <envelope id>` (the
//! receiver's idempotency key: a redelivery carries the same id) and the signature header,
//! `sha256=<hex HMAC-SHA256 of the body with the shared secret>`.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tributary_contract::worker_config::{BatchConfig, WebhookSinkConfig};

use super::{
    json_bytes, read_secret, status_rejects_the_message, Prepared, SinkBuildError, SinkError,
};
use crate::record::Record;

/// The webhook sink.
pub struct WebhookSink {
    name: String,
    url: reqwest::Url,
    secret: Vec<u8>,
    header: String,
    http: reqwest::Client,
    batch: BatchConfig,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .finish()
    }
}

/// The signature header value for a body.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        // HMAC takes keys of any length.
        Err(_) => String::new(),
    }
}

impl WebhookSink {
    /// Builds the sink: parses the URL, reads the secret.
    pub fn build(config: &WebhookSinkConfig) -> Result<Self, SinkBuildError> {
        let invalid = |message: String| SinkBuildError::Invalid {
            sink: config.name.clone(),
            message,
        };
        let url = reqwest::Url::parse(&config.url).map_err(|e| invalid(format!("url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "url scheme `{}` is not http(s)",
                url.scheme()
            )));
        }
        reqwest::header::HeaderName::from_bytes(config.signature_header.as_bytes()).map_err(
            |_| {
                invalid(format!(
                    "`{}` is not a header name",
                    config.signature_header
                ))
            },
        )?;
        let secret = read_secret(&config.name, &config.secret_file)?.into_bytes();
        let http = crate::http_client::client(Duration::from_millis(config.timeout_ms))
            .map_err(|e| invalid(format!("http client: {e}")))?;
        Ok(Self {
            name: config.name.clone(),
            url,
            secret,
            header: config.signature_header.clone(),
            http,
            batch: config.batch.clone(),
        })
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The batching policy.
    pub fn batch_config(&self) -> &BatchConfig {
        &self.batch
    }

    /// The JSON body.
    pub fn prepare(&self, record: &Record) -> Result<Prepared, String> {
        Ok(Prepared {
            id: record.id.clone(),
            key: None,
            bytes: json_bytes(&record.value),
            values: Vec::new(),
            refused: None,
        })
    }

    /// POSTs every item; a 4xx that names the request rejects it, anything else is an outage.
    pub async fn write(&self, batch: &[Prepared]) -> Result<(), SinkError> {
        let results = futures::future::join_all(batch.iter().map(|item| self.post(item))).await;
        let mut transient = None;
        for result in results {
            match result {
                Ok(()) => {}
                Err(e @ SinkError::Rejected(_)) => return Err(e),
                Err(e) => transient = Some(e),
            }
        }
        transient.map_or(Ok(()), Err)
    }

    async fn post(&self, item: &Prepared) -> Result<(), SinkError> {
        let response = self
            .http
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("x-tributary-id", &item.id)
            .header(self.header.as_str(), signature(&self.secret, &item.bytes))
            .body(item.bytes.clone())
            .send()
            .await
            .map_err(|e| SinkError::Unavailable(format!("POST: {e}")))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status_rejects_the_message(status) {
            Err(SinkError::Rejected(format!("POST answered {status}")))
        } else {
            Err(SinkError::Unavailable(format!("POST answered {status}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
