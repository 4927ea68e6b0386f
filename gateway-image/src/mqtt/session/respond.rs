//! A device's PUBLISH on its response topic (`commands/{device}/res/{id}[/{status}]`): not
//! a message for the routes but the answer to a request, forwarded to the sender and
//! acknowledged once the broker confirmed it, in order with the device's other publishes.

use std::sync::Arc;

use futures::stream::FuturesOrdered;
use tokio::io::{AsyncRead, AsyncWrite};
use tributary_contract::command::{parse_response_topic, ResponseAddress};

use super::{Answer, ExactlyOnce, Pending, Session, SessionEnd};
use crate::ingest::IngestError;
use crate::metrics::ResponseResult;
use crate::mqtt::codec::Publish;
use crate::mqtt::names::ReasonCode;

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Session<R, W> {
    /// Takes `publish` as a response when its topic is the device's response topic (and
    /// commands are enabled); `Ok(None)` hands it back to the ingest path.
    pub(super) async fn respond(
        &mut self,
        publish: Publish,
        answer: Option<Answer>,
        pending: &mut FuturesOrdered<Pending>,
    ) -> Result<Option<Publish>, SessionEnd> {
        let gateway = Arc::clone(&self.gateway);
        if !gateway.commands.enabled() {
            return Ok(Some(publish));
        }
        let address = match parse_response_topic(&self.device, &publish.topic) {
            None => return Ok(Some(publish)),
            Some(Ok(address)) => address,
            Some(Err(problem)) => {
                gateway.commands.count_invalid_response();
                tracing::info!(device = %self.device, %problem, "invalid command response");
                // MQTT 5 learns why; 3.1.1 can only be acknowledged.
                let reason = ReasonCode::TopicNameInvalid;
                pending.push_back(Box::pin(async move { (answer, Ok(reason)) }));
                return Ok(None);
            }
        };
        gateway.rate.take(&self.device).await;
        let permit = tokio::select! {
            permit = Arc::clone(&gateway.in_flight).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return Err(SessionEnd::Draining),
            },
            _ = gateway.draining.cancelled() => return Err(SessionEnd::Draining),
        };
        if let Some(answer) = answer.filter(|a| a.exactly_once) {
            self.exactly_once
                .insert(answer.packet_id, ExactlyOnce::Delivering);
        }
        let device = self.device.clone();
        pending.push_back(Box::pin(async move {
            let _permit = permit;
            (answer, forward(&gateway, &device, &address, &publish).await)
        }));
        Ok(None)
    }
}

/// Forwards the response; the reason code that acknowledges it.
async fn forward(
    gateway: &crate::ingest::Gateway,
    device: &str,
    address: &ResponseAddress,
    publish: &Publish,
) -> Result<ReasonCode, IngestError> {
    let result = gateway
        .commands
        .respond(
            &gateway.broker,
            device,
            address,
            &publish.payload,
            publish.properties.content_type.as_deref(),
        )
        .await;
    match result {
        Ok(ResponseResult::Forwarded) => Ok(ReasonCode::Success),
        Ok(_) => Ok(ReasonCode::NoMatchingSubscribers),
        Err(error) => Err(IngestError::Broker(error)),
    }
}
