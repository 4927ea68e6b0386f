//! PUBLISH: rate limit, checks, the in-flight budget, delivery to the broker, and the
//! PUBACK or PUBREC once the broker confirmed; the will message takes the same path.

use std::sync::Arc;

use futures::stream::FuturesOrdered;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Answer, ExactlyOnce, Pending, Session, SessionEnd};
use crate::broker::PublishError;
use crate::ingest::IngestError;
use crate::metrics::ProtocolLabel;
use crate::mqtt::codec::{Publish, Will};
use crate::mqtt::encode;
use crate::mqtt::names::ReasonCode;

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Session<R, W> {
    /// Publishes the will message like a publish from the device (its topic permissions
    /// and routes apply). The MQTT 5 will delay interval is not honoured: sessions are not
    /// persisted, so there is no reconnect to wait for.
    pub(super) async fn publish_will(&self, will: Will) {
        let gateway = &self.gateway;
        let prepared = gateway.prepare(
            &self.device,
            &will.topic,
            ProtocolLabel::Mqtt,
            will.properties.content_type,
            &will.payload,
        );
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                tracing::info!(device = %self.device, topic = %will.topic, %error, "will message refused");
                return;
            }
        };
        match gateway.deliver(prepared, ProtocolLabel::Mqtt).await {
            Ok(id) => {
                tracing::info!(device = %self.device, topic = %will.topic, message_id = %id, "will message published")
            }
            Err(error) => {
                tracing::warn!(device = %self.device, topic = %will.topic, %error, "will message not delivered")
            }
        }
    }

    pub(super) async fn publish(
        &mut self,
        publish: Publish,
        pending: &mut FuturesOrdered<Pending>,
    ) -> Result<(), SessionEnd> {
        let answer = publish.packet_id.map(|packet_id| Answer {
            packet_id,
            exactly_once: publish.qos == 2,
        });
        if let Some(answer) = answer.filter(|a| a.exactly_once) {
            match self.exactly_once.get(&answer.packet_id) {
                // Resent before its PUBREL: stored already, answer again (in order).
                Some(ExactlyOnce::Received) => {
                    pending.push_back(Box::pin(async move { (Some(answer), Ok(String::new())) }));
                    return Ok(());
                }
                Some(ExactlyOnce::Delivering) => {
                    self.disconnect_v5(ReasonCode::PacketIdentifierInUse);
                    return Err(SessionEnd::Violation("QoS 2 packet identifier in use"));
                }
                None => {}
            }
        }
        let gateway = Arc::clone(&self.gateway);
        // Slow the device down rather than refuse: MQTT has no "retry later".
        gateway.rate.take(&self.device).await;
        let prepared = gateway.prepare(
            &self.device,
            &publish.topic,
            ProtocolLabel::Mqtt,
            publish.properties.content_type.clone(),
            &publish.payload,
        );
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(error) => return self.refuse(&publish, error),
        };
        // Gateway-wide backpressure: wait (not reading) until confirms free the budget.
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
        pending.push_back(Box::pin(async move {
            let _permit = permit;
            (answer, gateway.deliver(prepared, ProtocolLabel::Mqtt).await)
        }));
        Ok(())
    }

    /// Answers a message the gateway's checks refused: an MQTT 5 QoS 1 or 2 message gets a
    /// failure reason in its PUBACK or PUBREC and the session goes on; QoS 0 is dropped; a
    /// 3.1.1 QoS 1 or 2 message can be refused only by closing. Too large a payload always
    /// closes.
    fn refuse(&mut self, publish: &Publish, error: IngestError) -> Result<(), SessionEnd> {
        if error == IngestError::TooLarge {
            self.disconnect_v5(ReasonCode::PacketTooLarge);
            return Err(SessionEnd::NotAccepted(error));
        }
        tracing::info!(device = %self.device, topic = %publish.topic, error = %error, "publish refused");
        match (self.v5, publish.packet_id) {
            (true, Some(packet_id)) => {
                let reason = if error == IngestError::NotPermitted {
                    ReasonCode::NotAuthorized
                } else {
                    ReasonCode::TopicNameInvalid
                };
                if publish.qos == 2 {
                    encode::pubrec(&mut self.out, true, packet_id, reason);
                } else {
                    encode::puback(&mut self.out, true, packet_id, reason);
                }
                Ok(())
            }
            (_, None) => Ok(()),
            (false, Some(_)) => Err(SessionEnd::NotAccepted(error)),
        }
    }

    /// Sends the PUBACK (QoS 1) or PUBREC (QoS 2) for a finished publish, or ends the
    /// session when the broker could not take the message (the client resends it after
    /// reconnecting).
    pub(super) fn acknowledge(
        &mut self,
        answer: Option<Answer>,
        result: Result<String, IngestError>,
    ) -> Result<(), SessionEnd> {
        let Some(answer) = answer else {
            return Ok(()); // QoS 0: nothing to answer, whatever happened
        };
        let reason = match result {
            Ok(_) => ReasonCode::Success,
            Err(error) if self.v5 && is_permanent(&error) => {
                if error == IngestError::Broker(PublishError::Nacked) {
                    ReasonCode::QuotaExceeded // e.g. a full queue with reject-publish
                } else {
                    ReasonCode::UnspecifiedError
                }
            }
            Err(error) => {
                self.disconnect_v5(ReasonCode::ServerBusy);
                return Err(SessionEnd::NotAccepted(error));
            }
        };
        if answer.exactly_once {
            // A refused QoS 2 message ends its exchange at the PUBREC.
            if reason == ReasonCode::Success {
                self.exactly_once
                    .insert(answer.packet_id, ExactlyOnce::Received);
            } else {
                self.exactly_once.remove(&answer.packet_id);
            }
            encode::pubrec(&mut self.out, self.v5, answer.packet_id, reason);
        } else {
            encode::puback(&mut self.out, self.v5, answer.packet_id, reason);
        }
        Ok(())
    }
}

fn is_permanent(error: &IngestError) -> bool {
    matches!(
        error,
        IngestError::Broker(PublishError::Nacked | PublishError::Unroutable(_))
    )
}
