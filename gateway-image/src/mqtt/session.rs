//! One MQTT connection: CONNECT and authentication, then PUBLISH handling with broker
//! confirms, in order, at most `receive maximum` in flight (backpressure: the socket is not
//! read while the window is full or the gateway-wide in-flight budget is used up).
//!
//! QoS 1 is answered with PUBACK once the broker confirmed the message; QoS 2 with PUBREC
//! at that point, then PUBCOMP on the client's PUBREL. A QoS 2 message resent before its
//! PUBREL is answered again, not published twice. Sessions are not persisted, so that
//! promise holds within one connection.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{decode, Connect, DecodeError, Packet, Publish, Will};
use super::encode::{self, ConnectRefusal, ServerLimits};
use super::registry::Registration;
use crate::auth::{looks_like_jwt, AuthError, Credentials};
use crate::broker::PublishError;
use crate::ingest::{Gateway, IngestError};
use crate::metrics::{ProtocolLabel, RejectReason};
use crate::topics::is_safe_identity;

type Pending = Pin<Box<dyn Future<Output = (Option<Answer>, Result<String, IngestError>)> + Send>>;

/// How a finished publish is answered: PUBACK (QoS 1) or PUBREC (QoS 2); QoS 0 has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Answer {
    packet_id: u16,
    exactly_once: bool,
}

/// Where a QoS 2 message of this connection stands, by packet identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExactlyOnce {
    /// On its way to the broker; no PUBREC yet.
    Delivering,
    /// Stored and PUBREC sent; waiting for the client's PUBREL.
    Received,
}

/// Why a session ended (for the log line).
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    /// The client closed or disconnected.
    #[error("client disconnected")]
    Disconnected,
    /// A protocol violation or malformed packet.
    #[error("protocol error: {0}")]
    Protocol(#[from] DecodeError),
    /// A client-side protocol violation not caught by the codec.
    #[error("protocol violation: {0}")]
    Violation(&'static str),
    /// Refused at CONNECT.
    #[error("connection refused: {0:?}")]
    Refused(ConnectRefusal),
    /// No CONNECT in time, or keep-alive expired.
    #[error("timed out")]
    Timeout,
    /// The message could not be accepted and 3.1.1 has no way to say so.
    #[error("message not accepted: {0}")]
    NotAccepted(IngestError),
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The gateway is draining.
    #[error("gateway draining")]
    Draining,
    /// A newer connection with the same device and client id took the session over.
    #[error("session taken over")]
    TakenOver,
    /// A write stayed blocked past `limits.writeTimeoutSeconds` (the client stopped reading).
    #[error("write timed out")]
    WriteTimeout,
}

/// The keep-alive the gateway enforces for a client that asked for `requested` seconds:
/// 0 (none) and anything above the maximum become the maximum.
pub fn granted_keep_alive(requested: u16, maximum: u16) -> u16 {
    let maximum = maximum.max(1);
    if requested == 0 || requested > maximum {
        maximum
    } else {
        requested
    }
}

/// The largest MQTT packet accepted: the payload limit plus room for topic and properties.
pub fn max_packet_size(gateway: &Gateway) -> usize {
    gateway.limits.max_payload_bytes + 65_536 + 1_024
}

/// Serves one connection until it ends. `certificate_device` is the device id from a
/// verified client certificate, if any.
pub async fn serve<S>(
    gateway: Arc<Gateway>,
    stream: S,
    peer: SocketAddr,
    certificate_device: Option<String>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (reader, writer) = tokio::io::split(stream);
    let mut session = Session {
        gateway,
        reader,
        writer,
        buffer: BytesMut::with_capacity(1024),
        out: BytesMut::new(),
        v5: false,
        device: String::new(),
        peer,
        exactly_once: HashMap::new(),
        disconnect_reason: None,
        taken_over: tokio_util::sync::CancellationToken::new(),
    };
    let end = session.run(certificate_device).await;
    // Flush what is queued (e.g. a DISCONNECT) and close cleanly, within the write timeout
    // (a client that stopped reading must not hold the task).
    let _ = session.flush().await;
    let write_timeout = session.write_timeout();
    let _ = tokio::time::timeout(write_timeout, session.writer.shutdown()).await;
    match end {
        SessionEnd::Disconnected | SessionEnd::Draining | SessionEnd::TakenOver => {
            tracing::debug!(peer = %peer, device = %session.device, "mqtt session ended")
        }
        other => {
            tracing::info!(peer = %peer, device = %session.device, reason = %other, "mqtt session closed")
        }
    }
}

struct Session<R, W> {
    gateway: Arc<Gateway>,
    reader: R,
    writer: W,
    buffer: BytesMut,
    out: BytesMut,
    v5: bool,
    device: String,
    peer: SocketAddr,
    exactly_once: HashMap<u16, ExactlyOnce>,
    /// The reason code of the client's DISCONNECT, once received.
    disconnect_reason: Option<u8>,
    /// Cancelled when a newer connection with the same client id takes over.
    taken_over: tokio_util::sync::CancellationToken,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Session<R, W> {
    async fn run(&mut self, certificate_device: Option<String>) -> SessionEnd {
        let timeout = Duration::from_secs(self.gateway.limits.connect_timeout_seconds.max(1));
        // One deadline for reading CONNECT and authenticating (throttling and the wait for
        // a password check slot included): logins never queue without limit.
        let deadline = tokio::time::Instant::now() + timeout;
        let connect = match tokio::time::timeout_at(deadline, self.read_connect()).await {
            Ok(Ok(connect)) => connect,
            Ok(Err(end)) => return end,
            Err(_) => return SessionEnd::Timeout,
        };
        self.v5 = connect.v5;
        let (_connection_permit, _registration) =
            match self.accept(&connect, certificate_device, deadline).await {
                Ok(held) => held,
                Err(refusal) => {
                    encode::connack_refused(&mut self.out, self.v5, refusal);
                    return SessionEnd::Refused(refusal);
                }
            };
        let metrics = Arc::clone(&self.gateway.metrics);
        metrics.connections.inc();
        let keep_alive = granted_keep_alive(
            connect.keep_alive,
            self.gateway.limits.max_keep_alive_seconds,
        );
        let end = self.publish_loop(keep_alive).await;
        metrics.connections.dec();
        // Only a DISCONNECT with reason 0 (all of 3.1.1's) discards the will.
        if let Some(will) = connect.will {
            if self.disconnect_reason != Some(0) {
                self.publish_will(will).await;
            }
        }
        end
    }

    /// Publishes the will message like a publish from the device (its topic permissions
    /// and routes apply). The MQTT 5 will delay interval is not honoured: sessions are not
    /// persisted, so there is no reconnect to wait for.
    async fn publish_will(&self, will: Will) {
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

    fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.gateway.limits.write_timeout_seconds.max(1))
    }

    /// Writes what is queued; a client that stops reading gets `WriteTimeout` instead of
    /// blocking the session forever.
    async fn flush(&mut self) -> Result<(), SessionEnd> {
        let write_timeout = self.write_timeout();
        let write = async {
            if !self.out.is_empty() {
                self.writer.write_all(&self.out).await?;
                self.out.clear();
            }
            self.writer.flush().await
        };
        match tokio::time::timeout(write_timeout, write).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(SessionEnd::WriteTimeout),
        }
    }

    /// Reads bytes into the buffer; `Disconnected` at end of stream.
    async fn fill(&mut self) -> Result<(), SessionEnd> {
        match self.reader.read_buf(&mut self.buffer).await? {
            0 => Err(SessionEnd::Disconnected),
            _ => Ok(()),
        }
    }

    async fn read_connect(&mut self) -> Result<Box<Connect>, SessionEnd> {
        let max = max_packet_size(&self.gateway);
        loop {
            match decode(&mut self.buffer, false, max) {
                Ok(Some(Packet::Connect(connect))) => return Ok(connect),
                Ok(Some(_)) => return Err(SessionEnd::Violation("first packet is not CONNECT")),
                Ok(None) => self.fill().await?,
                Err(DecodeError::UnsupportedProtocol(level)) => {
                    encode::connack_refused(
                        &mut self.out,
                        false,
                        ConnectRefusal::UnsupportedProtocol,
                    );
                    return Err(SessionEnd::Protocol(DecodeError::UnsupportedProtocol(
                        level,
                    )));
                }
                Err(error) => return Err(SessionEnd::Protocol(error)),
            }
        }
    }

    /// Validates and authenticates a CONNECT; on success sends CONNACK and returns the
    /// connection-limit permit and the session's registration (client-id takeover), both
    /// held for the session's lifetime.
    async fn accept(
        &mut self,
        connect: &Connect,
        certificate_device: Option<String>,
        deadline: tokio::time::Instant,
    ) -> Result<(tokio::sync::OwnedSemaphorePermit, Option<Registration>), ConnectRefusal> {
        let gateway = Arc::clone(&self.gateway);
        if connect.properties.auth_method.is_some() {
            return Err(ConnectRefusal::BadAuthMethod);
        }
        let id_ok = connect.client_id.is_empty() || is_safe_identity(&connect.client_id);
        let username_ok = connect.username.as_deref().is_none_or(is_safe_identity);
        if !id_ok
            || !username_ok
            || (connect.client_id.is_empty() && !connect.clean_start && !self.v5)
        {
            return Err(ConnectRefusal::IdentifierRejected);
        }
        let credentials = match (certificate_device, &connect.username, &connect.password) {
            (Some(device), _, _) => Credentials::Certificate(device),
            (None, _, Some(password)) if gateway.auth.jwt_enabled() && looks_like_jwt(password) => {
                Credentials::Token(String::from_utf8_lossy(password).into_owned())
            }
            (None, Some(username), password) => Credentials::Password {
                device: username.clone(),
                password: password.as_deref().unwrap_or_default().to_vec(),
            },
            (None, None, _) => Credentials::None,
        };
        let method = credentials.method();
        let authenticated = gateway
            .auth
            .authenticate_by(self.peer.ip(), credentials, deadline)
            .await;
        match authenticated {
            Ok(device) => self.device = device,
            Err(AuthError::Denied) => {
                gateway.metrics.auth_failure(ProtocolLabel::Mqtt, method);
                return Err(ConnectRefusal::BadCredentials);
            }
            // Not a verdict on the credentials: "unavailable" makes devices retry later
            // rather than give up on a password that may well be right.
            Err(AuthError::Throttled | AuthError::Busy) => {
                gateway.metrics.auth_failure(ProtocolLabel::Mqtt, method);
                return Err(ConnectRefusal::ServerUnavailable);
            }
        }
        if gateway.draining.is_cancelled() || !gateway.broker.is_connected() {
            return Err(ConnectRefusal::ServerUnavailable);
        }
        let permit = Arc::clone(&gateway.connections)
            .try_acquire_owned()
            .map_err(|_| ConnectRefusal::ServerUnavailable)?;
        let limits = ServerLimits {
            receive_maximum: gateway.limits.max_in_flight_per_connection.max(1),
            maximum_packet_size: u32::try_from(max_packet_size(&gateway)).unwrap_or(u32::MAX),
            assigned_client_id: (self.v5 && connect.client_id.is_empty())
                .then(|| ulid::Ulid::generate().to_string()),
            server_keep_alive: {
                let granted =
                    granted_keep_alive(connect.keep_alive, gateway.limits.max_keep_alive_seconds);
                (granted != connect.keep_alive).then_some(granted)
            },
        };
        // An empty client id names no session (3.1.1) or gets a fresh unique one (5).
        let registration = (!connect.client_id.is_empty()).then(|| {
            let registration = gateway.sessions.register(&self.device, &connect.client_id);
            self.taken_over = registration.taken_over.clone();
            registration
        });
        encode::connack_accepted(&mut self.out, self.v5, &limits);
        Ok((permit, registration))
    }

    async fn publish_loop(&mut self, keep_alive: u16) -> SessionEnd {
        let gateway = Arc::clone(&self.gateway);
        let window = usize::from(gateway.limits.max_in_flight_per_connection.max(1));
        let max_packet = max_packet_size(&gateway);
        // The spec allows one and a half keep-alive periods without a control packet. Only
        // whole packets count: a packet trickled a byte at a time does not keep the
        // connection alive.
        let idle = Duration::from_millis(u64::from(keep_alive.max(1)) * 1500);
        let mut last_packet = tokio::time::Instant::now();
        let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
        let mut reading = true;
        loop {
            if let Err(end) = self.flush().await {
                return end;
            }
            // Decode what is buffered while the window has room.
            while reading && pending.len() < window {
                match decode(&mut self.buffer, self.v5, max_packet) {
                    Ok(Some(packet)) => {
                        let handled = self.handle(packet, &mut pending).await;
                        // After handling: time the gateway spent (rate limiting, waiting
                        // for in-flight budget) is not the client's silence.
                        last_packet = tokio::time::Instant::now();
                        match handled {
                            Ok(true) => {}
                            Ok(false) => reading = false,
                            Err(end) => return end,
                        }
                    }
                    Ok(None) => break,
                    Err(error) => {
                        gateway
                            .metrics
                            .reject(ProtocolLabel::Mqtt, RejectReason::Malformed);
                        if self.v5 {
                            encode::disconnect(&mut self.out, error.v5_reason());
                        }
                        return error.into();
                    }
                }
            }
            if let Err(end) = self.flush().await {
                return end;
            }
            if !reading && pending.is_empty() {
                return SessionEnd::Disconnected;
            }
            let can_read = reading && pending.len() < window;
            tokio::select! {
                Some((answer, result)) = pending.next(), if !pending.is_empty() => {
                    if let Err(end) = self.acknowledge(answer, result) {
                        return end;
                    }
                }
                read = self.reader.read_buf(&mut self.buffer), if can_read => match read {
                    Ok(0) => reading = false,
                    Ok(_) => {}
                    Err(error) => return error.into(),
                },
                _ = tokio::time::sleep_until(last_packet + idle), if can_read => {
                    return SessionEnd::Timeout;
                }
                _ = self.taken_over.cancelled() => {
                    // Unconfirmed messages in `pending` are dropped unanswered: the client
                    // resends them on its new connection.
                    if self.v5 {
                        encode::disconnect(&mut self.out, 0x8E);
                    }
                    return SessionEnd::TakenOver;
                }
                _ = gateway.draining.cancelled(), if reading => {
                    // Stop reading; the loop finishes the confirms in flight, then closes.
                    reading = false;
                    if self.v5 {
                        encode::disconnect(&mut self.out, 0x8B);
                    }
                }
            }
            if !can_read {
                // Not reading is backpressure from the gateway, not silence from the client.
                last_packet = tokio::time::Instant::now();
            }
        }
    }

    /// Handles one packet; `Ok(false)` means the client is done sending.
    async fn handle(
        &mut self,
        packet: Packet,
        pending: &mut FuturesOrdered<Pending>,
    ) -> Result<bool, SessionEnd> {
        match packet {
            Packet::Publish(publish) => self.publish(publish, pending).await.map(|()| true),
            Packet::Subscribe { packet_id, filters } => {
                encode::suback_refused(&mut self.out, self.v5, packet_id, filters);
                Ok(true)
            }
            Packet::Unsubscribe { packet_id, filters } => {
                encode::unsuback(&mut self.out, self.v5, packet_id, filters);
                Ok(true)
            }
            Packet::Pingreq => {
                encode::pingresp(&mut self.out);
                Ok(true)
            }
            Packet::Disconnect { reason } => {
                self.disconnect_reason = Some(reason);
                Ok(false)
            }
            Packet::Ack { kind: 6, packet_id } => self.release(packet_id),
            // The gateway never sends QoS > 0 messages, so other acks from the client are
            // stray but harmless.
            Packet::Ack { .. } => Ok(true),
            Packet::Connect(_) => self.violation("second CONNECT"),
            Packet::Auth => self.violation("AUTH is not supported"),
        }
    }

    /// PUBREL: the client got our PUBREC; forget the identifier and complete.
    fn release(&mut self, packet_id: u16) -> Result<bool, SessionEnd> {
        match self.exactly_once.get(&packet_id) {
            Some(ExactlyOnce::Received) => {
                self.exactly_once.remove(&packet_id);
                encode::pubcomp(&mut self.out, self.v5, packet_id, 0);
                Ok(true)
            }
            Some(ExactlyOnce::Delivering) => self.violation("PUBREL before PUBREC"),
            // Unknown here (e.g. a PUBREL resent on a new connection): complete it anyway so
            // the client can finish; MQTT 5 is told the identifier was not found.
            None => {
                encode::pubcomp(&mut self.out, self.v5, packet_id, 0x92);
                Ok(true)
            }
        }
    }

    fn violation(&mut self, what: &'static str) -> Result<bool, SessionEnd> {
        if self.v5 {
            encode::disconnect(&mut self.out, 0x82);
        }
        Err(SessionEnd::Violation(what))
    }

    async fn publish(
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
                    if self.v5 {
                        encode::disconnect(&mut self.out, 0x91); // identifier in use
                    }
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
            Err(IngestError::TooLarge) => {
                if self.v5 {
                    encode::disconnect(&mut self.out, 0x95);
                }
                return Err(SessionEnd::NotAccepted(IngestError::TooLarge));
            }
            Err(error) => {
                tracing::info!(device = %self.device, topic = %publish.topic, error = %error, "publish refused");
                return match (self.v5, publish.packet_id) {
                    (true, Some(packet_id)) => {
                        let reason = if error == IngestError::NotPermitted {
                            0x87
                        } else {
                            0x90
                        };
                        if publish.qos == 2 {
                            encode::pubrec(&mut self.out, true, packet_id, reason);
                        } else {
                            encode::puback(&mut self.out, true, packet_id, reason);
                        }
                        Ok(())
                    }
                    (_, None) => Ok(()),
                    // 3.1.1 cannot refuse a QoS 1 or 2 message except by closing.
                    (false, Some(_)) => Err(SessionEnd::NotAccepted(error)),
                };
            }
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

    /// Sends the PUBACK (QoS 1) or PUBREC (QoS 2) for a finished publish, or ends the
    /// session when the broker could not take the message (the client resends it after
    /// reconnecting).
    fn acknowledge(
        &mut self,
        answer: Option<Answer>,
        result: Result<String, IngestError>,
    ) -> Result<(), SessionEnd> {
        let Some(answer) = answer else {
            return Ok(()); // QoS 0: nothing to answer, whatever happened
        };
        let reason = match result {
            Ok(_) => 0,
            Err(error) if self.v5 && is_permanent(&error) => {
                if error == IngestError::Broker(PublishError::Nacked) {
                    0x97 // quota exceeded: e.g. a full queue with reject-publish
                } else {
                    0x80
                }
            }
            Err(error) => {
                if self.v5 {
                    encode::disconnect(&mut self.out, 0x89); // server busy
                }
                return Err(SessionEnd::NotAccepted(error));
            }
        };
        if answer.exactly_once {
            // A refused QoS 2 message ends its exchange at the PUBREC.
            if reason == 0 {
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

#[cfg(test)]
mod tests {
    use super::granted_keep_alive;

    #[test]
    fn keep_alive_zero_or_above_the_maximum_gets_the_maximum() {
        assert_eq!(granted_keep_alive(0, 300), 300);
        assert_eq!(granted_keep_alive(301, 300), 300);
        assert_eq!(granted_keep_alive(60, 300), 60);
        assert_eq!(granted_keep_alive(300, 300), 300);
        // A maximum of 0 in the config would mean "never": treated as 1 s.
        assert_eq!(granted_keep_alive(0, 0), 1);
    }
}
