//! The session's side of commands at CONNECT (resume or discard the device's queue), on
//! SUBSCRIBE and UNSUBSCRIBE (each filter checked against the templates, granted at QoS 1
//! at most, the device's queue consumed from the first grant on) and for the CONNACK.
//!
//! A persistent session (3.1.1 clean session 0, MQTT 5 Session Expiry Interval > 0) keeps
//! its device's queue after the connection; a CONNECT without clean start resumes it when
//! it exists (Session Present 1, every command delivered at QoS 1 until the device
//! subscribes again); a clean start deletes it before its first grant (a connection that
//! never subscribes leaves the device's queue alone).

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::Session;
use crate::commands::filter::{Refusal, Subscriptions, MAX_GRANTED_QOS};
use crate::mqtt::codec::{Connect, Subscribe};
use crate::mqtt::encode;

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Session<R, W> {
    /// Sets up the session's commands at CONNECT; returns Session Present. `predecessor`
    /// is the release token of the session this one took over.
    pub(super) async fn open_commands(
        &mut self,
        connect: &Connect,
        predecessor: Option<CancellationToken>,
    ) -> bool {
        let commands = Arc::clone(&self.gateway.commands);
        let state = &mut self.commands;
        state.persistent = is_persistent(connect);
        state.receive_maximum = connect.properties.receive_maximum;
        state.maximum_packet_size = connect.properties.maximum_packet_size;
        state.predecessor = predecessor;
        if !commands.enabled() {
            return false;
        }
        if connect.clean_start {
            // MQTT discards the old session: its queue goes, but only once this session
            // subscribes (`start_feed`). The queue is the device's, not this connection's:
            // a connection that only publishes must leave another's queue alone.
            state.discard_old = true;
            return false;
        }
        state.settled().await;
        match commands.queue_exists(&self.device).await {
            Ok(true) => {
                self.commands.subscriptions = Subscriptions::resumed();
                self.commands.owns_queue = true;
                if self.start_feed().await.is_err() {
                    self.commands.retry_at = Some(tokio::time::Instant::now());
                }
                true
            }
            Ok(false) => false,
            Err(error) => {
                tracing::warn!(device = %self.device, %error, "cannot tell whether a command session exists; starting a new one");
                false
            }
        }
    }

    /// The Session Expiry Interval to tell an MQTT 5 client that asked for another
    /// non-zero one: the device queue's expiry is what holds.
    pub(super) fn granted_session_expiry(&self, connect: &Connect) -> Option<u32> {
        let held = self.gateway.commands.config().session_expiry_seconds;
        connect
            .properties
            .session_expiry_interval
            .filter(|asked| {
                connect.v5 && self.gateway.commands.enabled() && *asked != 0 && *asked != held
            })
            .map(|_| held)
    }

    /// A DISCONNECT's Session Expiry Interval: zero ends the session with the connection.
    pub(super) fn session_expiry_changed(&mut self, seconds: Option<u32>) {
        if let Some(seconds) = seconds {
            self.commands.persistent = seconds > 0;
        }
    }

    /// SUBSCRIBE: one code per filter in the SUBACK.
    pub(super) async fn subscribe(&mut self, subscribe: Subscribe) {
        let metrics = self.gateway.metrics.commands.clone();
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        for (filter, requested) in &subscribe.filters {
            match self
                .grant(filter, *requested, subscribe.subscription_identifier)
                .await
            {
                Ok(qos) => {
                    metrics.subscriptions_granted.inc();
                    codes.push(qos);
                }
                Err(refusal) => {
                    metrics.refused(refusal).inc();
                    // Counted; a device repeating a refused SUBSCRIBE must not flood the log.
                    tracing::debug!(device = %self.device, %filter, reason = refusal.as_str(), "subscription refused");
                    codes.push(refusal.suback_code(self.v5));
                }
            }
        }
        encode::suback(&mut self.out, self.v5, subscribe.packet_id, &codes);
    }

    /// Grants one filter: checked, room for it, the device's queue consumed; the QoS.
    async fn grant(
        &mut self,
        filter: &str,
        requested: u8,
        identifier: bool,
    ) -> Result<u8, Refusal> {
        self.gateway
            .commands
            .check_filter(&self.device, filter, identifier)?;
        if !self.commands.subscriptions.has_room_for(filter) {
            return Err(Refusal::TooMany);
        }
        self.start_feed().await?;
        let qos = requested.min(MAX_GRANTED_QOS);
        self.commands
            .subscriptions
            .subscribe(filter, qos)
            .map_err(|_| Refusal::TooMany)?;
        Ok(qos)
    }

    /// UNSUBSCRIBE: the filters go; the consumer stays (commands matching nothing are
    /// acknowledged and counted undeliverable).
    pub(super) fn unsubscribe(&mut self, packet_id: u16, filters: &[String]) {
        let existed: Vec<bool> = filters
            .iter()
            .map(|filter| self.commands.subscriptions.unsubscribe(filter))
            .collect();
        encode::unsuback(&mut self.out, self.v5, packet_id, &existed);
    }
}

/// Whether the session's commands outlive its connection: 3.1.1 clean session 0, MQTT 5
/// Session Expiry Interval above 0.
fn is_persistent(connect: &Connect) -> bool {
    if connect.v5 {
        connect
            .properties
            .session_expiry_interval
            .is_some_and(|seconds| seconds > 0)
    } else {
        !connect.clean_start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::properties::Properties;

    fn connect(v5: bool, clean_start: bool, expiry: Option<u32>) -> Connect {
        Connect {
            v5,
            clean_start,
            keep_alive: 60,
            client_id: "c".into(),
            username: None,
            password: None,
            will: None,
            properties: Properties {
                session_expiry_interval: expiry,
                ..Properties::default()
            },
        }
    }

    #[test]
    fn persistence_follows_clean_session_in_311_and_session_expiry_in_5() {
        assert!(is_persistent(&connect(false, false, None)));
        assert!(!is_persistent(&connect(false, true, None)));
        assert!(is_persistent(&connect(true, false, Some(60))));
        assert!(
            is_persistent(&connect(true, true, Some(60))),
            "a new session that persists"
        );
        assert!(!is_persistent(&connect(true, false, Some(0))));
        assert!(!is_persistent(&connect(true, false, None)));
    }
}
