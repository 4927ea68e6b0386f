//! One MQTT connection: CONNECT and authentication, then PUBLISH handling with broker
//! confirms, in order, at most `receive maximum` in flight (backpressure: the socket is not
//! read while the window is full or the gateway-wide in-flight budget is used up).
//!
//! QoS 1 is answered with PUBACK once the broker confirmed the message; QoS 2 with PUBREC
//! at that point, then PUBCOMP on the client's PUBREL. A QoS 2 message resent before its
//! PUBREL is answered again, not published twice, within one connection (what persists of
//! a session is its device's command queue, nothing of its publishes).
//!
//! `connect` validates and authenticates the CONNECT; `publish` takes messages to the
//! broker and answers them, the will message included; `respond` forwards responses to
//! commands; `commands` handles SUBSCRIBE, UNSUBSCRIBE and the session's command queue at
//! CONNECT; `deliver` sends commands out and takes their PUBACKs.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{decode, Connect, DecodeError, Packet};
use super::encode::{self, ConnectRefusal};
use super::names::{PacketType, ReasonCode};
use crate::ingest::{Gateway, IngestError};
use crate::metrics::{ProtocolLabel, RejectReason};

mod commands;
mod connect;
mod deliver;
mod publish;
mod respond;

/// A publish on its way: its answer and the reason code to answer with (a failure reason,
/// or an error that ends the session when the broker could not take it).
type Pending =
    Pin<Box<dyn Future<Output = (Option<Answer>, Result<ReasonCode, IngestError>)> + Send>>;

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

/// The publish loop's state between two turns.
struct LoopState {
    /// Publishes on their way to the broker, answered in order.
    pending: FuturesOrdered<Pending>,
    /// Whether the client may still send (no DISCONNECT, no end of stream, no drain).
    reading: bool,
    /// When the last whole packet arrived (keep-alive).
    last_packet: tokio::time::Instant,
    /// Most publishes in flight at once.
    window: usize,
    /// Longest silence allowed.
    idle: Duration,
}

/// What decoding the buffered bytes came to.
enum Buffered {
    /// No whole packet handled: more bytes are needed (or the window is full).
    Incomplete,
    /// Packets were handled, the last at this instant.
    Handled(tokio::time::Instant),
    /// The client sent DISCONNECT (handled at this instant): it sends nothing more.
    ClientDone(tokio::time::Instant),
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
    /// The device was disabled or removed from the device table.
    #[error("device revoked")]
    Revoked,
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

/// Largest CONNECT read before authentication: room for a long token, properties and a
/// will, far less than a PUBLISH may take, so connections that never log in stay cheap.
pub const MAX_CONNECT_BYTES: usize = 32 * 1024;

/// Serves one connection until it ends. `certificate_device` is the device id from a
/// verified client certificate, if any; `unauthenticated` is the connection's place among
/// those not yet authenticated, given back once the CONNECT is answered.
pub async fn serve<S>(
    gateway: Arc<Gateway>,
    stream: S,
    peer: SocketAddr,
    certificate_device: Option<crate::tls::PeerCertificate>,
    unauthenticated: super::places::Place,
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
        session_expires_at_close: true,
        taken_over: tokio_util::sync::CancellationToken::new(),
        revoked: tokio_util::sync::CancellationToken::new(),
        unauthenticated: Some(unauthenticated),
        commands: deliver::CommandState::default(),
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
    /// The CONNECT's Session Expiry Interval was zero (or absent, or 3.1.1).
    session_expires_at_close: bool,
    /// Cancelled when a newer connection with the same client id takes over.
    taken_over: tokio_util::sync::CancellationToken,
    /// Cancelled when the device is disabled or removed from the device table.
    revoked: tokio_util::sync::CancellationToken,
    /// The place among unauthenticated connections, held until the CONNECT is answered.
    unauthenticated: Option<super::places::Place>,
    /// Subscriptions and the commands on their way to the device.
    commands: deliver::CommandState,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Session<R, W> {
    async fn run(&mut self, certificate_device: Option<crate::tls::PeerCertificate>) -> SessionEnd {
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
        self.session_expires_at_close = connect
            .properties
            .session_expiry_interval
            .is_none_or(|seconds| seconds == 0);
        let accepted = self.accept(&connect, certificate_device, deadline).await;
        self.unauthenticated = None;
        let (_connection_permit, registration) = match accepted {
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
        self.end_commands(&end).await;
        registration.released.cancel();
        // Only a normal disconnection (all of 3.1.1's) discards the will; a revoked device
        // publishes nothing more.
        if let Some(will) = connect.will {
            if self.disconnect_reason != Some(ReasonCode::NORMAL_DISCONNECTION.code())
                && !matches!(end, SessionEnd::Revoked)
            {
                self.publish_will(will).await;
            }
        }
        end
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
        let max = max_packet_size(&self.gateway).min(MAX_CONNECT_BYTES);
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
                Err(DecodeError::Connect5(error)) => {
                    let refusal = ConnectRefusal::Invalid(error.v5_reason());
                    encode::connack_refused(&mut self.out, true, refusal);
                    return Err(SessionEnd::Protocol(*error));
                }
                Err(error) => return Err(SessionEnd::Protocol(error)),
            }
        }
    }

    async fn publish_loop(&mut self, keep_alive: u16) -> SessionEnd {
        let window = usize::from(self.gateway.limits.max_in_flight_per_connection.max(1));
        // The spec allows one and a half keep-alive periods without a control packet. Only
        // whole packets count: a packet trickled a byte at a time does not keep the
        // connection alive.
        let mut state = LoopState {
            pending: FuturesOrdered::new(),
            reading: true,
            last_packet: tokio::time::Instant::now(),
            window,
            idle: Duration::from_millis(u64::from(keep_alive.max(1)) * 1500),
        };
        loop {
            if let Err(end) = self.step(&mut state).await {
                return end;
            }
        }
    }

    /// One turn of the loop: write, handle buffered packets, write, then wait for the next
    /// event. `Err` ends the session.
    async fn step(&mut self, state: &mut LoopState) -> Result<(), SessionEnd> {
        self.flush_and_settle().await?;
        if state.reading {
            match self
                .decode_buffered(&mut state.pending, state.window)
                .await?
            {
                Buffered::Incomplete => {}
                Buffered::Handled(at) => state.last_packet = at,
                Buffered::ClientDone(at) => {
                    state.last_packet = at;
                    state.reading = false;
                }
            }
        }
        self.flush_and_settle().await?;
        if !state.reading && state.pending.is_empty() {
            return Err(SessionEnd::Disconnected);
        }
        let can_read = state.reading && state.pending.len() < state.window;
        self.wait(state, can_read).await?;
        if !can_read {
            // Not reading is backpressure from the gateway, not silence from the client.
            state.last_packet = tokio::time::Instant::now();
        }
        Ok(())
    }

    /// Waits for the next event: a confirm, bytes, a command, a deadline, a takeover,
    /// a revocation or the drain.
    async fn wait(&mut self, state: &mut LoopState, can_read: bool) -> Result<(), SessionEnd> {
        let gateway = Arc::clone(&self.gateway);
        // Commands are taken while the session reads (not while it drains).
        let take_commands = state.reading && self.commands.feed.is_some();
        let retry_at = self.commands.retry_at.filter(|_| state.reading);
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
        tokio::select! {
            Some((answer, result)) = state.pending.next(), if !state.pending.is_empty() => {
                self.acknowledge(answer, result)?;
                // The broker confirms in bursts: every answer already settled goes into
                // the same write (one send for many PUBACKs instead of one each). Polled
                // without a waker, which is safe: the loop polls `pending` again with its
                // own before it waits.
                while let Some(Some((answer, result))) = state.pending.next().now_or_never() {
                    self.acknowledge(answer, result)?;
                }
            }
            read = self.reader.read_buf(&mut self.buffer), if can_read => match read {
                Ok(0) => state.reading = false,
                Ok(_) => {}
                Err(error) => return Err(error.into()),
            },
            _ = tokio::time::sleep_until(state.last_packet + state.idle), if can_read => {
                return Err(SessionEnd::Timeout);
            }
            incoming = deliver::next_incoming(&mut self.commands.feed), if take_commands => {
                self.on_incoming(incoming).await;
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or(far)), if retry_at.is_some() => {
                self.restart_feed().await;
            }
            _ = self.taken_over.cancelled() => {
                // Unconfirmed messages in `pending` are dropped unanswered: the client
                // resends them on its new connection.
                self.disconnect_v5(ReasonCode::SessionTakenOver);
                return Err(SessionEnd::TakenOver);
            }
            _ = self.revoked.cancelled() => {
                self.disconnect_v5(ReasonCode::NotAuthorized);
                return Err(SessionEnd::Revoked);
            }
            _ = gateway.draining.cancelled(), if state.reading => {
                // Stop reading; the loop finishes the confirms in flight, then closes.
                state.reading = false;
                self.disconnect_v5(ReasonCode::ServerShuttingDown);
            }
        }
        Ok(())
    }

    /// Writes what is queued, then acknowledges the QoS 0 commands it carried.
    async fn flush_and_settle(&mut self) -> Result<(), SessionEnd> {
        self.flush().await?;
        self.settle_written().await;
        Ok(())
    }

    /// Decodes and handles the packets buffered while the window has room.
    async fn decode_buffered(
        &mut self,
        pending: &mut FuturesOrdered<Pending>,
        window: usize,
    ) -> Result<Buffered, SessionEnd> {
        let max_packet = max_packet_size(&self.gateway);
        let mut buffered = Buffered::Incomplete;
        while pending.len() < window {
            match decode(&mut self.buffer, self.v5, max_packet) {
                Ok(Some(packet)) => {
                    let handled = self.handle(packet, pending).await;
                    // After handling: time the gateway spent (rate limiting, waiting for
                    // in-flight budget) is not the client's silence.
                    let at = tokio::time::Instant::now();
                    match handled {
                        Ok(true) => buffered = Buffered::Handled(at),
                        Ok(false) => return Ok(Buffered::ClientDone(at)),
                        Err(end) => return Err(end),
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    self.gateway
                        .metrics
                        .reject(ProtocolLabel::Mqtt, RejectReason::Malformed);
                    self.disconnect_v5(error.v5_reason());
                    return Err(error.into());
                }
            }
        }
        Ok(buffered)
    }

    /// Queues a DISCONNECT with `reason` for an MQTT 5 client (3.1.1 has none: it is just
    /// closed).
    fn disconnect_v5(&mut self, reason: ReasonCode) {
        if self.v5 {
            encode::disconnect(&mut self.out, reason);
        }
    }

    /// Handles one packet; `Ok(false)` means the client is done sending.
    async fn handle(
        &mut self,
        packet: Packet,
        pending: &mut FuturesOrdered<Pending>,
    ) -> Result<bool, SessionEnd> {
        match packet {
            Packet::Publish(publish) => self.publish(*publish, pending).await.map(|()| true),
            Packet::Subscribe(subscribe) => {
                self.subscribe(*subscribe).await;
                Ok(true)
            }
            Packet::Unsubscribe { packet_id, filters } => {
                self.unsubscribe(packet_id, &filters);
                Ok(true)
            }
            Packet::Pingreq => {
                encode::pingresp(&mut self.out);
                Ok(true)
            }
            Packet::Disconnect {
                session_expiry: Some(seconds),
                ..
            } if seconds > 0 && self.session_expires_at_close => {
                // [MQTT-3.14.2-2]: not a valid DISCONNECT, so the will stays due.
                self.violation("DISCONNECT sets a session expiry the CONNECT did not")
            }
            Packet::Disconnect {
                reason,
                session_expiry,
            } => {
                self.disconnect_reason = Some(reason);
                self.session_expiry_changed(session_expiry);
                Ok(false)
            }
            Packet::Ack {
                kind: PacketType::Pubrel,
                packet_id,
            } => self.release(packet_id),
            Packet::Ack {
                kind: PacketType::Puback,
                packet_id,
            } => {
                self.command_acknowledged(packet_id).await;
                Ok(true)
            }
            // The gateway sends commands at QoS 0 or 1 only: other acks are stray but
            // harmless.
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
                encode::pubcomp(&mut self.out, self.v5, packet_id, ReasonCode::Success);
                Ok(true)
            }
            Some(ExactlyOnce::Delivering) => self.violation("PUBREL before PUBREC"),
            // Unknown here (e.g. a PUBREL resent on a new connection): complete it anyway so
            // the client can finish; MQTT 5 is told the identifier was not found.
            None => {
                encode::pubcomp(
                    &mut self.out,
                    self.v5,
                    packet_id,
                    ReasonCode::PacketIdentifierNotFound,
                );
                Ok(true)
            }
        }
    }

    fn violation(&mut self, what: &'static str) -> Result<bool, SessionEnd> {
        self.disconnect_v5(ReasonCode::ProtocolError);
        Err(SessionEnd::Violation(what))
    }
}

#[cfg(test)]
mod tests;
