//! S3-compatible object storage sink: each batch is one JSON Lines object.
//!
//! The key is `{prefix}YYYY/MM/DD/HH/{first id}-{batch hash}.jsonl`: the time is the
//! receive time encoded in the batch's first (smallest) ULID, the batch id a hash of its
//! ids, so a retried write of the same batch overwrites the same object instead of adding a
//! copy. Every line carries the envelope `id` for readers that dedupe redeliveries.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{StatusCode, Url};
use rusty_s3::actions::ListObjectsV2;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use sha2::{Digest, Sha256};
use tributary_contract::worker_config::{BatchConfig, S3SinkConfig};

use super::{
    json_bytes, read_secret, status_rejects_the_message, Prepared, SinkBuildError, SinkError,
};
use crate::record::Record;

/// How long a signed request stays valid: checked when it arrives, and the HTTP client
/// gives up on a request after 60 s.
const SIGNATURE_LIFETIME: Duration = Duration::from_secs(300);

/// A minimal path-style S3 client: the calls the sink and its tests need. `rusty-s3` signs
/// each request (SigV4, presigned) and parses the listings; reqwest sends them.
#[derive(Debug, Clone)]
pub struct S3Client {
    http: reqwest::Client,
    endpoint: Url,
    region: String,
    credentials: Credentials,
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
    /// A bad endpoint URL (or a bucket name it cannot address).
    #[error("bad endpoint: {0}")]
    Endpoint(String),
    /// A successful response that could not be read.
    #[error("unreadable response: {0}")]
    Response(String),
}

/// A request error without its URL: the URL carries the request's signature.
fn request_error(e: reqwest::Error) -> S3Error {
    S3Error::Request(e.without_url().to_string())
}

impl S3Client {
    /// A client for `endpoint` (scheme, host, port), signing for `region` with `credentials`.
    pub fn new(endpoint: &str, region: &str, credentials: Credentials) -> Result<Self, S3Error> {
        let endpoint = Url::parse(endpoint).map_err(|e| S3Error::Endpoint(e.to_string()))?;
        if endpoint.host_str().is_none() {
            return Err(S3Error::Endpoint("no host".into()));
        }
        Ok(Self {
            http: crate::http_client::client(Duration::from_secs(60))
                .map_err(|e| S3Error::Endpoint(e.to_string()))?,
            endpoint,
            region: region.to_string(),
            credentials,
        })
    }

    fn bucket(&self, name: &str) -> Result<Bucket, S3Error> {
        Bucket::new(
            self.endpoint.clone(),
            UrlStyle::Path,
            name.to_string(),
            self.region.clone(),
        )
        .map_err(|e| S3Error::Endpoint(e.to_string()))
    }

    /// Sends a signed request; the status and the body, whatever the status.
    async fn send(
        &self,
        method: reqwest::Method,
        url: Url,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Vec<u8>), S3Error> {
        let mut request = self.http.request(method.clone(), url);
        if method == reqwest::Method::PUT {
            // An empty body goes without a length otherwise, and S3 servers answer 411 to a
            // PUT without one.
            request = request.header(reqwest::header::CONTENT_LENGTH, body.len());
        }
        let response = request.body(body).send().await.map_err(request_error)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(request_error)?;
        Ok((status, bytes.to_vec()))
    }

    /// Sends a signed request and fails on a non-2xx status.
    async fn checked(
        &self,
        method: reqwest::Method,
        url: Url,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, S3Error> {
        let (status, bytes) = self.send(method, url, body).await?;
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
    pub async fn ensure_bucket(&self, name: &str) -> Result<(), S3Error> {
        let bucket = self.bucket(name)?;
        let head = bucket
            .head_bucket(Some(&self.credentials))
            .sign(SIGNATURE_LIFETIME);
        let (status, _) = self.send(reqwest::Method::HEAD, head, Vec::new()).await?;
        if status.is_success() {
            return Ok(());
        }
        let create = bucket
            .create_bucket(&self.credentials)
            .sign(SIGNATURE_LIFETIME);
        match self.checked(reqwest::Method::PUT, create, Vec::new()).await {
            Ok(_) => Ok(()),
            // Created meanwhile by someone else: fine.
            Err(S3Error::Status { body, .. }) if body.contains("BucketAlreadyOwnedByYou") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Stores `body` as the object `key`.
    pub async fn put_object(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), S3Error> {
        let url = self
            .bucket(bucket)?
            .put_object(Some(&self.credentials), key)
            .sign(SIGNATURE_LIFETIME);
        self.checked(reqwest::Method::PUT, url, body).await?;
        Ok(())
    }

    /// The content of the object `key`.
    pub async fn get_object(&self, bucket: &str, key: &str) -> Result<Vec<u8>, S3Error> {
        let url = self
            .bucket(bucket)?
            .get_object(Some(&self.credentials), key)
            .sign(SIGNATURE_LIFETIME);
        self.checked(reqwest::Method::GET, url, Vec::new()).await
    }

    /// Keys under a prefix (first 1000; enough for tests and diagnostics).
    pub async fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, S3Error> {
        let bucket = self.bucket(bucket)?;
        let mut list = bucket.list_objects_v2(Some(&self.credentials));
        list.with_prefix(prefix);
        let body = self
            .checked(
                reqwest::Method::GET,
                list.sign(SIGNATURE_LIFETIME),
                Vec::new(),
            )
            .await?;
        let listing = ListObjectsV2::parse_response(&String::from_utf8_lossy(&body))
            .map_err(|e| S3Error::Response(e.to_string()))?;
        Ok(listing.contents.into_iter().map(|c| c.key).collect())
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
        let credentials = Credentials::new(
            read_secret(&config.name, &config.access_key_id_file)?,
            read_secret(&config.name, &config.secret_access_key_file)?,
        );
        let client = S3Client::new(&config.endpoint, &config.region, credentials).map_err(|e| {
            SinkBuildError::Invalid {
                sink: config.name.clone(),
                message: e.to_string(),
            }
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
            values: Vec::new(),
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
        match self.client.put_object(&self.bucket, &key, body).await {
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
    let hash = hex::encode(Sha256::digest(ids.join("\n").as_bytes()));
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
            values: Vec::new(),
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
