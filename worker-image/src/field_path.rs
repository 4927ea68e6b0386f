//! A fast path for the commonest expression, a plain field path (`device`, `payload.temp`):
//! when the field is there, its value is what CEL would give, without building a CEL scope
//! for the message. When it is not (or the value is over the size bound), the caller
//! evaluates with CEL, which also gives the error.

use serde_json::Value;

/// Names that CEL may read as something other than a message field.
const NOT_FIELDS: &[&str] = &[
    "message",
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
    "has",
    "timestamp",
    "duration",
];

/// The parts of `source` when it is a plain path of CEL identifiers naming a message field.
pub fn plain_path(source: &str) -> Option<Vec<String>> {
    let parts: Vec<String> = source.trim().split('.').map(str::to_string).collect();
    let identifier = |part: &String| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !NOT_FIELDS.contains(&part.as_str())
    };
    parts.iter().all(identifier).then_some(parts)
}

/// The value at `path` in `message`, if every step is an object holding the next key and
/// the value is within `limit` (as [`crate::expr::size_within`] counts).
pub fn lookup<'a>(message: &'a Value, path: &[String], limit: usize) -> Option<&'a Value> {
    let value = path
        .iter()
        .try_fold(message, |current, part| current.as_object()?.get(part))?;
    size_within(value, limit).map(|_| value)
}

/// The size of `value` as [`crate::expr::size_within`] counts its CEL form, or None once
/// past `limit`.
fn size_within(value: &Value, limit: usize) -> Option<usize> {
    let size = match value {
        Value::String(s) => s.len(),
        Value::Array(items) => {
            let mut total = 8;
            for item in items {
                total += size_within(item, limit.checked_sub(total)?)?;
            }
            total
        }
        Value::Object(fields) => {
            let mut total = 8;
            for (key, item) in fields {
                total += key.len() + size_within(item, limit.checked_sub(total + key.len())?)?;
            }
            total
        }
        _ => 8,
    };
    (size <= limit).then_some(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::CelEnv;
    use serde_json::json;

    #[test]
    fn only_plain_paths_of_fields_take_the_fast_path() {
        assert_eq!(
            plain_path(" payload.temp "),
            Some(vec!["payload".to_string(), "temp".to_string()])
        );
        for not_plain in [
            "payload.temp * 2.0",
            "message.device",
            "true",
            "payload.temp-2",
            "size(device)",
            "payload.0",
            "a..b",
            "",
            "int",
        ] {
            assert_eq!(plain_path(not_plain), None, "{not_plain}");
        }
    }

    #[test]
    fn a_found_field_is_what_cel_gives_and_a_missing_one_is_left_to_cel() {
        let env = CelEnv::default();
        let message = json!({"device": "d1", "payload": {"seq": 7, "temp": 21.5, "big": u64::MAX,
            "doc": {"b": [1, null, "x"], "a": true}}});
        for source in [
            "device",
            "payload.seq",
            "payload.temp",
            "payload.big",
            "payload.doc",
            "payload",
        ] {
            let path = plain_path(source).expect("plain");
            let expr = env.compile(source).expect("compiles");
            let fast = lookup(&message, &path, 1 << 20).expect("found");
            assert_eq!(Some(fast.clone()), expr.eval(&message).ok(), "{source}");
        }
        let path = plain_path("payload.missing").expect("plain");
        assert_eq!(lookup(&message, &path, 1 << 20), None);
        let path = plain_path("device.name").expect("plain");
        assert_eq!(lookup(&message, &path, 1 << 20), None, "not an object");
    }

    #[test]
    fn a_value_over_the_bound_is_left_to_cel() {
        let message = json!({"payload": {"text": "x".repeat(100)}});
        let path = plain_path("payload").expect("plain");
        assert!(lookup(&message, &path, 200).is_some());
        assert_eq!(lookup(&message, &path, 100), None);
    }
}
