//! PostgreSQL sink: each batch is one statement, `INSERT INTO target (id, columns) SELECT ...
//! FROM unnest($1::text[], $2::text[], ...) ON CONFLICT DO NOTHING`, prepared once per
//! connection. Each column travels as one array of text values (SQL NULL for a JSON null);
//! the server casts each value to the column's type as the table declares it (looked up when
//! connecting), reading the text with the type's own input, as COPY would. One statement is
//! atomic, so a batch is stored whole or not at all; an id already stored (an at-least-once
//! redelivery) or repeated within the batch is skipped, so each id is stored once.

use std::borrow::Cow;

use serde_json::Value;
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};
use tributary_contract::sql::{is_plain_column_type, quote_ident, quote_table};
use tributary_contract::worker_config::{BatchConfig, PostgresSinkConfig};

use super::postgres_tls::Target;
use super::{read_secret, Prepared, SinkBuildError, SinkError};
use crate::batch::WRITES_IN_FLIGHT;
use crate::expr::{CelEnv, Expr};
use crate::record::Record;

/// The types of a table's columns by name, as the table declares them (a column's `type` in
/// the config is only for `createTable`), spelled without a modifier: `format_type(.., -1)`
/// names `varchar(5)` `character varying` and `bit(3)` `"bit"`, whose casts keep a value
/// whole; the column's modifier then applies on insert, which refuses a value too long
/// where a cast would cut it.
const COLUMN_TYPES_SQL: &str = "SELECT a.attname::text, format_type(a.atttypid, -1) \
     FROM pg_attribute a \
     WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped";

/// The PostgreSQL sink.
pub struct PostgresSink {
    name: String,
    /// The parsed URL and TLS settings (never printed: the config holds the password);
    /// boxed, the config is large.
    target: Box<Target>,
    batch: BatchConfig,
    /// The table, quoted.
    table: String,
    /// The id column's name, then each mapped column's, as configured (unquoted): the
    /// statement's arrays, in order.
    names: Vec<String>,
    /// The same names, quoted.
    quoted: Vec<String>,
    columns: Vec<Column>,
    env: CelEnv,
    create_sql: Option<String>,
    /// One connection per batch in flight, each with its prepared INSERT.
    sessions: [Mutex<Option<Session>>; WRITES_IN_FLIGHT],
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it carries the password.
        f.debug_struct("PostgresSink")
            .field("name", &self.name)
            .finish()
    }
}

/// One connection and the INSERT prepared on it.
struct Session {
    client: Client,
    insert: Statement,
}

/// One mapped column: its name (for dead-letter reasons), how PostgreSQL reads its text,
/// and the expression computing its value.
struct Column {
    name: String,
    kind: ColumnKind,
    expr: Expr,
}

/// How PostgreSQL reads a column's text, as far as the checks before the write care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// `jsonb`: the text is parsed as JSON and its strings stored as text, so a `\u0000`
    /// escape anywhere inside is refused (SQLSTATE 22P05).
    Jsonb,
    /// `smallint`, `integer` or `bigint` (and their `int2`/`int4`/`int8` names), with the
    /// width in bits: a JSON number with a fraction or out of range, a boolean, an object or
    /// an array is refused (SQLSTATE 22P02 or 22003).
    Integer(u32),
    /// Any other type (`text`, `json`, `numeric`, times, ...).
    Other,
}

impl ColumnKind {
    /// The kind of a column of SQL type `sql_type` (as written in the config).
    pub fn of(sql_type: &str) -> Self {
        match sql_type.trim().to_ascii_lowercase().as_str() {
            "jsonb" => ColumnKind::Jsonb,
            "smallint" | "int2" => ColumnKind::Integer(16),
            "integer" | "int" | "int4" => ColumnKind::Integer(32),
            "bigint" | "int8" => ColumnKind::Integer(64),
            _ => ColumnKind::Other,
        }
    }
}

/// Why PostgreSQL would certainly refuse `value` in a column of `kind`, or None. Only
/// refusals that are certain and cheap to see are checked (the server still judges the
/// rest): U+0000 (NUL), which no PostgreSQL text value can hold — a NUL in a string is
/// refused by every column type (the text parameter is not valid UTF-8 to the server,
/// SQLSTATE 22021), and one anywhere in the JSON of a `jsonb` column (SQLSTATE 22P05). A
/// `json` or `text` column stores an object or array with the NUL escaped as `\u0000`, which
/// is accepted. Integer columns also refuse JSON values that are not integers in their range
/// (strings are left to the server, whose integer syntax is broader).
pub fn refusal(kind: ColumnKind, value: &Value) -> Option<&'static str> {
    const NUL_TEXT: &str = "contains U+0000 (NUL), which PostgreSQL cannot store in text";
    const NUL_JSONB: &str = "contains U+0000 (NUL), which PostgreSQL cannot store in jsonb";
    const NOT_INTEGER: &str = "is not an integer, which the integer column cannot store";
    const OUT_OF_RANGE: &str = "is out of the integer column's range";
    match (kind, value) {
        (ColumnKind::Integer(bits), Value::Number(n)) => {
            let limit = 1i128 << (bits.clamp(1, 64) - 1);
            match n.as_i64().map(i128::from) {
                Some(i) if (-limit..limit).contains(&i) => None,
                Some(_) => Some(OUT_OF_RANGE),
                None if n.is_u64() => Some(OUT_OF_RANGE),
                None => Some(NOT_INTEGER),
            }
        }
        (ColumnKind::Integer(_), Value::Bool(_) | Value::Array(_) | Value::Object(_)) => {
            Some(NOT_INTEGER)
        }
        (_, Value::String(s)) if s.contains('\0') => Some(NUL_TEXT),
        // A string in a jsonb column is parsed as JSON by the server: look inside it. A
        // string serde_json cannot parse is left to the server (its rules differ at the edges).
        (ColumnKind::Jsonb, Value::String(s)) if s.contains("\\u0000") => {
            serde_json::from_str::<Value>(s)
                .ok()
                .filter(json_has_nul)
                .map(|_| NUL_JSONB)
        }
        (ColumnKind::Jsonb, Value::Array(_) | Value::Object(_)) if json_has_nul(value) => {
            Some(NUL_JSONB)
        }
        _ => None,
    }
}

/// Whether any string or object key inside `value` contains U+0000.
fn json_has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(json_has_nul),
        Value::Object(map) => map
            .iter()
            .any(|(key, item)| key.contains('\0') || json_has_nul(item)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// The text PostgreSQL reads into a column for `value`: None (SQL NULL) for null, a string
/// as it is, numbers and booleans as their JSON text (`21.5`, `true`), arrays and objects as
/// JSON.
pub fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// [`text_of`], taking a computed string instead of copying it.
fn into_text(value: Cow<'_, Value>) -> Option<String> {
    match value {
        Cow::Owned(Value::String(s)) => Some(s),
        value => text_of(&value),
    }
}

/// The statement writing a batch into `table`: the columns `names` (quoted, the id's first)
/// take the values of one text array each, cast to `types` (the columns' own).
fn insert_sql(table: &str, names: &[String], types: &[String]) -> String {
    let list = names.join(", ");
    let arrays: Vec<String> = (1..=names.len()).map(|n| format!("${n}::text[]")).collect();
    let aliases: Vec<String> = (0..names.len()).map(|i| format!("v{i}")).collect();
    let casts: Vec<String> = aliases
        .iter()
        .zip(types)
        .map(|(alias, sql_type)| format!("CAST({alias} AS {sql_type})"))
        .collect();
    format!(
        "INSERT INTO {table} ({list}) SELECT {} FROM unnest({}) AS batch({}) ON CONFLICT DO NOTHING",
        casts.join(", "),
        arrays.join(", "),
        aliases.join(", ")
    )
}

/// The batch as the statement's parameters: one array per column, the ids first, then each
/// mapped column's values (NULL where an item has none, so the rows stay aligned).
fn column_arrays(batch: &[Prepared], columns: usize) -> Vec<Vec<Option<&str>>> {
    let ids = batch.iter().map(|item| Some(item.id.as_str())).collect();
    let values = (0..columns).map(|column| {
        batch
            .iter()
            .map(|item| item.values.get(column).and_then(Option::as_deref))
            .collect()
    });
    std::iter::once(ids).chain(values).collect()
}

impl PostgresSink {
    /// Builds the sink: compiles the column expressions, reads the URL file.
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
        let mut names = vec![config.id_column.clone()];
        let mut quoted = vec![id.clone()];
        let mut columns = Vec::new();
        let mut definitions = vec![format!("{id} text PRIMARY KEY")];
        for column in &config.columns {
            let name = quote_ident(&column.name)
                .ok_or_else(|| invalid(format!("`{}` is not a plain column name", column.name)))?;
            if names.contains(&column.name) {
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
            names.push(column.name.clone());
            quoted.push(name);
            columns.push(Column {
                name: column.name.clone(),
                kind: ColumnKind::of(&column.r#type),
                expr,
            });
        }
        Ok(Self {
            name: config.name.clone(),
            target: Box::new(
                Target::parse(
                    &read_secret(&config.name, &config.url_file)?,
                    config.ca_file.as_deref(),
                )
                .map_err(|e| invalid(format!("{}: {e}", config.url_file.display())))?,
            ),
            batch: config.batch.clone(),
            create_sql: config.create_table.then(|| {
                format!(
                    "CREATE TABLE IF NOT EXISTS {table} ({})",
                    definitions.join(", ")
                )
            }),
            table,
            names,
            quoted,
            columns,
            env: env.clone(),
            sessions: std::array::from_fn(|_| Mutex::new(None)),
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

    /// Connects, creates the table when asked to and prepares the INSERT.
    pub async fn init(&self) -> Result<(), SinkError> {
        let mut guard = self.lock_session().await;
        self.connected(&mut guard).await.map(|_| ())
    }

    /// One row: each column's value as text. A value PostgreSQL would certainly refuse (see
    /// [`refusal`]) marks the message as refused instead, so it is dead-lettered and the rest
    /// of its batch is written in one statement without it.
    pub fn prepare(&self, record: &Record) -> Result<Prepared, String> {
        let refused = |column: &str, why: &str| Prepared {
            id: record.id.clone(),
            key: None,
            bytes: Vec::new(),
            values: Vec::new(),
            refused: Some(format!("column {column}: {why}")),
        };
        if record.id.contains('\0') {
            let id = Value::String(record.id.clone());
            let why = refusal(ColumnKind::Other, &id).unwrap_or("contains U+0000 (NUL)");
            return Ok(refused("id", why));
        }
        let mut values = Vec::with_capacity(self.columns.len());
        // Built only for a column that is more than a field path present in the message.
        let mut scope = None;
        for column in &self.columns {
            let value = match column.expr.lookup(&record.value) {
                Some(value) => Cow::Borrowed(value),
                None => Cow::Owned(
                    column
                        .expr
                        .eval_in(scope.get_or_insert_with(|| self.env.scope(&record.value)))
                        .map_err(|e| e.to_string())?,
                ),
            };
            if let Some(why) = refusal(column.kind, &value) {
                return Ok(refused(&column.name, why));
            }
            values.push(into_text(value));
        }
        Ok(Prepared {
            id: record.id.clone(),
            key: None,
            bytes: Vec::new(),
            values,
            refused: None,
        })
    }

    /// Writes a batch in one statement; ids already stored, and repeats within the batch,
    /// are skipped.
    pub async fn write(&self, batch: &[Prepared]) -> Result<(), SinkError> {
        let mut guard = self.lock_session().await;
        let session = self.connected(&mut guard).await?;
        let arrays = column_arrays(batch, self.columns.len());
        let params: Vec<&(dyn ToSql + Sync)> = arrays
            .iter()
            .map(|array| array as &(dyn ToSql + Sync))
            .collect();
        if let Err(e) = session.client.execute(&session.insert, &params).await {
            let error = classify(&e);
            if matches!(error, SinkError::Unavailable(_)) {
                // Reconnect next time: the session may be gone, or the table changed under
                // the prepared statement (its column types are looked up again).
                *guard = None;
            }
            return Err(error);
        }
        Ok(())
    }

    /// A free connection slot, or the first one once it is free.
    async fn lock_session(&self) -> tokio::sync::MutexGuard<'_, Option<Session>> {
        for slot in &self.sessions {
            if let Ok(guard) = slot.try_lock() {
                return guard;
            }
        }
        // WRITES_IN_FLIGHT >= 1, so slot 0 exists.
        self.sessions[0].lock().await
    }

    /// The slot's session, connected first when it has none or its connection ended.
    async fn connected<'a>(
        &self,
        guard: &'a mut Option<Session>,
    ) -> Result<&'a Session, SinkError> {
        if guard.as_ref().is_some_and(|s| s.client.is_closed()) {
            *guard = None;
        }
        if guard.is_none() {
            *guard = Some(self.connect().await?);
        }
        guard
            .as_ref()
            .ok_or_else(|| SinkError::Unavailable("no connection".into()))
    }

    /// A new session: connects, creates the table when asked to, looks up its column types
    /// and prepares the INSERT.
    async fn connect(&self) -> Result<Session, SinkError> {
        let target = &self.target;
        let (client, connection) = target
            .config
            .connect(target.tls.clone())
            .await
            .map_err(|e| SinkError::Unavailable(format!("connect: {}", with_causes(&e))))?;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(sink = %name, error = %e, "postgres connection ended");
            }
        });
        if let Some(sql) = &self.create_sql {
            client.batch_execute(sql).await.map_err(|e| classify(&e))?;
        }
        let types = column_types(&client, &self.table, &self.names).await?;
        let insert = client
            .prepare(&insert_sql(&self.table, &self.quoted, &types))
            .await
            .map_err(|e| classify(&e))?;
        Ok(Session { client, insert })
    }
}

/// The type of each of `names` in `table` (see [`COLUMN_TYPES_SQL`]), in order. A missing
/// table or column is an outage, as a failed INSERT into it would be: someone may yet
/// create it.
async fn column_types(
    client: &Client,
    table: &str,
    names: &[String],
) -> Result<Vec<String>, SinkError> {
    let rows = client
        .query(COLUMN_TYPES_SQL, &[&table])
        .await
        .map_err(|e| classify(&e))?;
    let declared = rows
        .iter()
        .map(|row| Ok((row.try_get::<_, &str>(0)?, row.try_get::<_, String>(1)?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(|e| classify(&e))?;
    names
        .iter()
        .map(|name| {
            declared
                .iter()
                .find(|(column, _)| column == name)
                .map(|(_, sql_type)| sql_type.clone())
                .ok_or_else(|| {
                    SinkError::Unavailable(format!("column \"{name}\" of {table} does not exist"))
                })
        })
        .collect()
}

/// The error and its causes: tokio-postgres prints only its own kind ("error performing TLS
/// handshake"), the cause says which (a certificate not trusted, a refused connection).
fn with_causes(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// Data errors (SQLSTATE classes 22 and 23: a value the column cannot hold, a constraint) name
/// the message; everything else is an outage waited for: connection exceptions (08),
/// rollbacks and deadlocks (40), insufficient resources (53), operator intervention such as
/// a shutdown (57), system errors (58), refused credentials (28), a missing table or column
/// someone may yet create (42), and a lost connection (no SQLSTATE).
fn classify(error: &tokio_postgres::Error) -> SinkError {
    let text = match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => with_causes(error),
    };
    match error.code().map(|c| c.code()) {
        Some(code) if code.starts_with("22") || code.starts_with("23") => SinkError::Rejected(text),
        _ => SinkError::Unavailable(text),
    }
}

#[cfg(test)]
#[path = "postgres_tests.rs"]
mod tests;
