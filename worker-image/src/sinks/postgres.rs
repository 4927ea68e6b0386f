//! PostgreSQL sink: each batch is COPYed into a session-local staging table, then moved
//! into the target with `INSERT ... SELECT ... ON CONFLICT DO NOTHING`, in one transaction.
//! COPY keeps the write cost close to a plain COPY; the staging step makes duplicates (an
//! at-least-once redelivery) harmless.

use serde_json::Value;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};
use tributary_contract::sql::{is_plain_column_type, quote_ident, quote_table};
use tributary_contract::worker_config::{BatchConfig, PostgresSinkConfig};

use super::{read_secret, Prepared, SinkBuildError, SinkError};
use crate::batch::WRITES_IN_FLIGHT;
use crate::expr::{CelEnv, Expr};
use crate::record::Record;

const STAGE: &str = "tributary_stage";

/// The PostgreSQL sink.
pub struct PostgresSink {
    name: String,
    url: String,
    batch: BatchConfig,
    columns: Vec<Expr>,
    env: CelEnv,
    create_sql: Option<String>,
    stage_sql: String,
    copy_sql: String,
    insert_sql: String,
    /// One connection per batch in flight (each session has its own staging table).
    clients: [Mutex<Option<Client>>; WRITES_IN_FLIGHT],
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it carries the password.
        f.debug_struct("PostgresSink")
            .field("name", &self.name)
            .finish()
    }
}

/// Appends a value to a COPY text-format line: NULL as `\N`, strings escaped, numbers and
/// bools as text, arrays and objects as JSON.
pub fn push_copy_field(line: &mut String, value: &Value) {
    let text = match value {
        Value::Null => {
            line.push_str("\\N");
            return;
        }
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    };
    for c in text.chars() {
        match c {
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c => line.push(c),
        }
    }
}

impl PostgresSink {
    /// Builds the sink: compiles the column expressions and the SQL, reads the URL file.
    pub fn build(env: &CelEnv, config: &PostgresSinkConfig) -> Result<Self, SinkBuildError> {
        let invalid = |message: String| SinkBuildError::Invalid {
            sink: config.name.clone(),
            message,
        };
        let table = quote_table(&config.table)
            .ok_or_else(|| invalid(format!("`{}` is not a plain table name", config.table)))?;
        let id = quote_ident(&config.id_column)
            .ok_or_else(|| invalid(format!("`{}` is not a plain column name", config.id_column)))?;
        if config.columns.is_empty() {
            return Err(invalid("at least one column is required".into()));
        }
        let mut names = vec![id.clone()];
        let mut columns = Vec::new();
        let mut definitions = vec![format!("{id} text PRIMARY KEY")];
        for column in &config.columns {
            let name = quote_ident(&column.name)
                .ok_or_else(|| invalid(format!("`{}` is not a plain column name", column.name)))?;
            if names.contains(&name) {
                return Err(invalid(format!("column `{}` appears twice", column.name)));
            }
            if !is_plain_column_type(&column.r#type) {
                return Err(invalid(format!(
                    "column type `{}` is not valid",
                    column.r#type
                )));
            }
            let expr = env
                .compile(&column.expr)
                .map_err(|e| invalid(format!("column {}: {e}", column.name)))?;
            definitions.push(format!("{name} {}", column.r#type));
            names.push(name);
            columns.push(expr);
        }
        let list = names.join(", ");
        Ok(Self {
            name: config.name.clone(),
            url: read_secret(&config.name, &config.url_file)?,
            batch: config.batch.clone(),
            columns,
            env: env.clone(),
            create_sql: config.create_table.then(|| {
                format!(
                    "CREATE TABLE IF NOT EXISTS {table} ({})",
                    definitions.join(", ")
                )
            }),
            stage_sql: format!(
                "CREATE TEMP TABLE IF NOT EXISTS {STAGE} ON COMMIT DELETE ROWS AS SELECT {list} FROM {table} WITH NO DATA"
            ),
            copy_sql: format!("COPY {STAGE} ({list}) FROM STDIN"),
            insert_sql: format!(
                "INSERT INTO {table} ({list}) SELECT {list} FROM {STAGE} ON CONFLICT DO NOTHING"
            ),
            clients: std::array::from_fn(|_| Mutex::new(None)),
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

    /// Connects and creates the table when asked to.
    pub async fn init(&self) -> Result<(), SinkError> {
        let mut guard = self.lock_client().await;
        self.connected(&mut guard).await.map(|_| ())
    }

    /// One COPY line: the id, then each column's value.
    pub fn prepare(&self, record: &Record) -> Result<Prepared, String> {
        let mut line = String::with_capacity(128);
        push_copy_field(&mut line, &Value::String(record.id.clone()));
        let scope = self.env.scope(&record.value);
        for expr in &self.columns {
            let value = expr.eval_in(&scope).map_err(|e| e.to_string())?;
            line.push('\t');
            push_copy_field(&mut line, &value);
        }
        line.push('\n');
        Ok(Prepared {
            id: record.id.clone(),
            key: None,
            bytes: line.into_bytes(),
        })
    }

    /// Writes a batch in one transaction; duplicates of stored ids are skipped.
    pub async fn write(&self, batch: &[Prepared]) -> Result<(), SinkError> {
        let mut guard = self.lock_client().await;
        let client = self.connected(&mut guard).await?;
        let result = write_batch(client, self, batch).await;
        if let Err(e) = result {
            let error = classify(&e);
            if matches!(error, SinkError::Unavailable(_)) {
                // Reconnect next time: the session (and its staging table) may be gone.
                *guard = None;
            }
            return Err(error);
        }
        Ok(())
    }

    /// A free connection slot, or the first one once it is free.
    async fn lock_client(&self) -> tokio::sync::MutexGuard<'_, Option<Client>> {
        for slot in &self.clients {
            if let Ok(guard) = slot.try_lock() {
                return guard;
            }
        }
        // WRITES_IN_FLIGHT >= 1, so slot 0 exists.
        self.clients[0].lock().await
    }

    async fn connected<'a>(
        &self,
        guard: &'a mut Option<Client>,
    ) -> Result<&'a mut Client, SinkError> {
        if guard.as_ref().is_some_and(|c| c.is_closed()) {
            *guard = None;
        }
        if guard.is_none() {
            let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
                .await
                .map_err(|e| SinkError::Unavailable(format!("connect: {e}")))?;
            let name = self.name.clone();
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(sink = %name, error = %e, "postgres connection ended");
                }
            });
            if let Some(sql) = &self.create_sql {
                client.batch_execute(sql).await.map_err(|e| classify(&e))?;
            }
            client
                .batch_execute(&self.stage_sql)
                .await
                .map_err(|e| classify(&e))?;
            *guard = Some(client);
        }
        guard
            .as_mut()
            .ok_or_else(|| SinkError::Unavailable("no connection".into()))
    }
}

async fn write_batch(
    client: &mut Client,
    sink: &PostgresSink,
    batch: &[Prepared],
) -> Result<(), tokio_postgres::Error> {
    use futures::SinkExt;
    let transaction = client.transaction().await?;
    let copy = transaction
        .copy_in::<_, bytes::Bytes>(sink.copy_sql.as_str())
        .await?;
    let mut copy = std::pin::pin!(copy);
    let size: usize = batch.iter().map(|p| p.bytes.len()).sum();
    let mut buffer = Vec::with_capacity(size);
    for item in batch {
        buffer.extend_from_slice(&item.bytes);
    }
    copy.send(bytes::Bytes::from(buffer)).await?;
    copy.as_mut().finish().await?;
    transaction.batch_execute(&sink.insert_sql).await?;
    transaction.commit().await
}

/// Data errors (SQLSTATE classes 22 and 23: a value the column cannot hold, a constraint) name
/// the message; everything else is an outage waited for: connection exceptions (08),
/// rollbacks and deadlocks (40), insufficient resources (53), operator intervention such as
/// a shutdown (57), system errors (58), refused credentials (28), a missing table or column
/// someone may yet create (42), and a lost connection (no SQLSTATE).
fn classify(error: &tokio_postgres::Error) -> SinkError {
    let text = match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error.to_string(),
    };
    match error.code().map(|c| c.code()) {
        Some(code) if code.starts_with("22") || code.starts_with("23") => SinkError::Rejected(text),
        _ => SinkError::Unavailable(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn copy_fields_are_escaped() {
        let mut line = String::new();
        for value in [
            json!("a\tb\\c\nd"),
            json!(null),
            json!(21.5),
            json!({"k": [1]}),
        ] {
            push_copy_field(&mut line, &value);
            line.push('|');
        }
        assert_eq!(line, "a\\tb\\\\c\\nd|\\N|21.5|{\"k\":[1]}|");
    }
}
