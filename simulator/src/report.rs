//! Counters shared by the devices, the live progress line, error reporting and the final
//! summary.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// Counters all devices update.
#[derive(Debug, Default)]
pub struct Counters {
    /// Devices with an open, accepted MQTT connection.
    pub connected: AtomicU64,
    /// Distinct messages that went out at least once.
    pub sent: AtomicU64,
    /// Distinct messages acknowledged with a PUBACK.
    pub acknowledged: AtomicU64,
    /// Connection failures: refusals, drops, timeouts.
    pub errors: AtomicU64,
    /// Messages sent again after a lost connection (possible duplicates downstream).
    pub duplicates_resent: AtomicU64,
}

/// A point-in-time copy of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub connected: u64,
    pub sent: u64,
    pub acknowledged: u64,
    pub errors: u64,
    pub duplicates_resent: u64,
}

impl Counters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            connected: self.connected.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            acknowledged: self.acknowledged.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            duplicates_resent: self.duplicates_resent.load(Ordering::Relaxed),
        }
    }
}

/// The progress line, e.g.
/// `devices connected 20/20 · sent 1200 · acknowledged 1180 · errors 0 · rate 590 msg/s`.
pub fn progress_line(snapshot: &Snapshot, devices: u32, rate: f64) -> String {
    format!(
        "devices connected {}/{devices} · sent {} · acknowledged {} · errors {} · rate {rate:.0} msg/s",
        snapshot.connected, snapshot.sent, snapshot.acknowledged, snapshot.errors
    )
}

/// The outcome of a run (`--json` prints it as is).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Simulated devices.
    pub devices: u32,
    /// Devices whose connection the gateway refused for good (e.g. bad credentials).
    pub devices_refused: u32,
    /// Messages planned (`--messages`); `null` for a timed run.
    pub expected: Option<u64>,
    /// Distinct messages that went out at least once.
    pub sent: u64,
    /// Distinct messages acknowledged.
    pub acknowledged: u64,
    /// Connection failures (refusals, drops, timeouts).
    pub errors: u64,
    /// Messages sent again after a lost connection.
    pub duplicates_resent: u64,
    /// Wall time of the run.
    pub seconds: f64,
    /// Acknowledged messages per second.
    pub rate: f64,
    /// Every message was acknowledged.
    pub ok: bool,
}

/// The one-line human summary.
pub fn summary_line(summary: &Summary) -> String {
    let verdict = if summary.ok {
        "all messages acknowledged".to_owned()
    } else {
        let planned = summary.expected.unwrap_or(summary.sent);
        format!(
            "FAILED: {} of {planned} messages not acknowledged",
            planned.saturating_sub(summary.acknowledged)
        )
    };
    format!(
        "sent {} · acknowledged {} · errors {} · duplicates resent {} · {:.1} s · {:.0} msg/s — {verdict}",
        summary.sent,
        summary.acknowledged,
        summary.errors,
        summary.duplicates_resent,
        summary.seconds,
        summary.rate
    )
}

/// Writes to stderr: one live progress line (rewritten in place on a terminal, one line
/// per second otherwise) and messages that must not be overwritten by it.
#[derive(Debug)]
pub struct Console {
    tty: bool,
    errors: Mutex<BTreeMap<String, ErrorKind>>,
}

#[derive(Debug)]
struct ErrorKind {
    count: u64,
    first_device: String,
}

impl Console {
    /// A console on stderr; `\r` rewriting only when stderr is a terminal.
    pub fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    /// Shows the progress line.
    pub fn progress(&self, line: &str) {
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }

    /// Ends the progress line (on a terminal) so the next output starts on a new line.
    pub fn finish_progress(&self) {
        if self.tty {
            let _ = writeln!(std::io::stderr().lock());
        }
    }

    /// Prints a line that stays.
    pub fn line(&self, text: &str) {
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            writeln!(err, "\r\x1b[2K{text}")
        } else {
            writeln!(err, "{text}")
        };
    }

    /// Records an error of kind `message` on `device`; the first of each kind is printed at
    /// once, the rest are counted for [`Console::error_summary`].
    pub fn error(&self, device: &str, message: &str) {
        let first = {
            let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
            let entry = errors
                .entry(message.to_owned())
                .or_insert_with(|| ErrorKind {
                    count: 0,
                    first_device: device.to_owned(),
                });
            entry.count += 1;
            entry.count == 1
        };
        if first {
            self.line(&format!("{device}: {message}"));
        }
    }

    /// One line per kind of error: how often, and on which device first.
    pub fn error_summary(&self) -> Vec<String> {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors
            .iter()
            .map(|(message, kind)| {
                format!(
                    "{message}: {} time(s) (first: {})",
                    kind.count, kind.first_device
                )
            })
            .collect()
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_has_the_documented_shape() {
        let snapshot = Snapshot {
            connected: 3,
            sent: 120,
            acknowledged: 118,
            errors: 1,
            duplicates_resent: 0,
        };
        assert_eq!(
            progress_line(&snapshot, 4, 59.6),
            "devices connected 3/4 · sent 120 · acknowledged 118 · errors 1 · rate 60 msg/s"
        );
    }

    #[test]
    fn summary_says_how_many_messages_were_not_acknowledged() {
        let mut summary = Summary {
            devices: 2,
            devices_refused: 1,
            expected: Some(10),
            sent: 5,
            acknowledged: 5,
            errors: 1,
            duplicates_resent: 0,
            seconds: 2.0,
            rate: 2.5,
            ok: false,
        };
        let line = summary_line(&summary);
        assert!(
            line.contains("FAILED: 5 of 10 messages not acknowledged"),
            "{line}"
        );
        summary.ok = true;
        assert!(summary_line(&summary).ends_with("all messages acknowledged"));
    }

    #[test]
    fn json_summary_has_the_documented_keys() {
        let summary = Summary {
            devices: 1,
            devices_refused: 0,
            expected: None,
            sent: 1,
            acknowledged: 1,
            errors: 0,
            duplicates_resent: 0,
            seconds: 1.0,
            rate: 1.0,
            ok: true,
        };
        let value = serde_json::to_value(&summary).expect("json");
        for key in [
            "sent",
            "acknowledged",
            "errors",
            "duplicates_resent",
            "seconds",
            "rate",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
    }

    #[test]
    fn errors_are_counted_per_kind_with_the_first_device() {
        let console = Console {
            tty: false,
            errors: Mutex::new(BTreeMap::new()),
        };
        console.error("m-1", "refused");
        console.error("m-2", "refused");
        assert_eq!(
            console.error_summary(),
            vec!["refused: 2 time(s) (first: m-1)".to_owned()]
        );
    }
}
