//! PUBLISH: rate limit, checks, the in-flight budget, delivery to the broker, and the
//! PUBACK or PUBREC once the broker confirmed; the will message takes the same path.

use std::sync::Arc;

use futures::stream::FuturesOrdered;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Answer, ExactlyOnce, Pending, Session, SessionEnd};
use crate::broker::PublishError;
use base64::Engine;
use tributary_contract::envelope::{MqttProperties, UserProperty};

use crate::ingest::{IngestError, Metadata};
use crate::metrics::{ProtocolLabel, RejectReason};
use crate::mqtt::codec::{Publish, Will};
use crate::mqtt::encode;
use crate::mqtt::names::ReasonCode;
use crate::mqtt::properties::Properties;

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Session<R, W> {
    /// Publishes the will message like a publish from the device: its topic permissions and
    /// routes apply, it waits for the device's rate limit and for room in the gateway-wide
    /// in-flight budget (also while draining: the connection ended without DISCONNECT, so
    /// the will is due). The MQTT 5 will delay interval is not honoured: sessions are not
    /// persisted, so there is no reconnect to wait for.
    pub(super) async fn publish_will(&self, will: Will) {
        let gateway = Arc::clone(&self.gateway);
        gateway.rate.take(&self.device).await;
        let prepared = gateway.prepare_with(
            &self.device,
            &will.topic,
            ProtocolLabel::Mqtt,
            metadata(&will.properties),
            &will.payload,
        );
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                tracing::info!(device = %self.device, topic = %will.topic, %error, "will message refused");
                return;
            }
        };
        let Ok(_permit) = Arc::clone(&gateway.in_flight).acquire_owned().await else {
            return; // the budget is closed: the gateway is gone
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
                    let success = ReasonCode::Success;
                    pending.push_back(Box::pin(async move { (Some(answer), Ok(success)) }));
                    return Ok(());
                }
                Some(ExactlyOnce::Delivering) => {
                    self.disconnect_v5(ReasonCode::PacketIdentifierInUse);
                    return Err(SessionEnd::Violation("QoS 2 packet identifier in use"));
                }
                None => {}
            }
        }
        let Some(publish) = self.respond(publish, answer, pending).await? else {
            return Ok(()); // a response to a command
        };
        let gateway = Arc::clone(&self.gateway);
        // Slow the device down rather than refuse: MQTT has no "retry later".
        gateway.rate.take(&self.device).await;
        let prepared = gateway.prepare_with(
            &self.device,
            &publish.topic,
            ProtocolLabel::Mqtt,
            metadata(&publish.properties),
            &publish.payload,
        );
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(error) => return self.refuse(&publish, error),
        };
        if publish.properties.payload_format_invalid(&publish.payload) {
            // §3.3.2.3.2: the server may check the declared format and refuse.
            gateway
                .metrics
                .reject(ProtocolLabel::Mqtt, RejectReason::Malformed);
            tracing::info!(device = %self.device, topic = %publish.topic, "publish refused: payload is not the UTF-8 it claims to be");
            self.answer_refused(&publish, ReasonCode::PayloadFormatInvalid);
            return Ok(());
        }
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
            let delivered = gateway.deliver(prepared, ProtocolLabel::Mqtt).await;
            (answer, delivered.map(|_| ReasonCode::Success))
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
        if self.v5 {
            let reason = if error == IngestError::NotPermitted {
                ReasonCode::NotAuthorized
            } else {
                ReasonCode::TopicNameInvalid
            };
            self.answer_refused(publish, reason);
            Ok(())
        } else if publish.packet_id.is_none() {
            Ok(())
        } else {
            Err(SessionEnd::NotAccepted(error))
        }
    }

    /// The MQTT 5 PUBACK (QoS 1) or PUBREC (QoS 2) refusing a message with `reason`; a
    /// QoS 0 message has no answer (it is dropped).
    fn answer_refused(&mut self, publish: &Publish, reason: ReasonCode) {
        match publish.packet_id {
            Some(packet_id) if publish.qos == 2 => {
                encode::pubrec(&mut self.out, self.v5, packet_id, reason)
            }
            Some(packet_id) => encode::puback(&mut self.out, self.v5, packet_id, reason),
            None => {}
        }
    }

    /// Sends the PUBACK (QoS 1) or PUBREC (QoS 2) for a finished publish, or ends the
    /// session when the broker could not take the message (the client resends it after
    /// reconnecting).
    pub(super) fn acknowledge(
        &mut self,
        answer: Option<Answer>,
        result: Result<ReasonCode, IngestError>,
    ) -> Result<(), SessionEnd> {
        let Some(answer) = answer else {
            return Ok(()); // QoS 0: nothing to answer, whatever happened
        };
        let reason = match result {
            Ok(reason) => reason,
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
            if !reason.is_failure() {
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

/// What the envelope carries of a message's MQTT 5 properties (correlation data base64).
fn metadata(properties: &Properties) -> Metadata {
    let user_properties = properties
        .user_properties
        .iter()
        .map(|(name, value)| UserProperty {
            name: name.clone(),
            value: value.clone(),
        })
        .collect();
    let mqtt = MqttProperties {
        user_properties,
        response_topic: properties.response_topic.clone(),
        correlation_data: properties
            .correlation_data
            .as_ref()
            .map(|data| base64::engine::general_purpose::STANDARD.encode(data)),
    };
    Metadata {
        content_type: properties.content_type.clone(),
        mqtt: (!mqtt.is_empty()).then_some(mqtt),
    }
}
