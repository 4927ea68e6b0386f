//! Loading and checking the worker config file (YAML or JSON).

use std::collections::HashSet;
use std::path::Path;

use tributary_contract::config_file;
use tributary_contract::worker_config::WorkerConfig;

pub use tributary_contract::config_file::ConfigError;

/// Reads, parses and checks a config file.
pub fn load(path: &Path) -> Result<WorkerConfig, ConfigError> {
    config_file::load(path, validate)
}

/// Parses and checks config text (YAML, of which JSON is a subset).
pub fn parse(text: &str) -> Result<WorkerConfig, ConfigError> {
    let config = config_file::parse(text)?;
    validate(&config)?;
    Ok(config)
}

/// Checks what the types cannot express.
pub fn validate(config: &WorkerConfig) -> Result<(), ConfigError> {
    let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
    if config.queue.name.is_empty() {
        return invalid("queue.name must not be empty");
    }
    if config.queue.prefetch == 0 {
        return invalid("queue.prefetch must be at least 1");
    }
    if config.queue.concurrency == 0 {
        return invalid("queue.concurrency must be at least 1");
    }
    if config.sinks.is_empty() {
        return invalid("at least one sink is required");
    }
    let mut names = HashSet::new();
    for sink in &config.sinks {
        let name = sink.name();
        if name.is_empty() {
            return invalid("every sink needs a name");
        }
        if !names.insert(name) {
            return Err(ConfigError::Invalid(format!(
                "sink name `{name}` is used twice"
            )));
        }
    }
    if config.retry.initial_backoff_ms == 0
        || config.retry.max_backoff_ms < config.retry.initial_backoff_ms
    {
        return invalid("retry: need 0 < initialBackoffMs <= maxBackoffMs");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_contract::command::DEFAULT_TTL_SECONDS;
    use tributary_contract::worker_config::{
        ProcessingConfig, SinkConfig, DEFAULT_REPUBLISH_BATCH,
    };

    const FULL: &str = r#"
queue:
  uriFile: /var/run/secrets/amqp/uri
  name: telemetry
  prefetch: 200
  concurrency: 2
deadLetter:
  routingKey: telemetry.dlq
retry:
  maxAttempts: 5
processing:
  pipeline:
    steps:
      - filter: "payload.temp > -50.0"
      - set: {field: celsius, expr: "payload.temp"}
      - drop: [payload.raw]
sinks:
  - postgres:
      name: rows
      urlFile: /s/pg
      table: readings
      createTable: true
      columns:
        - {name: device, expr: device}
        - {name: celsius, expr: celsius, type: double precision}
  - redis: {name: latest, urlFile: /s/redis, keyTemplate: "latest:{device}", ttlSeconds: 60}
  - s3:
      name: archive
      endpoint: http://127.0.0.1:9100
      bucket: raw
      accessKeyIdFile: /s/ak
      secretAccessKeyFile: /s/sk
      batch: {maxMessages: 100, maxBytes: 1000000, maxAgeMs: 1000}
  - webhook: {name: hook, url: "http://127.0.0.1:8081/in", secretFile: /s/hook}
  - republish: {name: fwd, routingKey: processed}
http:
  listen: 127.0.0.1:9191
"#;

    #[test]
    fn full_yaml_config_parses() {
        let config = parse(FULL).expect("parse");
        assert_eq!(config.queue.prefetch, 200);
        assert_eq!(config.sinks.len(), 5);
        assert!(
            matches!(config.processing, Some(ProcessingConfig::Pipeline(ref p)) if p.steps.len() == 3)
        );
        let SinkConfig::S3(s3) = &config.sinks[2] else {
            panic!("not s3")
        };
        assert_eq!(s3.batch.max_messages, 100);
        assert_eq!(s3.region, "us-east-1");
    }

    #[test]
    fn misspelled_field_is_rejected_with_its_name() {
        let text = FULL.replace("keyTemplate", "keyTemplat");
        let error = parse(&text).expect_err("invalid").to_string();
        assert!(error.contains("at sinks[1].redis"), "{error}");
        assert!(error.contains("unknown field `keyTemplat`"), "{error}");
    }

    #[test]
    fn duplicate_sink_names_are_rejected() {
        let text = FULL.replace("name: latest", "name: rows");
        let error = parse(&text).expect_err("invalid").to_string();
        assert!(error.contains("`rows` is used twice"), "{error}");
    }

    #[test]
    fn a_command_sink_needs_only_name_tenant_and_command() {
        let text = "queue: {uriFile: /u, name: q}\n\
                    sinks: [{command: {name: fan, tenant: factory, command: fan/set}}]\n";
        let config = parse(text).expect("parse");
        let SinkConfig::Command(sink) = &config.sinks[0] else {
            panic!("a command sink");
        };
        assert_eq!(sink.ttl_seconds, DEFAULT_TTL_SECONDS);
        assert_eq!(sink.batch, DEFAULT_REPUBLISH_BATCH);
        assert_eq!(
            (&sink.device, &sink.when, &sink.payload),
            (&None, &None, &None)
        );
        assert_eq!((&sink.uri_file, &sink.ca_file), (&None, &None));
        let full = FULL.replace(
            "  - republish: {name: fwd, routingKey: processed}",
            "  - command:\n      {name: fan, tenant: factory, command: fan/set, device: payload.target,\n       when: \"celsius > 30.0\", payload: \"{'speed': 100}\", ttlSeconds: 60, uriFile: /s/u}",
        );
        let config = parse(&full).expect("parse");
        let SinkConfig::Command(sink) = &config.sinks[4] else {
            panic!("a command sink");
        };
        assert_eq!(sink.when.as_deref(), Some("celsius > 30.0"));
        assert_eq!(sink.payload.as_deref(), Some("{'speed': 100}"));
        assert_eq!(sink.ttl_seconds, 60);
        let misspelled = full.replace("ttlSeconds", "ttl");
        let error = parse(&misspelled).expect_err("invalid").to_string();
        assert!(error.contains("unknown field `ttl`"), "{error}");
    }

    #[test]
    fn config_without_sinks_is_rejected() {
        let text = "queue: {uriFile: /u, name: q}\nsinks: []\n";
        assert!(parse(text)
            .expect_err("invalid")
            .to_string()
            .contains("at least one sink"));
    }
}
