//! Redis sink: the latest value per key. Each key has a companion `<key>#id` holding the
//! envelope id of the stored value; a write only lands when its id sorts after the stored
//! one (ids are time-sortable ULIDs), so redeliveries and concurrent processing never move a
//! value back in time, and rewriting the same message is a no-op.

use std::collections::HashMap;
use std::path::Path;

use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;
use tributary_contract::worker_config::{BatchConfig, RedisSinkConfig};

use super::{json_bytes, read_secret, Prepared, SinkBuildError, SinkError};
use crate::expr::{CelEnv, Expr};
use crate::record::{KeyTemplate, Record};

/// KEYS[1] value key, KEYS[2] id key; ARGV[1] id, ARGV[2] value, ARGV[3] ttl seconds (0: none).
const SET_IF_NEWER: &str = r#"
local current = redis.call('GET', KEYS[2])
if current and current >= ARGV[1] then return 0 end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ttl)
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[1])
end
return 1
"#;

/// The companion key holding the id of the value stored at `key`.
pub fn id_key(key: &str) -> String {
    format!("{key}#id")
}

/// A client for `url`; a `rediss://` URL trusts the PEM certificates of `ca_file` instead of
/// the system roots when given. Errors never quote the URL (it may hold the password).
fn open_client(url: &str, ca_file: Option<&Path>) -> Result<redis::Client, String> {
    crate::http_client::install_crypto_provider();
    let not_a_url = |_| "does not hold a valid redis URL".to_string();
    match ca_file {
        None => redis::Client::open(url).map_err(not_a_url),
        Some(path) => {
            if !url.starts_with("rediss://") {
                return Err("caFile is set but the URL is not rediss://".into());
            }
            // Read and checked here so a bad file names itself; redis parses it again.
            crate::tls::read_ca_file(path).map_err(|e| e.to_string())?;
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            redis::Client::build_with_tls(url, certificates).map_err(not_a_url)
        }
    }
}

/// The Redis sink.
pub struct RedisSink {
    name: String,
    client: redis::Client,
    template: KeyTemplate,
    value: Option<Expr>,
    ttl_seconds: u64,
    batch: BatchConfig,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink")
            .field("name", &self.name)
            .finish()
    }
}

impl RedisSink {
    /// Builds the sink: parses the template, compiles the value expression, reads the URL.
    pub fn build(env: &CelEnv, config: &RedisSinkConfig) -> Result<Self, SinkBuildError> {
        let invalid = |message: String| SinkBuildError::Invalid {
            sink: config.name.clone(),
            message,
        };
        let template =
            KeyTemplate::parse(&config.key_template).map_err(|e| invalid(e.to_string()))?;
        let value = match &config.value {
            Some(source) => Some(
                env.compile(source)
                    .map_err(|e| invalid(format!("value: {e}")))?,
            ),
            None => None,
        };
        let url = read_secret(&config.name, &config.url_file)?;
        let client = open_client(&url, config.ca_file.as_deref())
            .map_err(|e| invalid(format!("{}: {e}", config.url_file.display())))?;
        Ok(Self {
            name: config.name.clone(),
            client,
            template,
            value,
            ttl_seconds: config.ttl_seconds,
            batch: config.batch.clone(),
            connection: Mutex::new(None),
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

    /// Connects.
    pub async fn init(&self) -> Result<(), SinkError> {
        self.connection().await.map(|_| ())
    }

    /// The key from the template and the JSON value.
    pub fn prepare(&self, record: &Record) -> Result<Prepared, String> {
        let key = self
            .template
            .render(&record.value)
            .map_err(|e| e.to_string())?;
        let bytes = match &self.value {
            Some(expr) => json_bytes(&expr.eval(&record.value).map_err(|e| e.to_string())?),
            None => json_bytes(&record.value),
        };
        Ok(Prepared {
            id: record.id.clone(),
            key: Some(key),
            bytes,
            values: Vec::new(),
            refused: None,
        })
    }

    /// Writes the newest item per key of the batch, in one pipeline.
    pub async fn write(&self, batch: &[Prepared]) -> Result<(), SinkError> {
        let mut newest: HashMap<&str, &Prepared> = HashMap::new();
        for item in batch {
            let Some(key) = item.key.as_deref() else {
                continue;
            };
            match newest.get(key) {
                Some(current) if current.id >= item.id => {}
                _ => {
                    newest.insert(key, item);
                }
            }
        }
        let mut pipe = redis::pipe();
        for (key, item) in &newest {
            pipe.cmd("EVAL")
                .arg(SET_IF_NEWER)
                .arg(2)
                .arg(*key)
                .arg(id_key(key))
                .arg(&item.id)
                .arg(&item.bytes)
                .arg(self.ttl_seconds)
                .ignore();
        }
        let mut connection = self.connection().await?;
        let result: redis::RedisResult<()> = pipe.query_async(&mut connection).await;
        if let Err(e) = result {
            *self.connection.lock().await = None;
            return Err(SinkError::Unavailable(format!("redis: {e}")));
        }
        Ok(())
    }

    async fn connection(&self) -> Result<MultiplexedConnection, SinkError> {
        let mut guard = self.connection.lock().await;
        if let Some(connection) = guard.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| SinkError::Unavailable(format!("redis connect: {e}")))?;
        *guard = Some(connection.clone());
        Ok(connection)
    }
}
