//! Commands out to the device: each delivery of the session's consumer becomes a PUBLISH at
//! the QoS of the best matching subscription; a QoS 1 command is acknowledged to the
//! broker after the device's PUBACK, a QoS 0 one once written. Packet identifiers are the
//! gateway's own; never more are in flight than the consumer's prefetch. A lost consumer
//! is restarted with backoff, and the session's end returns what it held to the queue.

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Session, SessionEnd};
use crate::commands::feed::{Feed, Incoming};
use crate::commands::filter::{Refusal, Subscriptions};
use crate::commands::message::{mqtt_command, Command};
use crate::commands::topology::BrokerError;
use crate::metrics::Undeliverable;
use crate::mqtt::encode::{self, OutgoingPublish};

/// First wait before restarting a lost consumer; doubled up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Longest wait for the session this one took over to let go of the device's commands.
const PREDECESSOR_WAIT: Duration = Duration::from_secs(10);

/// A session's commands: subscriptions, the consumer of its device's queue, what is in
/// flight to the device.
#[derive(Default)]
pub(super) struct CommandState {
    pub(super) subscriptions: Subscriptions,
    pub(super) feed: Option<Feed>,
    /// When to restart a consumer that was lost or could not start.
    pub(super) retry_at: Option<Instant>,
    retry_delay: Duration,
    /// The session declared or resumed its device's queue.
    pub(super) owns_queue: bool,
    /// The queue outlives the connection (a persistent session).
    pub(super) persistent: bool,
    /// QoS 1 commands awaiting the device's PUBACK: packet id → delivery tag.
    outgoing: HashMap<u16, u64>,
    last_packet_id: u16,
    /// QoS 0 commands to acknowledge once written.
    written: Vec<u64>,
    /// What an MQTT 5 client announced: Receive Maximum, Maximum Packet Size.
    pub(super) receive_maximum: Option<u16>,
    pub(super) maximum_packet_size: Option<u32>,
    /// A clean start: the old session's queue is deleted before the first grant.
    pub(super) discard_old: bool,
    /// The session this one took over releases the device's commands first.
    pub(super) predecessor: Option<CancellationToken>,
}

impl CommandState {
    /// The next packet identifier not in flight (1 to 65535, wrapping).
    fn next_packet_id(&mut self) -> u16 {
        loop {
            self.last_packet_id = self.last_packet_id.checked_add(1).unwrap_or(1);
            if !self.outgoing.contains_key(&self.last_packet_id) {
                return self.last_packet_id;
            }
        }
    }

    /// Schedules a restart of the consumer after the current backoff.
    fn retry_later(&mut self) {
        self.retry_delay = (self.retry_delay * 2).clamp(FIRST_RETRY, MAX_RETRY);
        self.retry_at = Some(Instant::now() + self.retry_delay);
    }

    /// Waits (bounded) for the session taken over to release the device's commands.
    pub(super) async fn settled(&mut self) {
        if let Some(predecessor) = self.predecessor.take() {
            let _ = tokio::time::timeout(PREDECESSOR_WAIT, predecessor.cancelled()).await;
        }
    }
}

/// The next delivery of `feed`; never resolves without one.
pub(super) async fn next_incoming(feed: &mut Option<Feed>) -> Option<Incoming> {
    match feed {
        Some(feed) => feed.next().await,
        None => std::future::pending().await,
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Session<R, W> {
    /// Ensures the device's queue and consumes it, unless a consumer runs already.
    pub(super) async fn start_feed(&mut self) -> Result<(), Refusal> {
        if self.commands.feed.is_some() {
            return Ok(());
        }
        self.commands.settled().await;
        let commands = std::sync::Arc::clone(&self.gateway.commands);
        let prefetch = commands.prefetch(self.commands.receive_maximum);
        if std::mem::take(&mut self.commands.discard_old) {
            if let Err(error) = commands.delete_queue(&self.device).await {
                tracing::debug!(device = %self.device, %error, "old command session not deleted at clean start");
            }
        }
        let started = async {
            commands.ensure_queue(&self.device).await?;
            self.commands.owns_queue = true;
            match commands.consume(&self.device, prefetch, "mqtt").await {
                // Another session of the device deleted it in between (its clean session
                // ended, unused): declared again, once.
                Err(BrokerError::Refused { code: 404, .. }) => {
                    commands.ensure_queue(&self.device).await?;
                    commands.consume(&self.device, prefetch, "mqtt").await
                }
                other => other,
            }
        }
        .await;
        match started {
            Ok(feed) => {
                self.commands.feed = Some(feed);
                self.commands.retry_at = None;
                self.commands.retry_delay = Duration::ZERO;
                Ok(())
            }
            Err(error) => {
                tracing::warn!(device = %self.device, %error, "cannot consume the device's commands");
                Err(match error {
                    BrokerError::Refused { .. } => Refusal::BrokerRefused,
                    BrokerError::Unavailable => Refusal::BrokerUnavailable,
                })
            }
        }
    }

    /// Restarts a lost consumer (when retrying is due); on failure tries again later.
    pub(super) async fn restart_feed(&mut self) {
        self.commands.retry_at = None;
        if self.start_feed().await.is_err() {
            self.commands.retry_later();
        }
    }

    /// Handles one delivery, or the consumer's end.
    pub(super) async fn on_incoming(&mut self, incoming: Option<Incoming>) {
        let Some(incoming) = incoming else {
            // Lost (connection, channel or queue): what it held is back in the queue.
            tracing::debug!(device = %self.device, "command consumer lost; restarting later");
            self.commands.feed = None;
            self.commands.outgoing.clear();
            self.commands.written.clear();
            self.commands.retry_later();
            return;
        };
        let metrics = self.gateway.metrics.commands.clone();
        let reason = match &incoming.command {
            Ok(command) => match self.write_command(command, &incoming) {
                Ok(()) => {
                    metrics.delivered("mqtt").inc();
                    self.gateway
                        .commands
                        .remember_request(&self.device, command);
                    return;
                }
                Err(reason) => reason,
            },
            Err(error) => {
                tracing::info!(device = %self.device, %error, "invalid command discarded");
                Undeliverable::Invalid
            }
        };
        metrics.undeliverable(reason).inc();
        if let Some(feed) = self.commands.feed.as_mut() {
            feed.discard(incoming.tag).await;
        }
    }

    /// Queues the PUBLISH of `command` at the QoS its subscriptions give.
    fn write_command(
        &mut self,
        command: &Command,
        incoming: &Incoming,
    ) -> Result<(), Undeliverable> {
        let message = mqtt_command(command, &self.device, self.v5);
        let qos = self
            .commands
            .subscriptions
            .qos_for(&message.topic)
            .ok_or(Undeliverable::NoSubscription)?;
        let packet_id = (qos > 0).then(|| self.commands.next_packet_id());
        let mut packet = BytesMut::new();
        encode::publish(
            &mut packet,
            self.v5,
            &OutgoingPublish {
                topic: &message.topic,
                qos,
                packet_id,
                dup: incoming.redelivered,
                payload: &command.payload,
                content_type: command.content_type.as_deref(),
                response_topic: message.response_topic.as_deref(),
                correlation_data: message.correlation_data.as_deref(),
                message_expiry: message.message_expiry,
            },
        );
        let limit = self.commands.maximum_packet_size.unwrap_or(u32::MAX);
        if u32::try_from(packet.len()).map_or(true, |len| len > limit) {
            return Err(Undeliverable::TooLarge);
        }
        self.out.extend_from_slice(&packet);
        match packet_id {
            Some(packet_id) => {
                self.commands.outgoing.insert(packet_id, incoming.tag);
            }
            None => self.commands.written.push(incoming.tag),
        }
        Ok(())
    }

    /// Acknowledges the QoS 0 commands written so far.
    pub(super) async fn settle_written(&mut self) {
        let written = std::mem::take(&mut self.commands.written);
        if let Some(feed) = self.commands.feed.as_mut() {
            for tag in written {
                feed.acknowledge(tag).await;
            }
        }
    }

    /// The device's PUBACK of a command: acknowledged to the broker (a stray one is
    /// ignored).
    pub(super) async fn command_acknowledged(&mut self, packet_id: u16) {
        let Some(tag) = self.commands.outgoing.remove(&packet_id) else {
            return;
        };
        if let Some(feed) = self.commands.feed.as_mut() {
            feed.acknowledge(tag).await;
        }
    }

    /// The end of the session for its commands: what the consumer held goes back to the
    /// queue, then a session that does not persist deletes its queue (unless a newer one
    /// took it over).
    pub(super) async fn end_commands(&mut self, end: &SessionEnd) {
        if let Some(feed) = self.commands.feed.take() {
            feed.release().await;
        }
        let taken_over = matches!(end, SessionEnd::TakenOver);
        if self.commands.owns_queue && !self.commands.persistent && !taken_over {
            if let Err(error) = self.gateway.commands.delete_queue(&self.device).await {
                tracing::info!(device = %self.device, %error, "command queue of a clean session not deleted (it expires)");
            }
        }
    }
}
