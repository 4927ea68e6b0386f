//! Templates for device ids, topics and passwords.
//!
//! Placeholders:
//! - `{n}`: the device number, 1-based and plain (`machine-{n}` → `machine-7`);
//! - `{n:0W}`: the device number zero-padded to `W` digits (`{n:03}` → `007`);
//! - `{device}`: the device id (the expanded user name), in topics and passwords only.

use thiserror::Error;

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    /// A `{` without its `}`.
    #[error("unclosed '{{' at byte {0}")]
    Unclosed(usize),
    /// A placeholder other than `{n}`, `{n:0W}` or (where allowed) `{device}`.
    #[error("unknown placeholder {{{0}}} (use {{n}}, {{n:0W}} or {{device}})")]
    Unknown(String),
    /// `{device}` where there is no device id yet (the user name template itself).
    #[error("{{device}} is not allowed here (the device id is made from this template)")]
    DeviceNotAllowed,
    /// The expanded text is empty.
    #[error("expands to an empty string")]
    Empty,
    /// MQTT wildcards are refused by the gateway in user names and topics we publish to.
    #[error("contains an MQTT wildcard ('+' or '#')")]
    Wildcard,
}

/// Expands `template` for device number `n`; `device` is `None` where `{device}` is not
/// allowed (the user name template).
pub fn expand(template: &str, n: u32, device: Option<&str>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len() + 8);
    let mut rest = template;
    let mut offset = 0;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after
            .find('}')
            .ok_or(TemplateError::Unclosed(offset + start))?;
        let name = &after[..end];
        match name {
            "n" => out.push_str(&n.to_string()),
            "device" => out.push_str(device.ok_or(TemplateError::DeviceNotAllowed)?),
            _ => match padding(name) {
                Some(width) => out.push_str(&format!("{n:0width$}")),
                None => return Err(TemplateError::Unknown(name.to_owned())),
            },
        }
        let consumed = start + 1 + end + 1;
        offset += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The width of a `n:0W` placeholder (W from 1 to 9).
fn padding(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("n:0")?;
    match digits.parse::<usize>() {
        Ok(width @ 1..=9) => Some(width),
        _ => None,
    }
}

/// The device id (MQTT user name and client id) of device `n`.
pub fn device_id(template: &str, n: u32) -> Result<String, TemplateError> {
    let id = expand(template, n, None)?;
    check_name(&id)?;
    Ok(id)
}

/// The topic device `device` (number `n`) publishes to.
pub fn topic(template: &str, n: u32, device: &str) -> Result<String, TemplateError> {
    let topic = expand(template, n, Some(device))?;
    check_name(&topic)?;
    Ok(topic)
}

fn check_name(text: &str) -> Result<(), TemplateError> {
    if text.is_empty() {
        return Err(TemplateError::Empty);
    }
    if text.contains(['+', '#']) {
        return Err(TemplateError::Wildcard);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_number_is_one_based_and_unpadded() {
        assert_eq!(device_id("machine-{n}", 7), Ok("machine-7".into()));
        assert_eq!(device_id("machine-{n}", 120), Ok("machine-120".into()));
    }

    #[test]
    fn padded_number_gets_leading_zeros() {
        assert_eq!(device_id("lamp-{n:04}", 7), Ok("lamp-0007".into()));
        assert_eq!(device_id("lamp-{n:02}", 123), Ok("lamp-123".into()));
    }

    #[test]
    fn topic_may_use_device_and_number() {
        assert_eq!(
            topic("factory/line-1/{device}/telemetry", 3, "machine-3"),
            Ok("factory/line-1/machine-3/telemetry".into())
        );
        assert_eq!(topic("t/{n}/{device}", 3, "m"), Ok("t/3/m".into()));
    }

    #[test]
    fn device_placeholder_is_refused_in_the_user_name() {
        assert_eq!(
            device_id("x-{device}", 1),
            Err(TemplateError::DeviceNotAllowed)
        );
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        assert_eq!(device_id("m-{n", 1), Err(TemplateError::Unclosed(2)));
        assert_eq!(
            device_id("m-{id}", 1),
            Err(TemplateError::Unknown("id".into()))
        );
        assert_eq!(
            device_id("m-{n:00}", 1),
            Err(TemplateError::Unknown("n:00".into()))
        );
        assert_eq!(device_id("", 1), Err(TemplateError::Empty));
        assert_eq!(
            topic("devices/+/telemetry", 1, "m"),
            Err(TemplateError::Wildcard)
        );
    }

    #[test]
    fn text_without_placeholders_is_kept() {
        assert_eq!(
            expand("shared-secret", 9, Some("m")),
            Ok("shared-secret".into())
        );
    }
}
