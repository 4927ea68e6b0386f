//! A device's response to a request, to the sender waiting on its reply-to: found among the
//! pending requests by device and command id, published through the default exchange with
//! the command id as `correlation_id` and the status and device as headers, confirmed by
//! the broker before the device is acknowledged.

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use tributary_contract::command::{ResponseAddress, HEADER_DEVICE, HEADER_STATUS};

use super::Commands;
use crate::broker::{Broker, PublishError};
use crate::metrics::ResponseResult;
use crate::registry::now_ms;

/// The AMQP properties of a response.
pub fn response_properties(
    device: &str,
    address: &ResponseAddress,
    content_type: Option<&str>,
) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(HEADER_STATUS.into(), AMQPValue::ShortUInt(address.status));
    headers.insert(
        HEADER_DEVICE.into(),
        AMQPValue::LongString(LongString::from(device)),
    );
    let properties = BasicProperties::default()
        .with_correlation_id(address.command_id.as_str().into())
        .with_headers(headers)
        .with_timestamp(now_ms());
    match content_type {
        Some(kind) => properties.with_content_type(kind.into()),
        None => properties,
    }
}

impl Commands {
    /// Forwards `device`'s response to its pending request. `Unknown` when no such request
    /// is awaited (never sent to it, answered already, expired, forgotten past
    /// `maxPendingResponses`, or the sender stopped waiting); an error when the broker did
    /// not confirm (the device may send it again).
    pub async fn respond(
        &self,
        broker: &Broker,
        device: &str,
        address: &ResponseAddress,
        payload: &[u8],
        content_type: Option<&str>,
    ) -> Result<ResponseResult, PublishError> {
        let id = &address.command_id;
        let reply_to = self.lock_pending().get(device, id, now_ms());
        let Some(reply_to) = reply_to else {
            return Ok(self.counted(ResponseResult::Unknown));
        };
        let properties = response_properties(device, address, content_type);
        match broker.publish_reply(&reply_to, properties, payload).await {
            Ok(()) => {
                self.lock_pending().remove(device, id);
                tracing::debug!(device, command_id = %id, status = address.status, "command response forwarded");
                Ok(self.counted(ResponseResult::Forwarded))
            }
            Err(PublishError::Unroutable(_)) => {
                self.lock_pending().remove(device, id);
                tracing::info!(device, command_id = %id, "command response returned: the sender stopped waiting");
                Ok(self.counted(ResponseResult::Unknown))
            }
            Err(error) => Err(error),
        }
    }

    /// Counts a response whose topic or status is malformed.
    pub fn count_invalid_response(&self) {
        self.counted(ResponseResult::Invalid);
    }

    fn counted(&self, result: ResponseResult) -> ResponseResult {
        self.metrics.commands.response(result).inc();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_carries_the_id_status_device_and_content_type() {
        let address = ResponseAddress {
            command_id: "c1".into(),
            status: 404,
        };
        let properties = response_properties("press-1", &address, Some("text/plain"));
        assert_eq!(
            properties.correlation_id().as_ref().map(|id| id.as_str()),
            Some("c1")
        );
        let headers = properties.headers().clone().unwrap_or_default();
        assert_eq!(
            headers.inner().get(HEADER_STATUS),
            Some(&AMQPValue::ShortUInt(404))
        );
        assert_eq!(
            headers.inner().get(HEADER_DEVICE),
            Some(&AMQPValue::LongString("press-1".into()))
        );
        assert_eq!(
            properties.content_type().as_ref().map(|t| t.as_str()),
            Some("text/plain")
        );
    }
}
