//! One simulated device: connect, publish on schedule within the in-flight window, count
//! PUBACKs, and on a lost connection reconnect and resend what was not acknowledged.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::ledger::{Ledger, Next};
use crate::payload;
use crate::plan;
use crate::report::{Console, Counters};
use crate::settings::{DeviceSpec, Settings};

/// What a run shares between devices.
#[derive(Debug, Default)]
pub struct Shared {
    pub counters: Counters,
    pub console: Console,
    /// Writing to `--ack-log` failed at least once (the run then does not pass).
    pub ack_log_failed: std::sync::atomic::AtomicBool,
}

/// How a device's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The gateway refused the connection for good (credentials, client id, protocol).
    pub refused: bool,
    /// Messages that should have been acknowledged and were not.
    pub unacknowledged: u64,
}

/// When the run started and when it stops sending new messages.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub start: Instant,
    pub stop_new_at: Option<Instant>,
}

const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs one device to the end.
pub async fn run(
    spec: DeviceSpec,
    settings: Arc<Settings>,
    shared: Arc<Shared>,
    clock: Clock,
) -> Outcome {
    let mut ledger = Ledger::new(spec.messages);
    if spec.messages == Some(0) {
        return Outcome {
            refused: false,
            unacknowledged: 0,
        };
    }
    let mut backoff = BACKOFF_FIRST;
    let mut last_progress = Instant::now();
    loop {
        if clock.stop_new_at.is_some_and(|at| Instant::now() >= at) {
            ledger.stop_new();
        }
        if last_progress.elapsed() >= settings.give_up {
            shared.console.error(
                &spec.id,
                &format!("giving up: no PUBACK for {} s", settings.give_up.as_secs()),
            );
            return Outcome {
                refused: false,
                unacknowledged: ledger.unacknowledged(),
            };
        }
        let mut connection = Connection::open(&spec, &settings);
        match connection.connected().await {
            Ok(()) => {}
            Err(error) => {
                Counters::bump(&shared.counters.errors);
                shared.console.error(&spec.id, &error.message(&settings));
                if error.is_final() {
                    return Outcome {
                        refused: true,
                        unacknowledged: ledger.unacknowledged(),
                    };
                }
                sleep(backoff + jitter(spec.index)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        }
        Counters::bump(&shared.counters.connected);
        backoff = BACKOFF_FIRST;
        let ended = publish_until_done_or_lost(
            &mut connection,
            &mut ledger,
            &spec,
            &settings,
            &shared,
            clock,
            &mut last_progress,
        )
        .await;
        shared.counters.connected.fetch_sub(1, Ordering::Relaxed);
        match ended {
            None => {
                connection.close().await;
                return Outcome {
                    refused: false,
                    unacknowledged: ledger.unacknowledged(),
                };
            }
            Some(reason) => {
                Counters::bump(&shared.counters.errors);
                shared.console.error(&spec.id, &reason);
                drop(connection);
                ledger.connection_lost();
                sleep(backoff + jitter(spec.index)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Publishes until the ledger is finished (`None`) or the connection is lost (the reason).
async fn publish_until_done_or_lost(
    connection: &mut Connection,
    ledger: &mut Ledger,
    spec: &DeviceSpec,
    settings: &Settings,
    shared: &Shared,
    clock: Clock,
    last_progress: &mut Instant,
) -> Option<String> {
    let window = usize::from(settings.max_inflight);
    let devices = u32::try_from(settings.devices.len()).unwrap_or(u32::MAX);
    let mut waiting_since = Instant::now();
    loop {
        if clock.stop_new_at.is_some_and(|at| Instant::now() >= at) {
            ledger.stop_new();
        }
        if ledger.outstanding() == 0 {
            waiting_since = Instant::now();
            // Idle, not stuck: the give-up clock only runs while messages wait.
            if !matches!(ledger.peek(), Some(Next::Resend { .. })) {
                *last_progress = Instant::now();
            }
        }
        // Fill the in-flight window with what is due.
        let wake_at = fill_window(connection, ledger, spec, settings, clock, window, devices);
        if ledger.finished() {
            return None;
        }
        let ack_deadline = waiting_since + settings.ack_timeout;
        let stop_at = clock.stop_new_at.filter(|_| ledger.peek().is_some());
        tokio::select! {
            event = connection.events.recv() => match event {
                Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => match ledger.on_outgoing(pkid) {
                    Ok(sent) if sent.duplicate => Counters::bump(&shared.counters.duplicates_resent),
                    Ok(_) => Counters::bump(&shared.counters.sent),
                    Err(error) => return Some(format!("connection abandoned: {error}")),
                },
                Some(Ok(Event::Outgoing(Outgoing::AwaitAck(pkid)))) => {
                    return Some(format!("connection abandoned: packet id {pkid} still unacknowledged when due for reuse"));
                }
                Some(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                    if let Some(seq) = ledger.on_puback(ack.pkid) {
                        Counters::bump(&shared.counters.acknowledged);
                        if let Some(log) = &settings.ack_log {
                            if let Err(error) = log.record(&spec.id, seq) {
                                shared.console.error(&spec.id, &format!("--ack-log: {error}"));
                                shared.ack_log_failed.store(true, Ordering::Relaxed);
                            }
                        }
                        *last_progress = Instant::now();
                        waiting_since = Instant::now();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Some(format!("connection lost: {error}")),
                None => return Some("connection lost".to_owned()),
            },
            _ = sleep_until(wake_at.unwrap_or(ack_deadline)), if wake_at.is_some() => {}
            _ = sleep_until(stop_at.unwrap_or(ack_deadline)), if stop_at.is_some() => {}
            _ = sleep_until(ack_deadline), if ledger.outstanding() > 0 => {
                return Some(format!(
                    "connection abandoned: no PUBACK for {} s",
                    settings.ack_timeout.as_secs()
                ));
            }
        }
    }
}

/// Publishes what is due until the in-flight window is full; returns when the next new
/// message falls due, if that is what stopped it.
fn fill_window(
    connection: &Connection,
    ledger: &mut Ledger,
    spec: &DeviceSpec,
    settings: &Settings,
    clock: Clock,
    window: usize,
    devices: u32,
) -> Option<Instant> {
    let mut wake_at = None;
    while ledger.outstanding() < window {
        let Some(next) = ledger.peek() else { break };
        if let Next::New { seq } = next {
            let due = plan::due_after(settings.rate, devices, spec.index, seq - 1)
                .map(|offset| clock.start + offset);
            if let Some(due) = due.filter(|due| *due > Instant::now()) {
                wake_at = Some(due);
                break;
            }
        }
        let body = payload::payload(
            settings.payload,
            &spec.id,
            spec.n,
            next.seq(),
            settings.out_of_range_every,
        );
        // Fails only when the event loop has ended; its error arrives as an event.
        if connection
            .client
            .try_publish(spec.topic.as_str(), QoS::AtLeastOnce, false, body)
            .is_err()
        {
            break;
        }
        ledger.take();
    }
    wake_at
}

/// A small per-device offset so reconnecting devices do not all retry at once.
fn jitter(index: u32) -> Duration {
    Duration::from_millis(u64::from(index % 16) * 25)
}

/// One MQTT connection: a fresh client whose event loop runs in its own task (polling it
/// there keeps it from being cancelled halfway through a write) and reports every event.
struct Connection {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    poller: tokio::task::JoinHandle<()>,
}

/// Why a connection attempt failed.
enum ConnectError {
    Refused(ConnectReturnCode),
    Failed(String),
}

impl ConnectError {
    /// Retrying cannot help (the gateway will refuse again).
    fn is_final(&self) -> bool {
        matches!(self, ConnectError::Refused(code) if *code != ConnectReturnCode::ServiceUnavailable)
    }

    fn message(&self, settings: &Settings) -> String {
        let at = format!("{}:{}", settings.host, settings.port);
        match self {
            ConnectError::Refused(code) => {
                format!("connection refused by {at}: {}", refusal(*code))
            }
            ConnectError::Failed(error) => format!("cannot connect to {at}: {error}"),
        }
    }
}

/// What a CONNACK return code means, in words, with the code.
pub fn refusal(code: ConnectReturnCode) -> String {
    let words = match code {
        ConnectReturnCode::Success => "accepted",
        ConnectReturnCode::RefusedProtocolVersion => "unacceptable protocol version",
        ConnectReturnCode::BadClientId => "client id rejected",
        ConnectReturnCode::ServiceUnavailable => "server unavailable (will retry)",
        ConnectReturnCode::BadUserNamePassword => "bad user name or password",
        ConnectReturnCode::NotAuthorized => "not authorized",
    };
    format!("{words} (CONNACK return code {})", code as u8)
}

impl Connection {
    fn open(spec: &DeviceSpec, settings: &Settings) -> Self {
        let mut options = MqttOptions::new(spec.id.as_str(), settings.host.as_str(), settings.port);
        options
            .set_credentials(spec.id.as_str(), spec.password.expose())
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            // Packet ids cycle through this many values; well above the window so a slow
            // PUBACK is not overtaken by the reuse of its id.
            .set_inflight(settings.max_inflight.saturating_mul(4).max(64));
        if let Some(tls) = &settings.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        let (client, mut eventloop) =
            AsyncClient::new(options, usize::from(settings.max_inflight) + 1);
        let mut network = eventloop.network_options();
        network.set_connection_timeout(settings.connect_timeout.as_secs());
        eventloop.set_network_options(network);
        let (tx, events) = mpsc::unbounded_channel();
        let poller = tokio::spawn(async move { pump(&mut eventloop, tx).await });
        Self {
            client,
            events,
            poller,
        }
    }

    /// Waits for the CONNACK.
    async fn connected(&mut self) -> Result<(), ConnectError> {
        match self.events.recv().await {
            Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => Ok(()),
            Some(Err(ConnectionError::ConnectionRefused(code))) => Err(ConnectError::Refused(code)),
            Some(Err(error)) => Err(ConnectError::Failed(error.to_string())),
            Some(Ok(other)) => Err(ConnectError::Failed(format!(
                "expected CONNACK, got {other:?}"
            ))),
            None => Err(ConnectError::Failed("client stopped".to_owned())),
        }
    }

    /// Sends DISCONNECT and waits briefly for it to go out.
    async fn close(&mut self) {
        if self.client.try_disconnect().is_ok() {
            let _ = timeout(Duration::from_secs(1), async {
                while let Some(Ok(event)) = self.events.recv().await {
                    if event == Event::Outgoing(Outgoing::Disconnect) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// Forwards events until the first error (the connection is then over: the next one uses
/// a new client) or until nobody listens.
async fn pump(
    eventloop: &mut EventLoop,
    tx: mpsc::UnboundedSender<Result<Event, ConnectionError>>,
) {
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                if tx.send(Ok(event)).is_err() {
                    return;
                }
            }
            Err(error) => {
                // Packets read just before the error (PUBACKs followed by the close) are
                // still queued in the state; report them first so they are not resent.
                for event in eventloop.state.events.drain(..) {
                    if tx.send(Ok(event)).is_err() {
                        return;
                    }
                }
                let _ = tx.send(Err(error));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_credentials_are_named_with_their_connack_code() {
        assert_eq!(
            refusal(ConnectReturnCode::BadUserNamePassword),
            "bad user name or password (CONNACK return code 4)"
        );
    }

    #[test]
    fn only_server_unavailable_is_retried() {
        assert!(!ConnectError::Refused(ConnectReturnCode::ServiceUnavailable).is_final());
        assert!(ConnectError::Refused(ConnectReturnCode::BadUserNamePassword).is_final());
        assert!(ConnectError::Refused(ConnectReturnCode::NotAuthorized).is_final());
        assert!(!ConnectError::Failed("reset".into()).is_final());
    }
}
