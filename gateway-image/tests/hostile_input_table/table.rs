//! The table's shape: a row is a named hostile input and the outcome a user would see; the
//! runner compares it with what actually happened and prints every row when any differs.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

/// What the gateway answers a hostile input with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// CONNACK with this return/reason code (0: accepted).
    Connack(u8),
    /// Every CONNACK of a burst of logins carried one of these codes, within the CONNECT
    /// deadline.
    ConnackCodes(BTreeSet<u8>),
    /// CONNACK accepted, and MQTT 5 Server Keep Alive set to this many seconds.
    ServerKeepAlive(u16),
    /// MQTT 5 DISCONNECT with this reason code, then the connection closed.
    Disconnect(u8),
    /// PUBACK with this reason code, the session going on.
    Puback(u8),
    /// Closed without an answer (actual: any time within the deadline).
    Closed,
    /// Closed without an answer between these bounds (expected only).
    ClosedBetween(Duration, Duration),
    /// Closed without an answer after this long (actual only).
    ClosedAfter(Duration),
    /// HTTP response status.
    Http(u16),
    /// The TLS handshake failed (no CONNACK).
    TlsRefused,
    /// `/healthz` answered 200 within this bound each time (expected only).
    HealthzWithin(Duration),
    /// `/healthz` answered 200, the slowest after this long (actual only).
    HealthzSlowest(Duration),
    /// Something else happened (actual only), described.
    Other(String),
}

impl Outcome {
    /// Whether `actual` is what `self` (the expected outcome) promises.
    pub fn admits(&self, actual: &Outcome) -> bool {
        match (self, actual) {
            (Outcome::ClosedBetween(low, high), Outcome::ClosedAfter(took)) => {
                low <= took && took <= high
            }
            (Outcome::HealthzWithin(bound), Outcome::HealthzSlowest(took)) => took < bound,
            (Outcome::Closed, Outcome::ClosedAfter(_)) => true,
            (expected, actual) => expected == actual,
        }
    }
}

fn seconds(duration: &Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Connack(0) => write!(f, "CONNACK 0x00 (accepted)"),
            Outcome::Connack(code) => write!(f, "CONNACK {code:#04x}"),
            Outcome::ConnackCodes(codes) => {
                let codes: Vec<String> = codes.iter().map(|c| format!("{c:#04x}")).collect();
                write!(f, "every CONNACK one of {}, in time", codes.join(", "))
            }
            Outcome::ServerKeepAlive(s) => write!(f, "CONNACK 0x00, Server Keep Alive {s} s"),
            Outcome::Disconnect(code) => write!(f, "DISCONNECT {code:#04x}, closed"),
            Outcome::Puback(code) => write!(f, "PUBACK {code:#04x}, session goes on"),
            Outcome::Closed => write!(f, "closed, no answer"),
            Outcome::ClosedBetween(low, high) => {
                write!(f, "closed between {} and {}", seconds(low), seconds(high))
            }
            Outcome::ClosedAfter(took) => write!(f, "closed after {}", seconds(took)),
            Outcome::Http(status) => write!(f, "HTTP {status}"),
            Outcome::TlsRefused => write!(f, "TLS handshake refused"),
            Outcome::HealthzWithin(bound) => write!(f, "/healthz 200 within {bound:?}"),
            Outcome::HealthzSlowest(took) => write!(f, "/healthz 200, slowest {took:?}"),
            Outcome::Other(text) => write!(f, "{text}"),
        }
    }
}

/// One row as run: its name, input, what was expected and what happened.
pub struct Result {
    pub area: &'static str,
    pub name: String,
    pub input: String,
    pub expected: Outcome,
    pub actual: Outcome,
    /// The well-behaved device kept getting PUBACKs during the row.
    pub device_unaffected: bool,
}

impl Result {
    pub fn passed(&self) -> bool {
        self.device_unaffected && self.expected.admits(&self.actual)
    }
}

/// The table as markdown (also what `docs/security.md` shows).
pub fn render(results: &[Result]) -> String {
    let mut out = String::from(
        "| area | hostile input | expected outcome | actual | device unaffected | ok |\n\
         |---|---|---|---|---|---|\n",
    );
    for row in results {
        out.push_str(&format!(
            "| {} | {}: {} | {} | {} | {} | {} |\n",
            row.area,
            row.name,
            row.input,
            row.expected,
            row.actual,
            if row.device_unaffected { "yes" } else { "NO" },
            if row.passed() { "ok" } else { "FAILED" },
        ));
    }
    out
}
