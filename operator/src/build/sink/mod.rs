//! Validation of a Sink and its rendering into the worker config's sink section.

use super::{check_cel, name_and_namespace, BuildError};
use crate::crd::sink::{Batch, PostgresSink, RedisSink, S3Sink, WebhookSink};
use crate::crd::{SecretKeyRef, Sink};
use std::path::{Path, PathBuf};
use tributary_contract::sql;
use tributary_contract::worker_config::{
    BatchConfig, ColumnMapping, LiveSinkConfig, PostgresSinkConfig, RedisSinkConfig,
    RepublishSinkConfig, S3SinkConfig, SinkConfig, WebhookSinkConfig, DEFAULT_LIVE_BUFFER,
};

/// Folder in data-plane pods under which each referenced Secret is mounted as
/// `<folder>/<secret name>/<key>`.
pub const SECRETS_DIR: &str = "/etc/tributary/secrets";

/// Path of a Secret key mounted under [`SECRETS_DIR`].
pub fn secret_file(secret: &str, key: &str) -> PathBuf {
    Path::new(SECRETS_DIR).join(secret).join(key)
}

/// The one destination a valid Sink names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkKind {
    /// PostgreSQL.
    Postgres,
    /// Redis.
    Redis,
    /// S3-compatible storage.
    S3,
    /// HTTP webhook.
    Webhook,
    /// Another Queue.
    Queue,
    /// Commands to devices.
    Command,
    /// The application API's live feed.
    Live,
}

impl SinkKind {
    /// The name shown in `status.sinkType`.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Postgres => "postgres",
            SinkKind::Redis => "redis",
            SinkKind::S3 => "s3",
            SinkKind::Webhook => "webhook",
            SinkKind::Queue => "queue",
            SinkKind::Command => "command",
            SinkKind::Live => "live",
        }
    }
}

/// What the operator's settings allow Sinks to point at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkPolicy {
    /// Webhooks to loopback, link-local or unspecified addresses and to the Kubernetes API
    /// server (`--allow-internal-webhooks`); refused by default, since a worker would send
    /// tenant-chosen requests from inside the cluster.
    pub allow_internal_webhooks: bool,
}

/// Validates that exactly one destination is set and its fields make sense.
pub fn validate(sink: &Sink, policy: &SinkPolicy) -> Result<SinkKind, BuildError> {
    name_and_namespace(sink)?;
    let spec = &sink.spec;
    let set: Vec<SinkKind> = [
        (spec.postgres.is_some(), SinkKind::Postgres),
        (spec.redis.is_some(), SinkKind::Redis),
        (spec.s3.is_some(), SinkKind::S3),
        (spec.webhook.is_some(), SinkKind::Webhook),
        (spec.queue.is_some(), SinkKind::Queue),
        (spec.command.is_some(), SinkKind::Command),
        (spec.live.is_some(), SinkKind::Live),
    ]
    .into_iter()
    .filter_map(|(present, kind)| present.then_some(kind))
    .collect();
    let kind = match set.as_slice() {
        [kind] => *kind,
        [] => {
            return Err(BuildError::Invalid(
                "set exactly one of spec.postgres, redis, s3, webhook, queue, command or live"
                    .into(),
            ))
        }
        many => {
            let names: Vec<_> = many.iter().map(|k| k.as_str()).collect();
            return Err(BuildError::Invalid(format!(
                "set exactly one sink type, found {}",
                names.join(", ")
            )));
        }
    };
    if let Some(webhook) = &spec.webhook {
        validate_webhook_url(&webhook.url, policy)?;
    }
    if let Some(s3) = &spec.s3 {
        if !(s3.endpoint.starts_with("http://") || s3.endpoint.starts_with("https://")) {
            return Err(BuildError::Invalid(
                "spec.s3.endpoint must be an http(s) URL".into(),
            ));
        }
    }
    if let Some(postgres) = &spec.postgres {
        validate_postgres(postgres)?;
    }
    if let Some(value) = spec.redis.as_ref().and_then(|redis| redis.value.as_deref()) {
        check_cel("spec.redis.value", value)?;
    }
    if let Some(command) = &spec.command {
        command::validate(command)?;
    }
    if spec
        .live
        .as_ref()
        .and_then(|l| l.buffer_messages)
        .is_some_and(|n| n < 1)
    {
        return Err(BuildError::Invalid(
            "spec.live.bufferMessages must be at least 1".into(),
        ));
    }
    Ok(kind)
}

/// The PostgreSQL sink's names and expressions, checked as the worker will use them.
/// An http(s) URL with a host; internal targets only when `policy` allows them.
fn validate_webhook_url(text: &str, policy: &SinkPolicy) -> Result<(), BuildError> {
    let invalid = || BuildError::Invalid("spec.webhook.url must be an http(s) URL".into());
    let url = url::Url::parse(text).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid());
    }
    let host = url.host().ok_or_else(invalid)?;
    match internal_target(&host) {
        Some(what) if !policy.allow_internal_webhooks => Err(BuildError::Invalid(format!(
            "spec.webhook.url points at {what} ({host}); the operator refuses such targets \
             unless it runs with --allow-internal-webhooks"
        ))),
        _ => Ok(()),
    }
}

/// What an internal webhook host is, or `None` for an ordinary one. The `url` crate has
/// already normalized the host (numeric IPv4 forms such as `2130706433` or `0x7f.1`
/// become dotted addresses, names are lower-cased).
fn internal_target(host: &url::Host<&str>) -> Option<&'static str> {
    use std::net::{IpAddr, Ipv4Addr};
    let ip_kind = |ip: IpAddr| match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some("a loopback address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address"),
        IpAddr::V4(v4) if v4 == Ipv4Addr::UNSPECIFIED => Some("the unspecified address"),
        IpAddr::V6(v6) if v6.is_loopback() => Some("a loopback address"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => Some("a link-local address"),
        _ => None,
    };
    match host {
        url::Host::Ipv4(v4) => ip_kind(IpAddr::V4(*v4)),
        url::Host::Ipv6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => ip_kind(IpAddr::V4(v4)),
            None => ip_kind(IpAddr::V6(*v6)),
        },
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.');
            if name == "localhost" || name.ends_with(".localhost") {
                Some("a loopback address")
            } else if name == "kubernetes" || name.starts_with("kubernetes.default") {
                Some("the Kubernetes API server")
            } else {
                None
            }
        }
    }
}

fn validate_postgres(postgres: &PostgresSink) -> Result<(), BuildError> {
    if sql::quote_table(&postgres.table).is_none() {
        return Err(BuildError::Invalid(format!(
            "spec.postgres.table: {:?} is not a plain table name (letters, digits and _, \
             optionally schema.table)",
            postgres.table
        )));
    }
    if sql::quote_ident(&postgres.id_column).is_none() {
        return Err(BuildError::Invalid(format!(
            "spec.postgres.idColumn: {:?} is not a plain column name",
            postgres.id_column
        )));
    }
    if postgres.columns.is_empty() {
        return Err(BuildError::Invalid(
            "spec.postgres.columns: name at least one column to store".into(),
        ));
    }
    let mut seen = std::collections::BTreeSet::from([postgres.id_column.as_str()]);
    for (index, column) in postgres.columns.iter().enumerate() {
        let at = format!("spec.postgres.columns[{index}]");
        if sql::quote_ident(&column.name).is_none() {
            return Err(BuildError::Invalid(format!(
                "{at}: {:?} is not a plain column name",
                column.name
            )));
        }
        if !seen.insert(column.name.as_str()) {
            return Err(BuildError::Invalid(format!(
                "spec.postgres.columns: column {:?} appears twice",
                column.name
            )));
        }
        if !sql::is_plain_column_type(&column.type_) {
            return Err(BuildError::Invalid(format!(
                "{at}.type: {:?} is not a column type",
                column.type_
            )));
        }
        check_cel(&format!("{at}.expr"), &column.expr)?;
    }
    Ok(())
}

/// Every Secret key the Sink reads.
pub fn referenced_secrets(sink: &Sink) -> Vec<SecretKeyRef> {
    let spec = &sink.spec;
    let mut refs = Vec::new();
    if let Some(postgres) = &spec.postgres {
        refs.push(postgres.url_secret_ref.clone());
        refs.extend(postgres.ca_secret_ref.clone());
    }
    if let Some(redis) = &spec.redis {
        refs.push(redis.url_secret_ref.clone());
        refs.extend(redis.ca_secret_ref.clone());
    }
    if let Some(s3) = &spec.s3 {
        for key in ["accessKeyId", "secretAccessKey"] {
            refs.push(SecretKeyRef {
                name: s3.credentials_secret.clone(),
                key: key.to_owned(),
            });
        }
    }
    if let Some(webhook) = &spec.webhook {
        refs.push(webhook.hmac_secret_ref.clone());
    }
    refs
}

/// Name of the Queue a `queue` sink republishes to.
pub fn target_queue(sink: &Sink) -> Option<&str> {
    sink.spec.queue.as_ref().map(|q| q.name.as_str())
}

/// A `queue` sink's target, as dereferenced from the target Queue's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedTarget {
    /// Queue name on the broker.
    pub broker_queue: String,
    /// Secret key with the target broker's URI.
    pub uri: SecretKeyRef,
    /// Whose credentials `uri` holds (a managed broker's administrator's is never mounted).
    pub credentials: crate::build::queue::access::BrokerCredentials,
    /// Secret key with the PEM bundle of the target broker's private CA, if any.
    pub ca: Option<SecretKeyRef>,
}

fn batch(batch: &Option<Batch>) -> Result<Option<BatchConfig>, BuildError> {
    let Some(batch) = batch else { return Ok(None) };
    let invalid = |field: &str| BuildError::Invalid(format!("batch.{field} is out of range"));
    Ok(Some(BatchConfig {
        max_messages: usize::try_from(batch.max_messages).map_err(|_| invalid("maxMessages"))?,
        max_bytes: usize::try_from(batch.max_bytes).map_err(|_| invalid("maxBytes"))?,
        max_age_ms: u64::try_from(batch.max_age_ms).map_err(|_| invalid("maxAgeMs"))?,
    }))
}

/// Renders a validated Sink into the worker config's sink entry. `defaults` supplies the
/// contract's default batch per type when the spec sets none.
pub fn to_config(
    sink: &Sink,
    target: Option<&ResolvedTarget>,
    defaults: &dyn Fn(SinkKind) -> BatchConfig,
) -> Result<SinkConfig, BuildError> {
    let (name, namespace) = name_and_namespace(sink)?;
    // Which targets the operator allows was the Sink controller's decision (a Worker uses
    // only Ready Sinks); here only the shape matters.
    let kind = validate(
        sink,
        &SinkPolicy {
            allow_internal_webhooks: true,
        },
    )?;
    let spec = &sink.spec;
    let batch_of = |b: &Option<Batch>| Ok(batch(b)?.unwrap_or_else(|| defaults(kind)));
    let missing = || BuildError::Invalid("sink type vanished during rendering".into());
    Ok(match kind {
        SinkKind::Postgres => {
            let p = spec.postgres.as_ref().ok_or_else(missing)?;
            SinkConfig::Postgres(postgres_config(name, p, &batch_of)?)
        }
        SinkKind::Redis => {
            let r = spec.redis.as_ref().ok_or_else(missing)?;
            SinkConfig::Redis(redis_config(name, r, &batch_of)?)
        }
        SinkKind::S3 => {
            let s = spec.s3.as_ref().ok_or_else(missing)?;
            SinkConfig::S3(s3_config(name, s, &batch_of)?)
        }
        SinkKind::Webhook => {
            let w = spec.webhook.as_ref().ok_or_else(missing)?;
            SinkConfig::Webhook(webhook_config(name, w, &batch_of)?)
        }
        SinkKind::Queue => {
            let q = spec.queue.as_ref().ok_or_else(missing)?;
            let target = target.ok_or_else(|| {
                BuildError::Invalid(format!("target Queue {:?} is not resolved", q.name))
            })?;
            SinkConfig::Republish(RepublishSinkConfig {
                name,
                uri_file: Some({
                    let uri =
                        crate::build::queue::access::mountable(&target.uri, target.credentials)?;
                    secret_file(&uri.name, &uri.key)
                }),
                ca_file: target.ca.as_ref().map(|ca| secret_file(&ca.name, &ca.key)),
                exchange: String::new(),
                routing_key: target.broker_queue.clone(),
                batch: batch_of(&q.batch)?,
            })
        }
        SinkKind::Command => {
            let c = spec.command.as_ref().ok_or_else(missing)?;
            SinkConfig::Command(command::config(name, namespace, c, batch_of(&c.batch)?)?)
        }
        SinkKind::Live => {
            let l = spec.live.as_ref().ok_or_else(missing)?;
            let buffer_messages = match l.buffer_messages {
                None => DEFAULT_LIVE_BUFFER,
                Some(n) => u32::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
                    BuildError::Invalid("spec.live.bufferMessages must be at least 1".into())
                })?,
            };
            SinkConfig::Live(LiveSinkConfig {
                name,
                exchange: crate::build::api::live_exchange(&namespace),
                uri_file: None,
                ca_file: None,
                buffer_messages,
                batch: batch_of(&l.batch)?,
            })
        }
    })
}

/// A sink's batch: its own when set, else its type's default.
type BatchOf<'a> = &'a dyn Fn(&Option<Batch>) -> Result<BatchConfig, BuildError>;

fn postgres_config(
    name: String,
    p: &PostgresSink,
    batch_of: BatchOf,
) -> Result<PostgresSinkConfig, BuildError> {
    Ok(PostgresSinkConfig {
        name,
        url_file: secret_file(&p.url_secret_ref.name, &p.url_secret_ref.key),
        ca_file: p
            .ca_secret_ref
            .as_ref()
            .map(|c| secret_file(&c.name, &c.key)),
        table: p.table.clone(),
        id_column: p.id_column.clone(),
        columns: p
            .columns
            .iter()
            .map(|c| ColumnMapping {
                name: c.name.clone(),
                expr: c.expr.clone(),
                r#type: c.type_.clone(),
            })
            .collect(),
        create_table: p.create_table,
        batch: batch_of(&p.batch)?,
    })
}

fn redis_config(
    name: String,
    r: &RedisSink,
    batch_of: BatchOf,
) -> Result<RedisSinkConfig, BuildError> {
    let ttl = r.ttl_seconds.unwrap_or(0);
    Ok(RedisSinkConfig {
        name,
        url_file: secret_file(&r.url_secret_ref.name, &r.url_secret_ref.key),
        ca_file: r
            .ca_secret_ref
            .as_ref()
            .map(|c| secret_file(&c.name, &c.key)),
        key_template: r.key_template.clone(),
        value: r.value.clone(),
        ttl_seconds: u64::try_from(ttl)
            .map_err(|_| BuildError::Invalid("spec.redis.ttlSeconds < 0".into()))?,
        batch: batch_of(&r.batch)?,
    })
}

fn s3_config(name: String, s: &S3Sink, batch_of: BatchOf) -> Result<S3SinkConfig, BuildError> {
    Ok(S3SinkConfig {
        name,
        endpoint: s.endpoint.clone(),
        region: s.region.clone(),
        bucket: s.bucket.clone(),
        prefix: s.prefix.clone().unwrap_or_default(),
        access_key_id_file: secret_file(&s.credentials_secret, "accessKeyId"),
        secret_access_key_file: secret_file(&s.credentials_secret, "secretAccessKey"),
        create_bucket: s.create_bucket,
        batch: batch_of(&s.batch)?,
    })
}

fn webhook_config(
    name: String,
    w: &WebhookSink,
    batch_of: BatchOf,
) -> Result<WebhookSinkConfig, BuildError> {
    Ok(WebhookSinkConfig {
        name,
        url: w.url.clone(),
        secret_file: secret_file(&w.hmac_secret_ref.name, &w.hmac_secret_ref.key),
        signature_header: w.signature_header.clone(),
        timeout_ms: u64::try_from(w.timeout_ms)
            .map_err(|_| BuildError::Invalid("spec.webhook.timeoutMs < 0".into()))?,
        batch: batch_of(&w.batch)?,
    })
}

mod command;

#[cfg(test)]
mod tests;
