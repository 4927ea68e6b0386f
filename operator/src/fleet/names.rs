//! Names of a fleet: which device ids are valid, which are usable as resource names as they
//! are, the resource name of any other id, and the name patterns of generated fleets.

/// The longest resource name of a Device (its children carry it in a label).
pub use crate::build::device::MAX_NAME_LEN;

/// Whether `id` is a valid device id (the operator's rule).
pub use crate::build::device::valid_device_id as is_valid_device_id;

/// Whether `name` is a DNS-1123 subdomain (lower-case alphanumeric labels, `-` inside a
/// label, labels joined by `.`) short enough for the Device's Secrets.
pub fn is_resource_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.split('.').all(is_label)
}

fn is_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    edge(bytes.first())
        && edge(bytes.last())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// The resource name of a device id that is not one itself: lower case, every character
/// other than a letter, digit or `.` becomes `-`, each label trimmed of `-`, empty labels
/// dropped, cut to [`MAX_NAME_LEN`]. `None` when nothing usable is left.
pub fn sanitised_name(id: &str) -> Option<String> {
    let lowered: String = id
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.') => c,
            _ => '-',
        })
        .collect();
    let labels: Vec<&str> = lowered
        .split('.')
        .map(|label| label.trim_matches('-'))
        .filter(|label| !label.is_empty())
        .collect();
    let mut name = labels.join(".");
    name.truncate(MAX_NAME_LEN);
    let name = name.trim_end_matches(['-', '.']).to_owned();
    is_resource_name(&name).then_some(name)
}

/// The resource name of a device and the `spec.deviceId` it needs (when its id is not its
/// name).
pub fn name_for(id: &str) -> Option<(String, Option<String>)> {
    if is_resource_name(id) {
        return Some((id.to_owned(), None));
    }
    sanitised_name(id).map(|name| (name, Some(id.to_owned())))
}

/// A name pattern such as `lamp-{n:04}`: text around one `{n}` placeholder, optionally
/// zero-padded to a width.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamePattern {
    before: String,
    width: usize,
    after: String,
}

impl NamePattern {
    /// Parses a pattern holding exactly one `{n}` or `{n:0W}` (W from 1 to 20).
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let start = pattern
            .find("{n")
            .ok_or_else(|| format!("name pattern {pattern:?} has no {{n}} placeholder"))?;
        let rest = &pattern[start + 2..];
        let end = rest
            .find('}')
            .ok_or_else(|| format!("name pattern {pattern:?}: unclosed {{n"))?;
        let width = match &rest[..end] {
            "" => 0,
            spec => spec
                .strip_prefix(":0")
                .and_then(|w| w.parse::<usize>().ok())
                .filter(|w| (1..=20).contains(w))
                .ok_or_else(|| {
                    format!("name pattern {pattern:?}: write {{n}} or {{n:0W}} (W from 1 to 20)")
                })?,
        };
        let after = &rest[end + 1..];
        if after.contains("{n") {
            return Err(format!(
                "name pattern {pattern:?}: only one {{n}} placeholder"
            ));
        }
        Ok(NamePattern {
            before: pattern[..start].to_owned(),
            width,
            after: after.to_owned(),
        })
    }

    /// The name of device number `n`.
    pub fn expand(&self, n: u64) -> String {
        format!(
            "{}{:0width$}{}",
            self.before,
            n,
            self.after,
            width = self.width
        )
    }
}
