//! A command request as the endpoint receives it: the device and command name of the path,
//! `ttlSeconds` and `waitSeconds`, and the body's content type, checked against the
//! contract before anything is sent.

use std::collections::HashMap;

use thiserror::Error;
pub use tributary_contract::command::MAX_DEVICE_ID;
use tributary_contract::command::{
    valid_command_name, valid_device_id, DEFAULT_TTL_SECONDS, MAX_COMMAND_NAME, MAX_TTL_SECONDS,
};

/// The content type of a body sent without one.
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";
/// Longest content type (an AMQP short string holds 255 bytes).
pub const MAX_CONTENT_TYPE: usize = 255;
/// The query parameters the endpoint knows.
pub const PARAMS: [&str; 2] = ["ttlSeconds", "waitSeconds"];

/// Why a request cannot be sent (400).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// A checked command request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRequest {
    /// The device (the routing key).
    pub device: String,
    /// The command name (`fan/set`).
    pub name: String,
    /// Seconds the command may wait for its device before the broker drops it.
    pub ttl_seconds: u32,
    /// Seconds the request waits for the device's answer; 0 does not wait.
    pub wait_seconds: u32,
    /// The body's content type.
    pub content_type: String,
}

impl CommandRequest {
    /// Checks a request; `content_type` is the request's header, if any, and
    /// `max_wait_seconds` the configured bound on `waitSeconds`.
    pub fn parse(
        device: &str,
        name: &str,
        params: &HashMap<String, String>,
        content_type: Option<&[u8]>,
        max_wait_seconds: u32,
    ) -> Result<Self, Invalid> {
        if let Some(unknown) = params.keys().find(|k| !PARAMS.contains(&k.as_str())) {
            return Err(Invalid(format!(
                "unknown query parameter `{unknown}`; known: {}",
                PARAMS.join(", ")
            )));
        }
        if !valid_device_id(device) {
            return Err(Invalid(format!(
                "the device id must be 1 to {MAX_DEVICE_ID} bytes without '/', '+', '#' or control characters"
            )));
        }
        if !valid_command_name(name) {
            return Err(Invalid(format!(
                "the command name must be 1 to {MAX_COMMAND_NAME} bytes of levels of letters, \
                 digits, '-', '_' and '.' separated by '/', not starting with `req` or `res`"
            )));
        }
        let ttl_seconds = seconds(
            params,
            "ttlSeconds",
            DEFAULT_TTL_SECONDS,
            1,
            MAX_TTL_SECONDS,
        )?;
        let wait_seconds = seconds(params, "waitSeconds", 0, 0, max_wait_seconds)?;
        Ok(Self {
            device: device.to_owned(),
            name: name.to_owned(),
            ttl_seconds,
            wait_seconds,
            content_type: parse_content_type(content_type)?,
        })
    }
}

/// A whole number of seconds in `[min, max]`, or `default` when absent.
fn seconds(
    params: &HashMap<String, String>,
    name: &str,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, Invalid> {
    let Some(text) = params.get(name) else {
        return Ok(default);
    };
    text.parse::<u32>()
        .ok()
        .filter(|value| (min..=max).contains(value))
        .ok_or_else(|| {
            Invalid(format!(
                "`{name}` must be a whole number from {min} to {max}"
            ))
        })
}

/// The header's content type (visible ASCII, at most [`MAX_CONTENT_TYPE`] bytes), or
/// [`DEFAULT_CONTENT_TYPE`] when absent.
fn parse_content_type(header: Option<&[u8]>) -> Result<String, Invalid> {
    let Some(bytes) = header else {
        return Ok(DEFAULT_CONTENT_TYPE.to_owned());
    };
    let text = std::str::from_utf8(bytes).unwrap_or_default().trim();
    let plain = text.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if text.is_empty() || text.len() > MAX_CONTENT_TYPE || !plain {
        return Err(Invalid(format!(
            "Content-Type must be 1 to {MAX_CONTENT_TYPE} printable ASCII characters"
        )));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(device: &str, name: &str, pairs: &[(&str, &str)]) -> Result<CommandRequest, Invalid> {
        CommandRequest::parse(device, name, &params(pairs), None, 60)
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let request = parse("press-1", "fan/set", &[]).expect("valid");
        assert_eq!(
            request,
            CommandRequest {
                device: "press-1".into(),
                name: "fan/set".into(),
                ttl_seconds: DEFAULT_TTL_SECONDS,
                wait_seconds: 0,
                content_type: DEFAULT_CONTENT_TYPE.into(),
            }
        );
    }

    #[test]
    fn ttl_and_wait_are_bounded() {
        let ok = parse("d", "reboot", &[("ttlSeconds", "1"), ("waitSeconds", "60")])
            .expect("valid bounds");
        assert_eq!((ok.ttl_seconds, ok.wait_seconds), (1, 60));
        let max = MAX_TTL_SECONDS.to_string();
        assert!(parse("d", "reboot", &[("ttlSeconds", &max)]).is_ok());
        let over = (MAX_TTL_SECONDS + 1).to_string();
        for pairs in [
            [("ttlSeconds", "0")],
            [("ttlSeconds", over.as_str())],
            [("ttlSeconds", "-1")],
            [("ttlSeconds", "1.5")],
            [("waitSeconds", "61")],
            [("waitSeconds", "x")],
            [("wait", "1")],
        ] {
            assert!(parse("d", "reboot", &pairs).is_err(), "{pairs:?}");
        }
    }

    #[test]
    fn device_ids_and_names_follow_the_contract() {
        for device in ["", "a/b", "a+b", "a#", "a\u{7}b"] {
            assert!(parse(device, "reboot", &[]).is_err(), "{device:?}");
        }
        assert!(parse(&"d".repeat(MAX_DEVICE_ID), "reboot", &[]).is_ok());
        assert!(parse(&"d".repeat(MAX_DEVICE_ID + 1), "reboot", &[]).is_err());
        assert!(parse("site-a:press_1.x", "reboot", &[]).is_ok());
        for name in ["", "res/x", "req", "a//b", "fan/+", "#"] {
            assert!(parse("d", name, &[]).is_err(), "{name:?}");
        }
        assert!(parse("d", &"n".repeat(MAX_COMMAND_NAME + 1), &[]).is_err());
    }

    #[test]
    fn content_type_is_passed_through_within_bounds() {
        let with = |header: &[u8]| CommandRequest::parse("d", "x", &params(&[]), Some(header), 60);
        assert_eq!(
            with(b"text/plain; charset=utf-8")
                .expect("valid")
                .content_type,
            "text/plain; charset=utf-8"
        );
        assert!(with(b"").is_err());
        assert!(with(&[0xff, 0xfe]).is_err());
        assert!(with(b"a\tb").is_err());
        assert!(with("x".repeat(MAX_CONTENT_TYPE + 1).as_bytes()).is_err());
        assert!(with("x".repeat(MAX_CONTENT_TYPE).as_bytes()).is_ok());
    }
}
