//! Reading what the sinks stored: PostgreSQL rows (a few kept-open connections, each in UTC
//! with a statement timeout) and the Redis Sink's latest values.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use serde_json::Value;
use thiserror::Error;
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};

use crate::sql::{Param, Statement};

/// A statement's parameters as tokio-postgres takes them.
pub fn bind_params(statement: &Statement) -> Vec<&(dyn ToSql + Sync)> {
    statement
        .params
        .iter()
        .map(|p| match p {
            Param::Text(v) => v as &(dyn ToSql + Sync),
            Param::TextArray(v) => v as &(dyn ToSql + Sync),
            Param::Int(v) => v as &(dyn ToSql + Sync),
        })
        .collect()
}

/// A failed read, as the client sees it.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The request asked for something the data cannot answer (a missing column, a value
    /// that is not a number): 400.
    #[error("{0}")]
    BadQuery(String),
    /// The database cancelled the query after the statement timeout: 504.
    #[error("the query took too long")]
    Timeout,
    /// The database or Redis cannot be reached: 503.
    #[error("{0}")]
    Unavailable(String),
}

fn classify(error: tokio_postgres::Error) -> StoreError {
    match error.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            if code == "57014" {
                StoreError::Timeout
            } else if code.starts_with("22") || code.starts_with("42") {
                // Data exceptions and undefined columns/functions: the request's field or
                // filter does not fit the table.
                StoreError::BadQuery(format!("the table cannot answer this: {}", db.message()))
            } else {
                StoreError::Unavailable(format!("database error {code}"))
            }
        }
        None => StoreError::Unavailable("database unreachable".into()),
    }
}

/// A few PostgreSQL connections used in turn; a closed one is reopened on next use.
pub struct Postgres {
    url: String,
    setup: String,
    slots: Vec<Mutex<Option<Arc<Client>>>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it carries the password.
        f.debug_struct("Postgres")
            .field("connections", &self.slots.len())
            .finish()
    }
}

impl Postgres {
    /// Connections are opened on first use.
    pub fn new(url: String, connections: usize, statement_timeout_ms: u64) -> Self {
        Self {
            url,
            setup: format!(
                "SET TIME ZONE 'UTC'; SET statement_timeout = {statement_timeout_ms}; \
                 SET default_transaction_read_only = on"
            ),
            slots: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[index].lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        *slot = None;
        let (client, connection) =
            tokio_postgres::connect(&self.url, NoTls)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "cannot connect to postgres");
                    StoreError::Unavailable("database unreachable".into())
                })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "postgres connection ended");
            }
        });
        client.batch_execute(&self.setup).await.map_err(classify)?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs a statement; its rows.
    pub async fn query(&self, statement: &Statement) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let params = bind_params(statement);
        client
            .query(statement.sql.as_str(), &params)
            .await
            .map_err(classify)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        match self.client().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }
}

/// The Redis Sink's latest values.
pub struct RedisLatest {
    client: redis::Client,
    prefix: String,
    suffix: String,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl std::fmt::Debug for RedisLatest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLatest")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The `{device}` placeholder split out of a key template; other placeholders refused.
pub fn split_template(template: &str) -> Result<(String, String), String> {
    let (prefix, suffix) = template
        .split_once("{device}")
        .ok_or_else(|| format!("redis.keyTemplate `{template}` must contain {{device}}"))?;
    if prefix.contains(['{', '}']) || suffix.contains(['{', '}']) {
        return Err(format!(
            "redis.keyTemplate `{template}` may use only {{device}}, once: the API cannot fill other fields"
        ));
    }
    Ok((prefix.to_string(), suffix.to_string()))
}

impl RedisLatest {
    /// Checks the URL and the template.
    pub fn new(url: &str, template: &str) -> Result<Self, String> {
        let (prefix, suffix) = split_template(template)?;
        let client =
            redis::Client::open(url).map_err(|_| "the redis URL is not valid".to_string())?;
        Ok(Self {
            client,
            prefix,
            suffix,
            connection: Mutex::new(None),
        })
    }

    /// The key of a device's latest value.
    pub fn key(&self, device: &str) -> String {
        // Encoded as the worker's Redis sink writes it.
        let mut key = self.prefix.clone();
        tributary_contract::redis_key::push_key_field(&mut key, device);
        key.push_str(&self.suffix);
        key
    }

    /// The stored value and its message id, if any.
    pub async fn latest(
        &self,
        device: &str,
    ) -> Result<Option<(Value, Option<String>)>, StoreError> {
        let key = self.key(device);
        // The sink keeps the stored value's id at `<key>#id`.
        let id_key = format!("{key}#id");
        let mut connection = self.connection().await?;
        let result: redis::RedisResult<(Option<Vec<u8>>, Option<String>)> = redis::cmd("MGET")
            .arg(&key)
            .arg(&id_key)
            .query_async(&mut connection)
            .await;
        match result {
            Ok((Some(bytes), id)) => {
                let value = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
                Ok(Some((value, id)))
            }
            Ok((None, _)) => Ok(None),
            Err(e) => {
                *self.connection.lock().await = None;
                tracing::warn!(error = %e, "redis read failed");
                Err(StoreError::Unavailable("redis unreachable".into()))
            }
        }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut guard = self.connection.lock().await;
        if let Some(connection) = guard.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot connect to redis");
                StoreError::Unavailable("redis unreachable".into())
            })?;
        *guard = Some(connection.clone());
        Ok(connection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_templates_take_only_the_device() {
        assert_eq!(
            split_template("factory:latest:{device}"),
            Ok(("factory:latest:".into(), String::new()))
        );
        assert_eq!(
            split_template("{device}:last"),
            Ok((String::new(), ":last".into()))
        );
        assert!(split_template("latest").is_err());
        assert!(split_template("site:{payload.site}:{device}").is_err());
    }
}
