//! Loading and checking the API config file (YAML or JSON).

use std::path::Path;

use tributary_contract::api_config::ApiConfig;
use tributary_contract::config_file;

pub use tributary_contract::config_file::ConfigError;

/// Reads, parses and checks a config file.
pub fn load(path: &Path) -> Result<ApiConfig, ConfigError> {
    config_file::load(path, validate)
}

/// Parses and checks config text (YAML, of which JSON is a subset).
pub fn parse(text: &str) -> Result<ApiConfig, ConfigError> {
    let config = config_file::parse(text)?;
    validate(&config)?;
    Ok(config)
}

/// Longest `commands.maxWaitSeconds` accepted: a request held longer than this is better
/// replaced by polling.
pub const MAX_WAIT_SECONDS_LIMIT: u32 = 600;
/// Longest tenant name (a Kubernetes namespace has at most 63 characters).
pub const MAX_TENANT: usize = 63;

/// Whether `tenant` can name the command exchange: 1 to [`MAX_TENANT`] ASCII letters,
/// digits, `-`, `_` or `.`.
pub fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= MAX_TENANT
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Checks what the types cannot express.
pub fn validate(config: &ApiConfig) -> Result<(), ConfigError> {
    let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
    let limits = &config.limits;
    if config.postgres.connections == 0 {
        return invalid("postgres.connections must be at least 1");
    }
    if limits.max_page_size == 0 || limits.default_page_size == 0 {
        return invalid("limits.maxPageSize and limits.defaultPageSize must be at least 1");
    }
    if limits.default_page_size > limits.max_page_size {
        return invalid("limits.defaultPageSize must not exceed limits.maxPageSize");
    }
    if limits.max_buckets == 0 || limits.max_devices_per_query == 0 {
        return invalid("limits.maxBuckets and limits.maxDevicesPerQuery must be at least 1");
    }
    if let Some(live) = &config.live {
        if live.exchange.is_empty() {
            return invalid(
                "live.exchange must name an exchange (the default exchange cannot be bound)",
            );
        }
        if live.client_buffer == 0 || live.max_clients == 0 || live.queue_max_length == 0 {
            return invalid(
                "live.clientBuffer, live.maxClients and live.queueMaxLength must be at least 1",
            );
        }
    }
    validate_commands(config)?;
    if config.api_keys.is_empty() {
        tracing::warn!("no apiKeys configured: every /v1 request will get 401");
    }
    Ok(())
}

fn validate_commands(config: &ApiConfig) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    if !valid_tenant(&config.tenant) {
        return invalid(format!(
            "tenant must be 1 to {MAX_TENANT} letters, digits, '-', '_' or '.'"
        ));
    }
    match &config.commands {
        Some(commands) => {
            if commands.max_waiting == 0 {
                return invalid("commands.maxWaiting must be at least 1".into());
            }
            if commands.max_wait_seconds > MAX_WAIT_SECONDS_LIMIT {
                return invalid(format!(
                    "commands.maxWaitSeconds must be at most {MAX_WAIT_SECONDS_LIMIT}"
                ));
            }
        }
        None if config.api_keys.iter().any(|k| k.commands) => {
            tracing::warn!(
                "keys with `commands: true` but no `commands` section: commands get 503"
            );
        }
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
listen: 127.0.0.1:8080
postgres: {urlFile: /s/pg, table: telemetry.readings, deviceColumn: machine}
redis: {urlFile: /s/redis, keyTemplate: "factory:latest:{device}"}
live: {uriFile: /s/amqp, exchange: tributary.live}
apiKeys:
  - {name: all, sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, scope: all}
  - name: site-a
    sha256: 60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
    scope: {devicePrefix: site-a-}
    rateLimit: {requestsPerSecond: 1, burst: 2}
corsAllowedOrigins: ["https://dashboard.example"]
"#;

    #[test]
    fn full_yaml_config_parses() {
        let config = parse(FULL).expect("parse");
        assert_eq!(config.postgres.device_column, "machine");
        assert_eq!(config.api_keys.len(), 2);
        assert_eq!(
            config.live.as_ref().map(|l| l.routing_key.as_str()),
            Some("#")
        );
    }

    #[test]
    fn a_misspelled_field_is_named_with_its_place() {
        let error = parse(&FULL.replace("deviceColumn", "deviceColum")).expect_err("must fail");
        let text = error.to_string();
        assert!(
            text.contains("postgres") && text.contains("deviceColum"),
            "{text}"
        );
    }

    #[test]
    fn commands_need_a_plain_tenant_and_sane_bounds() {
        let with = |extra: &str| parse(&format!("{FULL}{extra}\n"));
        let ok = with("tenant: factory\ncommands: {uriFile: /s/amqp}").expect("valid");
        assert_eq!(ok.tenant, "factory");
        assert!(ok.commands.is_some());
        for bad in [
            "tenant: \"\"",
            "tenant: a/b",
            "commands: {uriFile: /s/amqp, maxWaiting: 0}",
            "commands: {uriFile: /s/amqp, maxWaitSeconds: 601}",
        ] {
            assert!(matches!(with(bad), Err(ConfigError::Invalid(_))), "{bad}");
        }
        let long = format!("tenant: {}", "t".repeat(MAX_TENANT + 1));
        assert!(with(&long).is_err());
    }

    #[test]
    fn contradictory_limits_are_refused() {
        let text = format!("{FULL}limits: {{defaultPageSize: 50, maxPageSize: 10}}\n");
        assert!(matches!(parse(&text), Err(ConfigError::Invalid(_))));
    }
}
