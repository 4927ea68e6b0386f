//! The HTTP rows: authentication, header and body timeouts, idle keep-alive, early 413,
//! the connection cap and the flood of idle and half-head sockets.

use std::time::Duration;

use crate::bench;
use crate::http::{good_publish, publish, Input, HALF_HEAD};
use crate::table::Outcome;

fn raw(what: &str, bytes: Vec<u8>) -> Input {
    Input::Raw {
        bytes,
        what: what.into(),
    }
}

/// Closed by the header timeout: not before about it, not long after.
fn header_timeout() -> Outcome {
    Outcome::ClosedBetween(
        bench::HEADER_TIMEOUT.mul_f64(0.75),
        bench::HEADER_TIMEOUT.mul_f64(3.0),
    )
}

pub fn inputs() -> Vec<(&'static str, Input, Outcome)> {
    let no_credentials = "POST /v1/publish/devices/press-2/t HTTP/1.1\r\nHost: gateway\r\n\
        Connection: close\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    let huge_unauthenticated = format!(
        "POST /v1/publish/devices/press-2/t HTTP/1.1\r\nHost: gateway\r\nContent-Length: {}\r\n\r\n",
        u64::MAX / 2
    );
    let huge_head = format!(
        "GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let wrong_password = publish("press-2", "guess", 2, b"{}", false);
    let mut other_device = good_publish("press-2", b"{}");
    // press-2's credentials, press-3's topic.
    let text =
        String::from_utf8_lossy(&other_device).replace("devices/press-2/", "devices/press-3/");
    other_device = text.into_bytes();
    vec![
        (
            "500 hostile sockets",
            Input::Flood(500),
            Outcome::HealthzWithin(Duration::from_secs(1)),
        ),
        (
            "idle socket",
            raw("connection that sends nothing", Vec::new()),
            header_timeout(),
        ),
        (
            "half a request head",
            raw(
                "request line and half a header, then nothing",
                HALF_HEAD.to_vec(),
            ),
            header_timeout(),
        ),
        ("idle keep-alive", Input::IdleAfterRequest, header_timeout()),
        (
            "request head over 16 KiB",
            raw("a 20 KiB header", huge_head.into_bytes()),
            Outcome::Http(431),
        ),
        (
            "declared huge body",
            raw(
                "authenticated publish declaring 1 GiB, no body sent",
                publish("press-2", &bench::password("press-2"), 1 << 30, b"", false),
            ),
            Outcome::Http(413),
        ),
        (
            "declared huge body, no credentials",
            raw(
                "publish declaring 2^63 bytes without credentials",
                huge_unauthenticated.into_bytes(),
            ),
            Outcome::Http(413),
        ),
        (
            "stalled body",
            raw(
                "publish declaring 100 bytes, 11 sent, then nothing",
                publish(
                    "press-2",
                    &bench::password("press-2"),
                    100,
                    b"{\"partial\":",
                    false,
                ),
            ),
            Outcome::Http(408),
        ),
        (
            "wrong password",
            raw("Basic authentication with a wrong password", wrong_password),
            Outcome::Http(401),
        ),
        (
            "no credentials",
            raw(
                "publish without Authorization",
                no_credentials.as_bytes().to_vec(),
            ),
            Outcome::Http(401),
        ),
        (
            "another device's topic",
            raw("press-2's credentials, press-3's topic", other_device),
            Outcome::Http(403),
        ),
        (
            "connection cap",
            Input::PastTheCap { extra: 20 },
            Outcome::ClosedBetween(Duration::ZERO, bench::HEADER_TIMEOUT.mul_f64(0.5)),
        ),
    ]
}
