//! The tenant's command topology on the broker, named and shaped by the contract: the
//! direct exchange, the fanout of expired commands with its queue, and each device's queue
//! bound with its device id. Every declaration is idempotent; a failing one closes the
//! channel it ran on (AMQP channel errors), which is why these run on a channel of their
//! own, never on the consumers'.

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use tributary_contract::command::{
    device_queue, device_queue_arguments, exchange, expired_exchange, expired_queue,
    expired_queue_arguments, CommandLimits, QueueArgument,
};

/// AMQP reply code of a redeclaration with other arguments, or of `if-unused` on a queue
/// in use.
pub const PRECONDITION_FAILED: u16 = 406;
/// AMQP reply code of a missing permission.
pub const ACCESS_REFUSED: u16 = 403;
/// AMQP reply code of a queue that does not exist.
pub const NOT_FOUND: u16 = 404;

/// Why a broker operation on commands failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// Not connected, the connection failed, or no answer in time.
    #[error("broker unavailable for commands")]
    Unavailable,
    /// The broker refused with an AMQP reply code (403 permissions, 404, 406 …).
    #[error("broker refused ({code}): {message}")]
    Refused {
        /// The AMQP reply code.
        code: u16,
        /// The broker's reply text.
        message: String,
    },
}

impl BrokerError {
    /// The AMQP reply code of a refusal.
    pub fn code(&self) -> Option<u16> {
        match self {
            BrokerError::Refused { code, .. } => Some(*code),
            BrokerError::Unavailable => None,
        }
    }
}

impl From<lapin::Error> for BrokerError {
    fn from(error: lapin::Error) -> Self {
        match error.kind() {
            lapin::ErrorKind::ProtocolError(amqp) if error.is_amqp_soft_error() => {
                BrokerError::Refused {
                    code: amqp.get_id(),
                    message: amqp.get_message().to_string(),
                }
            }
            _ => BrokerError::Unavailable,
        }
    }
}

/// The contract's queue arguments as an AMQP field table (numbers as signed 64-bit).
pub fn field_table(arguments: Vec<(String, QueueArgument)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in arguments {
        let value = match value {
            QueueArgument::Text(text) => AMQPValue::LongString(LongString::from(text)),
            QueueArgument::Number(number) => {
                AMQPValue::LongLongInt(i64::try_from(number).unwrap_or(i64::MAX))
            }
            QueueArgument::Bool(flag) => AMQPValue::Boolean(flag),
        };
        table.insert(name.into(), value);
    }
    table
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

fn durable_queue(passive: bool) -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        passive,
        ..QueueDeclareOptions::default()
    }
}

/// Declares the tenant's exchange, the expired-commands exchange and queue, and binds them.
pub async fn declare_tenant(channel: &Channel, tenant: &str) -> Result<(), lapin::Error> {
    let expired = expired_exchange(tenant);
    channel
        .exchange_declare(
            exchange(tenant).into(),
            ExchangeKind::Direct,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            expired.as_str().into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            expired_queue(tenant).into(),
            durable_queue(false),
            field_table(expired_queue_arguments()),
        )
        .await?;
    channel
        .queue_bind(
            expired_queue(tenant).into(),
            expired.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Declares `device`'s queue with exactly the contract's arguments (`passive`: only checks
/// that it exists, whatever its arguments).
pub async fn declare_device_queue(
    channel: &Channel,
    tenant: &str,
    device: &str,
    limits: &CommandLimits,
    passive: bool,
) -> Result<(), lapin::Error> {
    let arguments = if passive {
        FieldTable::default()
    } else {
        field_table(device_queue_arguments(tenant, limits))
    };
    channel
        .queue_declare(
            device_queue(tenant, device).into(),
            durable_queue(passive),
            arguments,
        )
        .await
        .map(|_| ())
}

/// Binds `device`'s queue to the tenant's exchange with the device id.
pub async fn bind_device_queue(
    channel: &Channel,
    tenant: &str,
    device: &str,
) -> Result<(), lapin::Error> {
    channel
        .queue_bind(
            device_queue(tenant, device).into(),
            exchange(tenant).into(),
            device.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Deletes `device`'s queue unless another consumer uses it (`if-unused`: 406 then).
pub async fn delete_device_queue(
    channel: &Channel,
    tenant: &str,
    device: &str,
) -> Result<(), lapin::Error> {
    channel
        .queue_delete(
            device_queue(tenant, device).into(),
            QueueDeleteOptions {
                if_unused: true,
                ..QueueDeleteOptions::default()
            },
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_arguments_become_typed_amqp_values() {
        let table = field_table(device_queue_arguments("t", &CommandLimits::default()));
        let get = |key: &str| table.inner().get(key).cloned();
        assert_eq!(
            get("x-max-length"),
            Some(AMQPValue::LongLongInt(100)),
            "numbers are signed 64-bit, as RabbitMQ compares them"
        );
        assert_eq!(
            get("x-single-active-consumer"),
            Some(AMQPValue::Boolean(true))
        );
        assert_eq!(
            get("x-overflow"),
            Some(AMQPValue::LongString("reject-publish".into()))
        );
        assert_eq!(table.inner().len(), 6);
    }

    #[test]
    fn numbers_past_i64_saturate() {
        let table = field_table(vec![("x".into(), QueueArgument::Number(u64::MAX))]);
        assert_eq!(
            table.inner().get("x"),
            Some(&AMQPValue::LongLongInt(i64::MAX))
        );
    }
}
