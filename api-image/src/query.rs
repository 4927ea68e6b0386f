//! Query parameters: times, intervals, fields, cursors and device lists, parsed and checked
//! before any of them reaches SQL.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use thiserror::Error;
use tributary_contract::sql::quote_ident;

/// A parameter the API refuses (answered with 400 and this text).
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadParam(pub String);

fn bad<T>(message: impl Into<String>) -> Result<T, BadParam> {
    Err(BadParam(message.into()))
}

/// An RFC 3339 time (`2026-01-05T10:00:00Z`, offsets allowed), as canonical UTC text with
/// microseconds for SQL.
pub fn parse_time(name: &str, text: &str) -> Result<String, BadParam> {
    match DateTime::parse_from_rfc3339(text) {
        Ok(time) => Ok(time
            .with_timezone(&Utc)
            .to_rfc3339_opts(SecondsFormat::Micros, true)),
        Err(_) => bad(format!(
            "`{name}` must be an RFC 3339 time such as 2026-01-05T10:00:00Z"
        )),
    }
}

/// Seconds between two canonical times from `parse_time`.
pub fn seconds_between(from: &str, to: &str) -> Option<i64> {
    let from = DateTime::parse_from_rfc3339(from).ok()?;
    let to = DateTime::parse_from_rfc3339(to).ok()?;
    Some((to - from).num_seconds())
}

/// Longest bucket: 31 days.
const MAX_BUCKET_SECONDS: u64 = 31 * 24 * 3600;

/// A bucket width (`30s`, `1m`, `15m`, `1h`, `1d`) in seconds.
pub fn parse_interval(text: &str) -> Result<u64, BadParam> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = match number.parse() {
        Ok(n) if n > 0 => n,
        _ => return bad("`bucket` must be a positive whole number and a unit: 30s, 1m, 1h, 1d"),
    };
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return bad("`bucket` unit must be s, m, h or d (for example 5m)"),
    };
    match number.checked_mul(unit_seconds) {
        Some(seconds) if seconds <= MAX_BUCKET_SECONDS => Ok(seconds),
        _ => bad("`bucket` must be at most 31d"),
    }
}

/// A numeric value of a row: a column, or a path into a JSON column
/// (`payload.temperature` = the `temperature` member of the `payload` column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The column, quoted.
    pub column: String,
    /// The path inside the column's JSON; empty for the column itself.
    pub path: Vec<String>,
}

impl Field {
    /// Parses `column` or `column.member.member`.
    pub fn parse(text: &str) -> Result<Self, BadParam> {
        let mut parts = text.split('.');
        let column = parts
            .next()
            .and_then(quote_ident)
            .ok_or_else(|| BadParam("`field` must start with a plain column name".into()))?;
        let path: Vec<String> = parts.map(str::to_string).collect();
        let plain = |part: &String| {
            !part.is_empty()
                && part.len() <= 128
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if path.len() > 16 || !path.iter().all(plain) {
            return bad("`field` path members must be letters, digits, `_` or `-`");
        }
        Ok(Self { column, path })
    }
}

/// Where a page ended: the last row's time (UTC text from the database) and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The time, as the database printed it.
    pub time: String,
    /// The row id.
    pub id: String,
}

impl Cursor {
    /// The opaque text handed to clients.
    pub fn encode(&self) -> String {
        let json = serde_json::json!([self.time, self.id]).to_string();
        URL_SAFE_NO_PAD.encode(json)
    }

    /// Reads a cursor handed out by `encode`.
    pub fn decode(text: &str) -> Result<Self, BadParam> {
        let invalid = || BadParam("`cursor` is not one this API handed out".into());
        if text.len() > 1024 {
            return Err(invalid());
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
        let (time, id): (String, String) = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        // The time goes to SQL as a parameter, but refuse junk early.
        if time.is_empty() || time.len() > 64 || id.len() > 512 {
            return Err(invalid());
        }
        Ok(Self { time, id })
    }
}

/// A page size: the default when absent, refused above the maximum.
pub fn parse_limit(text: Option<&str>, default: u32, max: u32) -> Result<u32, BadParam> {
    match text {
        None => Ok(default.min(max)),
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => bad(format!("`limit` must be between 1 and {max}")),
        },
    }
}

/// A comma-separated device list (`a,b,c`): non-empty ids, duplicates removed.
pub fn parse_devices(text: &str, max: usize) -> Result<Vec<String>, BadParam> {
    let mut devices: Vec<String> = Vec::new();
    for part in text.split(',') {
        if part.is_empty() {
            return bad("`devices` must be a comma-separated list of device ids");
        }
        if !devices.iter().any(|d| d == part) {
            devices.push(part.to_string());
        }
    }
    if devices.len() > max {
        return bad(format!("`devices` may name at most {max} devices"));
    }
    Ok(devices)
}

/// Row order of a history page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Oldest first (the default).
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

/// `asc` or `desc`.
pub fn parse_order(text: Option<&str>) -> Result<Order, BadParam> {
    match text {
        None | Some("asc") => Ok(Order::Asc),
        Some("desc") => Ok(Order::Desc),
        Some(_) => bad("`order` must be asc or desc"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_become_canonical_utc() {
        assert_eq!(
            parse_time("from", "2026-01-05T12:00:00+02:00").as_deref(),
            Ok("2026-01-05T10:00:00.000000Z")
        );
        assert!(parse_time("from", "yesterday").is_err());
        assert!(parse_time("from", "2026-01-05 10:00").is_err());
        assert_eq!(
            seconds_between("2026-01-05T10:00:00Z", "2026-01-05T11:00:00.000000Z"),
            Some(3600)
        );
    }

    #[test]
    fn intervals_accept_units_and_refuse_nonsense() {
        assert_eq!(parse_interval("30s"), Ok(30));
        assert_eq!(parse_interval("1m"), Ok(60));
        assert_eq!(parse_interval("15m"), Ok(900));
        assert_eq!(parse_interval("2h"), Ok(7200));
        assert_eq!(parse_interval("1d"), Ok(86_400));
        for text in [
            "0m",
            "m",
            "5",
            "5w",
            "-1m",
            "1.5h",
            "32d",
            "99999999999999999999s",
        ] {
            assert!(parse_interval(text).is_err(), "{text}");
        }
    }

    #[test]
    fn fields_are_a_column_and_a_plain_path() {
        assert_eq!(
            Field::parse("payload.temperature"),
            Ok(Field {
                column: "\"payload\"".into(),
                path: vec!["temperature".into()]
            })
        );
        assert_eq!(Field::parse("temperature_c").map(|f| f.path.len()), Ok(0));
        for text in [
            "",
            "1col",
            "payload.",
            "payload..x",
            "pay\"load",
            "payload.a'b",
            "a;drop",
        ] {
            assert!(Field::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        let cursor = Cursor {
            time: "2026-01-05 10:00:00.123456+00".into(),
            id: "01J0000000000000000000000".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Ok(cursor));
        assert!(Cursor::decode("not base64!").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("{}")).is_err());
    }

    #[test]
    fn limits_and_device_lists_are_bounded() {
        assert_eq!(parse_limit(None, 100, 1000), Ok(100));
        assert_eq!(parse_limit(Some("1000"), 100, 1000), Ok(1000));
        assert!(parse_limit(Some("1001"), 100, 1000).is_err());
        assert!(parse_limit(Some("0"), 100, 1000).is_err());
        assert_eq!(
            parse_devices("a,b,a", 10),
            Ok(vec!["a".to_string(), "b".to_string()])
        );
        assert!(parse_devices("a,,b", 10).is_err());
        assert!(parse_devices("a,b,c", 2).is_err());
        assert_eq!(parse_order(Some("desc")), Ok(Order::Desc));
        assert!(parse_order(Some("up")).is_err());
    }
}
