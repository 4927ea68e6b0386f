//! PostgreSQL sink: each batch is COPYed into a session-local staging table, then moved
//! into the target with `INSERT ... SELECT ... ON CONFLICT DO NOTHING`, in one transaction.
//! COPY keeps the write cost close to a plain COPY; the staging step makes duplicates (an
//! at-least-once redelivery) harmless.

use serde_json::Value;
use tokio::sync::Mutex;
use tokio_postgres::Client;
use tributary_contract::sql::{is_plain_column_type, quote_ident, quote_table};
use tributary_contract::worker_config::{BatchConfig, PostgresSinkConfig};

use super::postgres_tls::Target;
use super::{read_secret, Prepared, SinkBuildError, SinkError};
use crate::batch::WRITES_IN_FLIGHT;
use crate::expr::{CelEnv, Expr};
use crate::record::Record;

const STAGE: &str = "tributary_stage";

/// The PostgreSQL sink.
pub struct PostgresSink {
    name: String,
    /// The parsed URL and TLS settings (never printed: the config holds the password);
    /// boxed, the config is large.
    target: Box<Target>,
    batch: BatchConfig,
    columns: Vec<Column>,
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

/// One mapped column: its name (for dead-letter reasons), how PostgreSQL reads its text,
/// and the expression computing its value.
struct Column {
    name: String,
    kind: ColumnKind,
    expr: Expr,
}

/// How PostgreSQL reads a column's text, as far as the checks before the COPY care.
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
/// refused by every column type (the COPY data is not valid text, SQLSTATE 22021), and one
/// anywhere in the JSON of a `jsonb` column (SQLSTATE 22P05). A `json` or `text` column
/// stores an object or array with the NUL escaped as `\u0000`, which is accepted. Integer
/// columns also refuse JSON values that are not integers in their range (strings are left to
/// the server, whose integer syntax is broader).
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

/// Appends a value to a COPY text-format line: NULL as `\N`, strings escaped, numbers and
/// bools as text, arrays and objects as JSON.
pub fn push_copy_field(line: &mut String, value: &Value) {
    use std::fmt::Write;
    match value {
        Value::Null => line.push_str("\\N"),
        Value::String(s) => push_escaped(line, s),
        // Digits, signs, `.`, `e` and the words true/false: nothing to escape.
        Value::Bool(b) => line.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(line, "{n}");
        }
        other => push_escaped(line, &other.to_string()),
    }
}

/// Appends `text` with COPY's text-format escapes.
fn push_escaped(line: &mut String, text: &str) {
    let mut rest = text;
    while let Some(at) = rest.find(['\\', '\n', '\r', '\t']) {
        line.push_str(&rest[..at]);
        let escaped = match rest.as_bytes()[at] {
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            _ => "\\t",
        };
        line.push_str(escaped);
        rest = &rest[at + 1..];
    }
    line.push_str(rest);
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
            columns.push(Column {
                name: column.name.clone(),
                kind: ColumnKind::of(&column.r#type),
                expr,
            });
        }
        let list = names.join(", ");
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

    /// One COPY line: the id, then each column's value. A value PostgreSQL would certainly
    /// refuse (see [`refusal`]) marks the message as refused instead, so it is dead-lettered
    /// and the rest of its batch is written in one transaction without it.
    pub fn prepare(&self, record: &Record) -> Result<Prepared, String> {
        let refused = |column: &str, why: &str| Prepared {
            id: record.id.clone(),
            key: None,
            bytes: Vec::new(),
            refused: Some(format!("column {column}: {why}")),
        };
        if record.id.contains('\0') {
            let id = Value::String(record.id.clone());
            let why = refusal(ColumnKind::Other, &id).unwrap_or("contains U+0000 (NUL)");
            return Ok(refused("id", why));
        }
        let mut line = String::with_capacity(128);
        push_escaped(&mut line, &record.id);
        // Built only for a column that is more than a field path present in the message.
        let mut scope = None;
        for column in &self.columns {
            let value = match column.expr.lookup(&record.value) {
                Some(value) => std::borrow::Cow::Borrowed(value),
                None => std::borrow::Cow::Owned(
                    column
                        .expr
                        .eval_in(scope.get_or_insert_with(|| self.env.scope(&record.value)))
                        .map_err(|e| e.to_string())?,
                ),
            };
            if let Some(why) = refusal(column.kind, &value) {
                return Ok(refused(&column.name, why));
            }
            line.push('\t');
            push_copy_field(&mut line, &value);
        }
        line.push('\n');
        Ok(Prepared {
            id: record.id.clone(),
            key: None,
            bytes: line.into_bytes(),
            refused: None,
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

    #[test]
    fn nul_in_a_string_is_refused_by_every_column_type() {
        for kind in [ColumnKind::Other, ColumnKind::Jsonb] {
            let why = refusal(kind, &json!("a\u{0}b")).expect("refused");
            assert!(why.contains("U+0000"), "{why}");
        }
        assert_eq!(refusal(ColumnKind::Other, &json!("a\\u0000b")), None);
    }

    #[test]
    fn nul_inside_json_is_refused_only_by_jsonb() {
        let nested = json!({"a": [1, {"b": "x\u{0}"}]});
        let key = json!({"k\u{0}": 1});
        for value in [&nested, &key] {
            assert!(refusal(ColumnKind::Jsonb, value).is_some(), "{value}");
            // text and json store the object with the NUL escaped as \u0000.
            assert_eq!(refusal(ColumnKind::Other, value), None, "{value}");
        }
        // A string in a jsonb column is parsed as JSON by the server.
        let text = json!(r#"{"a":"\u0000"}"#);
        assert!(refusal(ColumnKind::Jsonb, &text).is_some());
        assert_eq!(refusal(ColumnKind::Other, &text), None);
        // An escaped backslash before u0000 is not a NUL.
        assert_eq!(
            refusal(ColumnKind::Jsonb, &json!(r#"{"a":"\\u0000"}"#)),
            None
        );
    }

    #[test]
    fn ordinary_values_are_not_refused() {
        for value in [
            json!(null),
            json!(true),
            json!(21.5),
            json!("plain"),
            json!({"a": ["b", 1, null]}),
            json!("not json {"),
        ] {
            for kind in [ColumnKind::Other, ColumnKind::Jsonb] {
                assert_eq!(refusal(kind, &value), None, "{value}");
            }
        }
    }

    #[test]
    fn integer_columns_refuse_json_that_is_not_an_integer_in_range() {
        let int = ColumnKind::Integer(32);
        for ok in [
            json!(0),
            json!(-7),
            json!(2_147_483_647),
            json!(-2_147_483_648i64),
            json!("12"),
            json!(null),
        ] {
            assert_eq!(refusal(int, &ok), None, "{ok}");
        }
        for bad in [
            json!(21.5),
            json!(3.0),
            json!(true),
            json!([1]),
            json!({"a": 1}),
        ] {
            assert!(refusal(int, &bad).is_some_and(|why| why.contains("not an integer")));
        }
        for bad in [json!(2_147_483_648i64), json!(-2_147_483_649i64)] {
            assert!(
                refusal(int, &bad).is_some_and(|why| why.contains("range")),
                "{bad}"
            );
        }
        let small = ColumnKind::Integer(16);
        assert_eq!(refusal(small, &json!(-32768)), None);
        assert!(refusal(small, &json!(32768)).is_some());
        let big = ColumnKind::Integer(64);
        assert_eq!(refusal(big, &json!(i64::MIN)), None);
        assert_eq!(refusal(big, &json!(i64::MAX)), None);
        assert!(refusal(big, &json!(u64::MAX)).is_some());
    }

    #[test]
    fn column_kind_reads_the_sql_type() {
        assert_eq!(ColumnKind::of(" JSONB "), ColumnKind::Jsonb);
        assert_eq!(ColumnKind::of("BIGINT"), ColumnKind::Integer(64));
        assert_eq!(ColumnKind::of("int4"), ColumnKind::Integer(32));
        assert_eq!(ColumnKind::of("smallint"), ColumnKind::Integer(16));
        for other in [
            "json",
            "text",
            "jsonb[]",
            "double precision",
            "numeric(10,2)",
        ] {
            assert_eq!(ColumnKind::of(other), ColumnKind::Other, "{other}");
        }
    }
}
