//! S3-compatible object storage sink: each batch is one JSON Lines object.
//!
//! The key is `{prefix}YYYY/MM/DD/HH/{first id}-{batch hash}.jsonl`: the time is the
//! receive time encoded in the batch's first (smallest) ULID, the batch id a hash of its
//! ids, so a retried write of the same batch overwrites the same object instead of adding a
//! copy. Every line carries the envelope `id` for readers that dedupe redeliveries.

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode, Url};
use tributary_contract::worker_config::{BatchConfig, S3SinkConfig};

use super::sigv4::{sha256_hex, uri_encode, Signer};
use super::{
    json_bytes, read_secret, status_rejects_the_message, Prepared, SinkBuildError, SinkError,
};
use crate::record::Record;

/// A minimal path-style S3 client: the calls the sink and its tests need.
#[derive(Debug, Clone)]
pub struct S3Client {
    http: reqwest::Client,
    endpoint: Url,
    signer: Signer,
}

/// An S3 call that failed.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// No response (connection refused, timeout).
    #[error("request failed: {0}")]
    Request(String),
    /// The service answered with an error status.
    #[error("status {status}: {body}")]
    Status {
        /// HTTP status.
        status: StatusCode,
        /// Start of the response body.
        body: String,
    },
    /// A bad endpoint URL.
    #[error("bad endpoint: {0}")]
    Endpoint(String),
}

impl S3Client {
    /// A client for `endpoint` (scheme, host, port), signing with the given keys.
    pub fn new(endpoint: &str, signer: Signer) -> Result<Self, S3Error> {
        let endpoint = Url::parse(endpoint).map_err(|e| S3Error::Endpoint(e.to_string()))?;
        if endpoint.host_str().is_none() {
            return Err(S3Error::Endpoint("no host".into()));
        }
        Ok(Self {
            http: crate::http_client::client(std::time::Duration::from_secs(60))
                .map_err(|e| S3Error::Endpoint(e.to_string()))?,
            endpoint,
            signer,
        })
    }

    /// Sends a signed request; `path` is unencoded (`bucket/key`).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(StatusCode, Vec<u8>), S3Error> {
        let encoded_path = format!("/{}", uri_encode(path, true));
        let query: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
            .collect();
        let host = match (self.endpoint.host_str(), self.endpoint.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(S3Error::Endpoint("no host".into())),
        };
        let signed = self.signer.sign(
            method.as_str(),
            &host,
            &encoded_path,
            &query,
            &body,
            Utc::now(),
        );
        let mut url = self.endpoint.clone();
        url.set_path(&encoded_path);
        let query_text = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        url.set_query((!query_text.is_empty()).then_some(query_text.as_str()));
        let response = self
            .http
            .request(method, url)
            .header("x-amz-date", signed.amz_date)
            .header("x-amz-content-sha256", signed.content_sha256)
            .header("authorization", signed.authorization)
            .body(body)
            .send()
            .await
            .map_err(|e| S3Error::Request(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| S3Error::Request(e.to_string()))?;
        Ok((status, bytes.to_vec()))
    }

    /// Sends a request and fails on a non-2xx status.
    pub async fn checked(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Vec<u8>, S3Error> {
        let (status, bytes) = self.request(method, path, query, body).await?;
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(S3Error::Status {
                status,
                body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            })
        }
    }

    /// Creates the bucket unless it exists.
    pub async fn ensure_bucket(&self, bucket: &str) -> Result<(), S3Error> {
        let (status, _) = self.request(Method::HEAD, bucket, &[], Vec::new()).await?;
        if status.is_success() {
            return Ok(());
        }
        match self.checked(Method::PUT, bucket, &[], Vec::new()).await {
            Ok(_) => Ok(()),
            // Created meanwhile by someone else: fine.
            Err(S3Error::Status { body, .. }) if body.contains("BucketAlreadyOwnedByYou") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Keys under a prefix (first 1000; enough for tests and diagnostics).
    pub async fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, S3Error> {
        let body = self
            .checked(
                Method::GET,
                bucket,
                &[("list-type", "2"), ("prefix", prefix)],
                Vec::new(),
            )
            .await?;
        let text = String::from_utf8_lossy(&body);
        Ok(text
            .split("<Key>")
            .skip(1)
            .filter_map(|part| part.split("</Key>").next())
            .map(|key| {
                key.replace("&amp;", "&")
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
            })
            .collect())
    }
}

/// The S3 sink.
#[derive(Debug)]
pub struct S3Sink {
    name: String,
    client: S3Client,
    bucket: String,
    prefix: String,
    create_bucket: bool,
    batch: BatchConfig,
}

impl S3Sink {
    /// Builds the sink: reads the keys, checks the endpoint.
    pub fn build(config: &S3SinkConfig) -> Result<Self, SinkBuildError> {
        let signer = Signer {
            access_key_id: read_secret(&config.name, &config.access_key_id_file)?,
            secret_access_key: read_secret(&config.name, &config.secret_access_key_file)?,
            region: config.region.clone(),
        };
        let client =
            S3Client::new(&config.endpoint, signer).map_err(|e| SinkBuildError::Invalid {
                sink: config.name.clone(),
                message: e.to_string(),
            })?;
        if config.bucket.is_empty() || config.bucket.contains('/') {
            return Err(SinkBuildError::Invalid {
                sink: config.name.clone(),
                message: format!("`{}` is not a bucket name", config.bucket),
            });
        }
        Ok(Self {
            name: config.name.clone(),
            client,
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            create_bucket: config.create_bucket,
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

    /// Creates the bucket when asked to.
    pub async fn init(&self) -> Result<(), SinkError> {
        if self.create_bucket {
            self.client
                .ensure_bucket(&self.bucket)
                .await
                .map_err(|e| SinkError::Unavailable(format!("create bucket: {e}")))?;
        }
        Ok(())
    }

    /// One JSON line.
    pub fn prepare(&self, record: &Record) -> Result<Prepared, String> {
        let mut bytes = json_bytes(&record.value);
        bytes.push(b'\n');
        Ok(Prepared {
            id: record.id.clone(),
            key: None,
            bytes,
            refused: None,
        })
    }

    /// PUTs the batch as one object.
    pub async fn write(&self, batch: &[Prepared]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let key = object_key(&self.prefix, batch, Utc::now());
        let body: Vec<u8> = batch.iter().flat_map(|p| p.bytes.iter().copied()).collect();
        let path = format!("{}/{key}", self.bucket);
        match self.client.checked(Method::PUT, &path, &[], body).await {
            Ok(_) => Ok(()),
            Err(S3Error::Status { status, body }) if status_rejects_the_message(status) => {
                Err(SinkError::Rejected(format!("put {key}: {status}: {body}")))
            }
            Err(e) => Err(SinkError::Unavailable(format!("put {key}: {e}"))),
        }
    }
}

/// The object key of a batch (see the module docs); `now` is used when the first id is not
/// a ULID.
pub fn object_key(prefix: &str, batch: &[Prepared], now: DateTime<Utc>) -> String {
    let first = batch.iter().map(|p| p.id.as_str()).min().unwrap_or("");
    let time = ulid::Ulid::from_string(first)
        .ok()
        .and_then(|u| DateTime::<Utc>::from_timestamp_millis(u.timestamp_ms() as i64))
        .unwrap_or(now);
    let mut ids: Vec<&str> = batch.iter().map(|p| p.id.as_str()).collect();
    ids.sort_unstable();
    let hash = sha256_hex(ids.join("\n").as_bytes());
    let safe_first: String = first
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(26)
        .collect();
    format!(
        "{prefix}{}/{}-{}.jsonl",
        time.format("%Y/%m/%d/%H"),
        if safe_first.is_empty() {
            "batch"
        } else {
            &safe_first
        },
        &hash[..16]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str) -> Prepared {
        Prepared {
            id: id.into(),
            key: None,
            bytes: Vec::new(),
            refused: None,
        }
    }

    #[test]
    fn object_key_uses_first_ulid_time_and_is_stable_for_the_same_batch() {
        let a = ulid::Ulid::from_parts(1_764_147_600_000, 1).to_string(); // 2025-11-26T09:00Z
        let b = ulid::Ulid::from_parts(1_764_147_600_001, 2).to_string();
        let batch = vec![item(&b), item(&a)];
        let key = object_key("raw/", &batch, Utc::now());
        assert!(key.starts_with(&format!("raw/2025/11/26/09/{a}-")), "{key}");
        assert!(key.ends_with(".jsonl"));
        let reordered = vec![item(&a), item(&b)];
        assert_eq!(object_key("raw/", &reordered, Utc::now()), key);
        assert_ne!(object_key("raw/", &[item(&a)], Utc::now()), key);
    }
}
