//! The `command` sink: validation and its worker config entry.

use super::super::{check_cel, BuildError};
use crate::crd::sink::CommandSink;
use tributary_contract::command;
use tributary_contract::worker_config::{BatchConfig, CommandSinkConfig};

/// The command name and expressions, checked as the worker will use them.
pub fn validate(sink: &CommandSink) -> Result<(), BuildError> {
    if !command::valid_command_name(&sink.command) {
        return Err(BuildError::Invalid(format!(
            "spec.command.command {:?}: use topic levels of letters, digits, '-', '_' and '.' \
             separated by '/', at most {} characters, not starting with 'req' or 'res'",
            sink.command,
            command::MAX_COMMAND_NAME
        )));
    }
    for (field, expression) in [
        ("device", &sink.device),
        ("when", &sink.when),
        ("payload", &sink.payload),
    ] {
        if let Some(source) = expression {
            check_cel(&format!("spec.command.{field}"), source)?;
        }
    }
    if let Some(ttl) = sink.ttl_seconds {
        if !(1..=i64::from(command::MAX_TTL_SECONDS)).contains(&ttl) {
            return Err(BuildError::Invalid(format!(
                "spec.command.ttlSeconds must be 1 to {}",
                command::MAX_TTL_SECONDS
            )));
        }
    }
    Ok(())
}

/// The worker config entry of a validated command sink: commands go to `tenant`'s command
/// exchange on the consumed queue's broker.
pub fn config(
    name: String,
    tenant: String,
    sink: &CommandSink,
    batch: BatchConfig,
) -> Result<CommandSinkConfig, BuildError> {
    let ttl_seconds = match sink.ttl_seconds {
        None => command::DEFAULT_TTL_SECONDS,
        Some(ttl) => u32::try_from(ttl)
            .map_err(|_| BuildError::Invalid("spec.command.ttlSeconds is out of range".into()))?,
    };
    Ok(CommandSinkConfig {
        name,
        tenant,
        uri_file: None,
        ca_file: None,
        command: sink.command.clone(),
        device: sink.device.clone(),
        when: sink.when.clone(),
        payload: sink.payload.clone(),
        ttl_seconds,
        batch,
    })
}
