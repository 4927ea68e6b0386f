//! SQL text for the API's three queries, built from checked names; every value a request
//! carries is a bind parameter, never part of the text.

use tributary_contract::api_config::PostgresSource;
use tributary_contract::sql::{quote_ident, quote_table};

use crate::query::{Cursor, Field, Order};

/// A bind parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// `text` (times too, cast in SQL).
    Text(String),
    /// `text[]`.
    TextArray(Vec<String>),
    /// `bigint`.
    Int(i64),
}

/// A statement and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// The SQL text.
    pub sql: String,
    /// `$1`, `$2`, … in order.
    pub params: Vec<Param>,
}

impl Statement {
    fn bind(&mut self, param: Param) -> String {
        self.params.push(param);
        format!("${}", self.params.len())
    }
}

/// UTC time text with microseconds and `Z`, for answers.
fn utc_text(expr: &str) -> String {
    format!("to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
}

/// Which devices a query reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceFilter {
    /// Every device.
    All,
    /// These devices.
    Devices(Vec<String>),
    /// Devices whose id starts with this.
    Prefix(String),
}

/// A LIKE pattern matching the values that start with `prefix` (its `\`, `%` and `_`
/// escaped with LIKE's default escape character).
pub fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The table's quoted names.
#[derive(Debug, Clone)]
pub struct Table {
    table: String,
    id: String,
    device: String,
    /// The time column cast to `timestamptz` (a no-op for a `timestamptz` column, so its
    /// indexes still serve).
    time: String,
}

impl Table {
    /// Checks and quotes the configured names.
    pub fn new(source: &PostgresSource) -> Result<Self, String> {
        let ident = |name: &str, what: &str| {
            quote_ident(name)
                .ok_or_else(|| format!("postgres.{what} `{name}` is not a plain column name"))
        };
        Ok(Self {
            table: quote_table(&source.table).ok_or_else(|| {
                format!(
                    "postgres.table `{}` is not a plain table name",
                    source.table
                )
            })?,
            id: ident(&source.id_column, "idColumn")?,
            device: ident(&source.device_column, "deviceColumn")?,
            time: format!(
                "CAST({} AS timestamptz)",
                ident(&source.time_column, "timeColumn")?
            ),
        })
    }

    fn filter(&self, statement: &mut Statement, filter: &DeviceFilter) -> String {
        let device = &self.device;
        match filter {
            DeviceFilter::All => "TRUE".into(),
            DeviceFilter::Devices(list) if list.len() == 1 => {
                let p = statement.bind(Param::Text(list[0].clone()));
                format!("{device} = {p}::text")
            }
            DeviceFilter::Devices(list) => {
                let p = statement.bind(Param::TextArray(list.clone()));
                format!("{device} = ANY({p}::text[])")
            }
            DeviceFilter::Prefix(prefix) => {
                // LIKE rather than starts_with(): PostgreSQL turns a constant LIKE prefix into
                // a range on a `text_pattern_ops` index under any collation and on every
                // version with date_bin (14+); starts_with() gets that only from 15 on.
                let p = statement.bind(Param::Text(like_prefix(prefix)));
                format!("{device} LIKE {p}::text")
            }
        }
    }

    fn range(&self, statement: &mut Statement, from: Option<&str>, to: Option<&str>) -> String {
        let mut sql = String::new();
        if let Some(from) = from {
            let p = statement.bind(Param::Text(from.into()));
            sql.push_str(&format!(" AND {} >= {p}::text::timestamptz", self.time));
        }
        if let Some(to) = to {
            let p = statement.bind(Param::Text(to.into()));
            sql.push_str(&format!(" AND {} < {p}::text::timestamptz", self.time));
        }
        sql
    }

    /// Devices with their last time and row count; columns: device, last seen, count.
    pub fn devices(&self, filter: &DeviceFilter, limit: u32) -> Statement {
        let mut s = Statement {
            sql: String::new(),
            params: vec![],
        };
        let condition = self.filter(&mut s, filter);
        let limit = s.bind(Param::Int(i64::from(limit)));
        s.sql = format!(
            "SELECT {device}::text, {last}, count(*) FROM {table} WHERE {condition} \
             GROUP BY {device} ORDER BY {device} LIMIT {limit}",
            device = self.device,
            last = utc_text(&format!("max({})", self.time)),
            table = self.table,
        );
        s
    }

    /// The newest row of one device; columns: the row as JSON text, its id.
    pub fn latest(&self, device: &str) -> Statement {
        let mut s = Statement {
            sql: String::new(),
            params: vec![],
        };
        let condition = self.filter(&mut s, &DeviceFilter::Devices(vec![device.into()]));
        s.sql = format!(
            "SELECT to_jsonb(r)::text, {id}::text FROM {table} r WHERE {condition} \
             ORDER BY {time} DESC, {id} DESC LIMIT 1",
            table = self.table,
            time = self.time,
            id = self.id,
        );
        s
    }

    /// One page of rows in `(time, id)` order after `cursor`, `limit + 1` rows so the caller
    /// knows whether another page follows; columns: row JSON, time text, id.
    pub fn history(
        &self,
        filter: &DeviceFilter,
        from: Option<&str>,
        to: Option<&str>,
        cursor: Option<&Cursor>,
        order: Order,
        limit: u32,
    ) -> Statement {
        let mut s = Statement {
            sql: String::new(),
            params: vec![],
        };
        let condition = self.filter(&mut s, filter);
        let range = self.range(&mut s, from, to);
        let (compare, direction) = match order {
            Order::Asc => (">", "ASC"),
            Order::Desc => ("<", "DESC"),
        };
        let after = match cursor {
            Some(cursor) => {
                let t = s.bind(Param::Text(cursor.time.clone()));
                let i = s.bind(Param::Text(cursor.id.clone()));
                format!(
                    " AND ({}, {}) {compare} ({t}::text::timestamptz, {i}::text)",
                    self.time, self.id
                )
            }
            None => String::new(),
        };
        let limit = s.bind(Param::Int(i64::from(limit) + 1));
        s.sql = format!(
            "SELECT to_jsonb(r)::text, {time}::text, {id}::text FROM {table} r \
             WHERE {condition} AND {time} IS NOT NULL{range}{after} \
             ORDER BY {time} {direction}, {id} {direction} LIMIT {limit}",
            time = self.time,
            id = self.id,
            table = self.table,
        );
        s
    }

    /// Count, average, minimum and maximum of `field` per `bucket_seconds` interval (aligned
    /// to the Unix epoch) over `[from, to)`; columns: bucket start, values, avg, min, max,
    /// rows. Rows whose field is absent or not a number count in `rows` only.
    pub fn buckets(
        &self,
        filter: &DeviceFilter,
        from: &str,
        to: &str,
        bucket_seconds: u64,
        field: &Field,
    ) -> Statement {
        let mut s = Statement {
            sql: String::new(),
            params: vec![],
        };
        let condition = self.filter(&mut s, filter);
        let range = self.range(&mut s, Some(from), Some(to));
        let value = if field.path.is_empty() {
            format!("CAST({} AS double precision)", field.column)
        } else {
            let p = s.bind(Param::TextArray(field.path.clone()));
            let json = format!("CAST({} AS jsonb)", field.column);
            format!(
                "CASE WHEN jsonb_typeof({json} #> {p}::text[]) = 'number' \
                 THEN CAST({json} #>> {p}::text[] AS double precision) END"
            )
        };
        let width = s.bind(Param::Int(
            i64::try_from(bucket_seconds).unwrap_or(i64::MAX),
        ));
        s.sql = format!(
            "SELECT {start}, count(v), avg(v), min(v), max(v), count(*) FROM (\
             SELECT date_bin({width}::bigint * interval '1 second', {time}, \
             TIMESTAMPTZ '1970-01-01 00:00:00+00') AS b, {value} AS v \
             FROM {table} WHERE {condition}{range}) s GROUP BY b ORDER BY b",
            start = utc_text("b"),
            time = self.time,
            table = self.table,
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn table() -> Table {
        Table::new(&PostgresSource {
            url_file: PathBuf::from("/x"),
            table: "telemetry.readings".into(),
            id_column: "id".into(),
            device_column: "machine".into(),
            time_column: "received_at".into(),
            connections: 1,
            statement_timeout_ms: 1000,
        })
        .expect("table")
    }

    #[test]
    fn bad_names_are_refused() {
        let mut source = PostgresSource {
            url_file: PathBuf::from("/x"),
            table: "readings; drop table x".into(),
            id_column: "id".into(),
            device_column: "device".into(),
            time_column: "t".into(),
            connections: 1,
            statement_timeout_ms: 1000,
        };
        assert!(Table::new(&source).is_err());
        source.table = "readings".into();
        source.device_column = "dev\"ice".into();
        assert!(Table::new(&source).is_err());
    }

    #[test]
    fn bucket_sql_bins_a_json_path_with_parameters_only() {
        let field = Field::parse("payload.temperature").expect("field");
        let s = table().buckets(
            &DeviceFilter::Prefix("site-a-".into()),
            "2026-01-05T10:00:00.000000Z",
            "2026-01-05T11:00:00.000000Z",
            60,
            &field,
        );
        assert_eq!(
            s.params,
            vec![
                Param::Text("site-a-%".into()),
                Param::Text("2026-01-05T10:00:00.000000Z".into()),
                Param::Text("2026-01-05T11:00:00.000000Z".into()),
                Param::TextArray(vec!["temperature".into()]),
                Param::Int(60),
            ]
        );
        assert!(s.sql.contains("\"machine\" LIKE $1::text"), "{}", s.sql);
        assert!(
            s.sql.contains("date_bin($5::bigint * interval '1 second'"),
            "{}",
            s.sql
        );
        assert!(s
            .sql
            .contains("jsonb_typeof(CAST(\"payload\" AS jsonb) #> $4::text[]) = 'number'"));
        assert!(s.sql.contains("FROM \"telemetry\".\"readings\""));
        assert!(
            !s.sql.contains("temperature"),
            "values stay out of the text"
        );
    }

    #[test]
    fn prefix_patterns_escape_like_wildcards() {
        assert_eq!(like_prefix("site-a-"), "site-a-%");
        assert_eq!(like_prefix("a_b%c\\"), "a\\_b\\%c\\\\%");
        assert_eq!(like_prefix(""), "%");
    }

    #[test]
    fn bucket_sql_casts_a_plain_column() {
        let field = Field::parse("temperature_c").expect("field");
        let s = table().buckets(&DeviceFilter::All, "a", "b", 300, &field);
        assert!(s
            .sql
            .contains("CAST(\"temperature_c\" AS double precision) AS v"));
        assert_eq!(s.params.len(), 3);
    }

    #[test]
    fn history_sql_pages_by_time_then_id() {
        let cursor = Cursor {
            time: "2026-01-05 10:00:00+00".into(),
            id: "01J".into(),
        };
        let s = table().history(
            &DeviceFilter::Devices(vec!["a".into(), "b".into()]),
            Some("f"),
            None,
            Some(&cursor),
            Order::Asc,
            50,
        );
        assert!(s.sql.contains("\"machine\" = ANY($1::text[])"), "{}", s.sql);
        assert!(s.sql.contains(
            "(CAST(\"received_at\" AS timestamptz), \"id\") > ($3::text::timestamptz, $4::text)"
        ));
        assert!(s
            .sql
            .ends_with("ORDER BY CAST(\"received_at\" AS timestamptz) ASC, \"id\" ASC LIMIT $5"));
        assert_eq!(s.params.last(), Some(&Param::Int(51)));
        let desc = table().history(
            &DeviceFilter::All,
            None,
            None,
            Some(&cursor),
            Order::Desc,
            10,
        );
        assert!(
            desc.sql.contains(") < ($1::text::timestamptz"),
            "{}",
            desc.sql
        );
        assert!(desc.sql.contains("DESC, \"id\" DESC"));
    }
}
