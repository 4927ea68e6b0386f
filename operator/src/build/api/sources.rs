//! The API config's data sources from the Sinks an ApplicationApi names: the PostgreSQL
//! Sink's table (with the device and time columns found from its column mapping) and the
//! Redis Sink's keys. A Sink of the wrong type, or one the API cannot read, is an
//! [`Unusable`] reference, not an invalid spec: the Sink may change.

use super::with_defaults;
use crate::build::sink::secret_file;
use crate::build::BuildError;
use crate::crd::application_api::HistorySpec;
use crate::crd::sink::PostgresSink;
use crate::crd::Sink;
use kube::ResourceExt;
use serde_json::json;
use tributary_contract::api_config::{PostgresSource, RedisSource};
use tributary_contract::sql;

/// The column name the API assumes for the device when the Sink maps none from `device`.
pub const DEFAULT_DEVICE_COLUMN: &str = "device";
/// The column name the API assumes for the time when the Sink maps none from `receivedAt`.
pub const DEFAULT_TIME_COLUMN: &str = "received_at";

/// Why a referenced Sink cannot feed the API (the message names the Sink).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unusable(pub String);

/// The column of the Sink whose CEL expression is exactly `expr` (whitespace aside).
fn column_from(postgres: &PostgresSink, expr: &str) -> Option<String> {
    postgres
        .columns
        .iter()
        .find(|column| column.expr.trim() == expr)
        .map(|column| column.name.clone())
}

/// The device and time columns: the spec's, else the Sink's columns computed from `device`
/// and `receivedAt`, else the API's defaults.
pub fn history_columns(spec: &HistorySpec, postgres: &PostgresSink) -> (String, String) {
    let device = spec
        .device_column
        .clone()
        .or_else(|| column_from(postgres, "device"))
        .unwrap_or_else(|| DEFAULT_DEVICE_COLUMN.to_owned());
    let time = spec
        .time_column
        .clone()
        .or_else(|| column_from(postgres, "receivedAt"))
        .unwrap_or_else(|| DEFAULT_TIME_COLUMN.to_owned());
    (device, time)
}

/// The `postgres` source from the history Sink.
pub fn postgres_source(
    spec: &HistorySpec,
    sink: &Sink,
) -> Result<Result<PostgresSource, Unusable>, BuildError> {
    let name = sink.name_any();
    let Some(postgres) = &sink.spec.postgres else {
        return Ok(Err(Unusable(format!(
            "spec.history.sink: Sink {name:?} is not a PostgreSQL Sink"
        ))));
    };
    if postgres.ca_secret_ref.is_some() {
        return Ok(Err(Unusable(format!(
            "spec.history.sink: Sink {name:?} trusts a private CA (caSecretRef); the API \
             connects to PostgreSQL without TLS and cannot use it yet"
        ))));
    }
    let (device_column, time_column) = history_columns(spec, postgres);
    for (field, column) in [
        ("deviceColumn", &device_column),
        ("timeColumn", &time_column),
    ] {
        if sql::quote_ident(column).is_none() {
            return Err(BuildError::Invalid(format!(
                "spec.history.{field}: {column:?} is not a plain column name"
            )));
        }
    }
    let url = &postgres.url_secret_ref;
    with_defaults(
        "postgres",
        json!({
            "urlFile": secret_file(&url.name, &url.key),
            "table": postgres.table,
            "idColumn": postgres.id_column,
            "deviceColumn": device_column,
            "timeColumn": time_column,
        }),
    )
    .map(Ok)
}

/// Whether a Redis key template can be filled from a device id alone: `{device}` is its
/// only placeholder (the API knows nothing else of a message when it reads).
pub fn fillable_by_device(template: &str) -> bool {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return false;
        };
        if &rest[open..open + close + 1] != "{device}" {
            return false;
        }
        rest = &rest[open + close + 1..];
    }
    !rest.contains('}')
}

/// The `redis` source from the latest-values Sink.
pub fn redis_source(sink: &Sink) -> Result<Result<RedisSource, Unusable>, BuildError> {
    let name = sink.name_any();
    let Some(redis) = &sink.spec.redis else {
        return Ok(Err(Unusable(format!(
            "spec.latest.sink: Sink {name:?} is not a Redis Sink"
        ))));
    };
    if !fillable_by_device(&redis.key_template) {
        return Ok(Err(Unusable(format!(
            "spec.latest.sink: Sink {name:?} has the key template {:?}; the API can fill only \
             {{device}}",
            redis.key_template
        ))));
    }
    if redis.ca_secret_ref.is_some() {
        return Ok(Err(Unusable(format!(
            "spec.latest.sink: Sink {name:?} trusts a private CA (caSecretRef), which the API \
             cannot use yet"
        ))));
    }
    let url = &redis.url_secret_ref;
    with_defaults(
        "redis",
        json!({
            "urlFile": secret_file(&url.name, &url.key),
            "keyTemplate": redis.key_template,
        }),
    )
    .map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::load;

    fn history(device: Option<&str>, time: Option<&str>) -> HistorySpec {
        HistorySpec {
            sink: "readings".into(),
            device_column: device.map(str::to_owned),
            time_column: time.map(str::to_owned),
        }
    }

    #[test]
    fn columns_default_to_the_sinks_device_and_received_at_columns() {
        let mut sink: Sink = load("sink-postgres.yaml");
        let postgres = sink.spec.postgres.as_mut().expect("postgres");
        postgres.columns[0].name = "machine".into();
        postgres.columns[0].expr = "device".into();
        postgres.columns[1].expr = " receivedAt ".into();
        postgres.columns[1].name = "seen_at".into();
        let (device, time) = history_columns(&history(None, None), postgres);
        assert_eq!((device.as_str(), time.as_str()), ("machine", "seen_at"));
        let (device, time) = history_columns(&history(Some("dev"), Some("ts")), postgres);
        assert_eq!(
            (device.as_str(), time.as_str()),
            ("dev", "ts"),
            "the spec wins"
        );
        postgres
            .columns
            .retain(|c| c.expr.trim() != "device" && c.expr.trim() != "receivedAt");
        let (device, time) = history_columns(&history(None, None), postgres);
        assert_eq!((device.as_str(), time.as_str()), ("device", "received_at"));
    }

    #[test]
    fn the_postgres_source_reads_the_sinks_table_and_url_secret() {
        let sink: Sink = load("sink-postgres.yaml");
        let source = postgres_source(&history(None, None), &sink)
            .expect("builds")
            .expect("usable");
        let postgres = sink.spec.postgres.as_ref().expect("postgres");
        assert_eq!(source.table, postgres.table);
        assert_eq!(source.id_column, postgres.id_column);
        let url = &postgres.url_secret_ref;
        assert_eq!(
            source.url_file,
            std::path::PathBuf::from(format!("/etc/tributary/secrets/{}/{}", url.name, url.key))
        );
        assert_eq!(source.connections, 4, "the API's own default");
    }

    #[test]
    fn a_sink_of_another_type_or_with_a_ca_is_unusable_and_a_bad_column_invalid() {
        let redis: Sink = load("sink-queue.yaml");
        let unusable = postgres_source(&history(None, None), &redis)
            .expect("builds")
            .expect_err("not postgres");
        assert!(
            unusable.0.contains("is not a PostgreSQL Sink"),
            "{unusable}"
        );
        let mut sink: Sink = load("sink-postgres.yaml");
        let error = postgres_source(&history(Some("a;b"), None), &sink).expect_err("invalid");
        assert!(
            error.to_string().contains("spec.history.deviceColumn"),
            "{error}"
        );
        sink.spec.postgres.as_mut().expect("postgres").ca_secret_ref =
            Some(crate::crd::SecretKeyRef {
                name: "ca".into(),
                key: "ca.crt".into(),
            });
        let unusable = postgres_source(&history(None, None), &sink)
            .expect("builds")
            .expect_err("CA");
        assert!(unusable.0.contains("private CA"), "{unusable}");
    }

    #[test]
    fn only_device_placeholders_can_be_filled_by_the_api() {
        for good in [
            "latest:{device}",
            "factory:latest:{device}",
            "x:{device}:{device}",
            "plain",
        ] {
            assert!(fillable_by_device(good), "{good}");
        }
        for bad in [
            "latest:{topic}",
            "{device}:{payload.site}",
            "a{device",
            "a}b",
            "{",
        ] {
            assert!(!fillable_by_device(bad), "{bad}");
        }
    }
}
