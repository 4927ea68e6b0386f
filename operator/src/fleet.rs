//! Fleets of Device resources from a CSV file or a name pattern, for
//! `tributary-operator devices from-csv` and `devices generate`: pure functions from text
//! to Device manifests, with errors that name the CSV line at fault.
//!
//! A CSV has a header. Column `id` (required) is the device id: the resource name when it
//! is one, else a sanitised name plus `spec.deviceId`. `gateways` (`;`-separated) adds to
//! the command's Gateways, `disabled` is `true` or `false`; every other column is an
//! attribute (an empty cell sets none). The CRD's bounds are checked here, before
//! anything reaches the API server: at most [`MAX_ATTRIBUTES`] attributes, keys up to
//! [`MAX_ATTRIBUTE_KEY_LEN`] characters, values up to [`MAX_ATTRIBUTE_VALUE_LEN`].

pub mod names;
#[cfg(test)]
mod tests;

use crate::crd::device::{CertificateCredential, DeviceCredentials, GeneratedCredential};
use crate::crd::{Device, DeviceSpec};
use names::{is_resource_name, name_for, NamePattern};
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use thiserror::Error;

/// The Device bounds the operator enforces (`build::device`), checked here per CSV line.
pub use crate::build::device::{
    MAX_ATTRIBUTES, MAX_ATTRIBUTE_KEY as MAX_ATTRIBUTE_KEY_LEN,
    MAX_ATTRIBUTE_VALUE as MAX_ATTRIBUTE_VALUE_LEN,
};

/// The most devices `generate` makes at once.
pub const MAX_GENERATED: u64 = 100_000;

const COLUMN_ID: &str = "id";
const COLUMN_GATEWAYS: &str = "gateways";
const COLUMN_DISABLED: &str = "disabled";

/// Why no manifests could be made.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FleetError {
    /// A CSV line (1-based, the header is line 1) is wrong.
    #[error("line {line}: {reason}")]
    Line {
        /// The line the record starts on.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The options (Gateways, namespace, pattern, count, attributes) are wrong.
    #[error("{0}")]
    Options(String),
}

/// The credential every device of the fleet gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CredentialKind {
    /// A secret the operator generates (`<name>-credentials`).
    #[default]
    Generated,
    /// A client certificate the operator issues (`<name>-certificate`).
    Certificate,
}

impl FromStr for CredentialKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "generated" => Ok(CredentialKind::Generated),
            "certificate" => Ok(CredentialKind::Certificate),
            other => Err(format!(
                "unknown credential {other:?}: generated or certificate"
            )),
        }
    }
}

/// What every device of a fleet shares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fleet {
    /// `metadata.namespace` of every Device (none: the one `kubectl` applies them to).
    pub namespace: Option<String>,
    /// Gateways every device may use.
    pub gateways: Vec<String>,
    /// Its credential.
    pub credential: CredentialKind,
}

/// A test fleet: `count` devices named after a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    /// How many devices.
    pub count: u64,
    /// Number of the first device.
    pub first: u64,
    /// Their ids, such as `lamp-{n:04}`.
    pub pattern: String,
    /// `key=value` attributes of every device.
    pub attributes: Vec<String>,
}

/// One device before it becomes a resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Entry {
    id: String,
    gateways: Vec<String>,
    disabled: bool,
    attributes: BTreeMap<String, String>,
}

/// The Device manifests of a CSV file (see the module documentation).
pub fn devices_from_csv(input: &[u8], fleet: &Fleet) -> Result<Vec<Device>, FleetError> {
    check_fleet(fleet)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(input);
    let mut records = reader.records();
    let first = records
        .next()
        .ok_or_else(|| FleetError::Options("the CSV is empty: it needs a header line".into()))?
        .map_err(csv_error)?;
    let columns = Columns::of_header(&first).map_err(|reason| FleetError::Line {
        line: line_of(&first),
        reason,
    })?;
    let mut entries = Vec::new();
    for record in records {
        let record = record.map_err(csv_error)?;
        let line = line_of(&record);
        let entry = columns
            .entry(&record)
            .map_err(|reason| FleetError::Line { line, reason })?;
        entries.push((line, entry));
    }
    if entries.is_empty() {
        return Err(FleetError::Options("the CSV has no device lines".into()));
    }
    assemble(entries, fleet)
}

/// The Device manifests of a test fleet: ids from the pattern, numbered from `first`.
pub fn generate(generated: &Generated, fleet: &Fleet) -> Result<Vec<Device>, FleetError> {
    check_fleet(fleet)?;
    if !(1..=MAX_GENERATED).contains(&generated.count) {
        return Err(FleetError::Options(format!(
            "--count must be from 1 to {MAX_GENERATED}"
        )));
    }
    if generated.first.checked_add(generated.count).is_none() {
        return Err(FleetError::Options("--first is too large".into()));
    }
    let pattern = NamePattern::parse(&generated.pattern).map_err(FleetError::Options)?;
    let mut attributes = BTreeMap::new();
    for pair in &generated.attributes {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| FleetError::Options(format!("--attribute {pair:?}: write KEY=VALUE")))?;
        let (key, value) = (key.trim(), value.trim());
        check_attribute(key, value)
            .and_then(|()| insert_attribute(&mut attributes, key, value))
            .map_err(|reason| FleetError::Options(format!("--attribute: {reason}")))?;
    }
    let entries = (0..generated.count)
        .map(|index| {
            let entry = Entry {
                id: pattern.expand(generated.first + index),
                attributes: attributes.clone(),
                ..Entry::default()
            };
            (index + 1, entry)
        })
        .collect();
    // Errors of a generated fleet name the device number, not a line.
    assemble(entries, fleet).map_err(|error| match error {
        FleetError::Line { line, reason } => {
            FleetError::Options(format!("device {}: {reason}", generated.first + line - 1))
        }
        other => other,
    })
}

/// One multi-document YAML of the manifests.
pub fn to_yaml(devices: &[Device]) -> Result<String, FleetError> {
    let mut out = String::new();
    for device in devices {
        let document = serde_yaml::to_string(device)
            .map_err(|e| FleetError::Options(format!("cannot write YAML: {e}")))?;
        out.push_str("---\n");
        out.push_str(&document);
    }
    Ok(out)
}

fn line_of(record: &csv::StringRecord) -> u64 {
    record.position().map_or(0, csv::Position::line)
}

/// A CSV reader's error, by line when it has one; never the text of the line.
fn csv_error(error: csv::Error) -> FleetError {
    match error.kind() {
        csv::ErrorKind::UnequalLengths {
            pos: Some(pos),
            expected_len,
            len,
        } => FleetError::Line {
            line: pos.line(),
            reason: format!(
                "{len} fields, but the header has {expected_len} (a stray comma or quote?)"
            ),
        },
        csv::ErrorKind::Utf8 { pos: Some(pos), .. } => FleetError::Line {
            line: pos.line(),
            reason: "not valid UTF-8".into(),
        },
        _ => FleetError::Options(format!("cannot read the CSV: {error}")),
    }
}

/// Where the known columns are; every other column is an attribute.
struct Columns {
    id: usize,
    gateways: Option<usize>,
    disabled: Option<usize>,
    attributes: Vec<(usize, String)>,
}

impl Columns {
    fn of_header(header: &csv::StringRecord) -> Result<Self, String> {
        let mut seen = HashMap::new();
        let (mut id, mut gateways, mut disabled) = (None, None, None);
        let mut attributes = Vec::new();
        for (index, name) in header.iter().enumerate() {
            if name.is_empty() {
                return Err(format!("column {} has no name", index + 1));
            }
            if seen.insert(name, index).is_some() {
                return Err(format!("column {name:?} appears twice"));
            }
            match name {
                COLUMN_ID => id = Some(index),
                COLUMN_GATEWAYS => gateways = Some(index),
                COLUMN_DISABLED => disabled = Some(index),
                key => {
                    check_attribute_key(key).map_err(|why| format!("column {key:?}: {why}"))?;
                    attributes.push((index, key.to_owned()));
                }
            }
        }
        let id = id.ok_or("the header has no `id` column")?;
        Ok(Columns {
            id,
            gateways,
            disabled,
            attributes,
        })
    }

    fn entry(&self, record: &csv::StringRecord) -> Result<Entry, String> {
        let cell = |index: usize| record.get(index).unwrap_or_default();
        let id = cell(self.id);
        if id.is_empty() {
            return Err("empty id".into());
        }
        let gateways = self
            .gateways
            .map(|index| {
                cell(index)
                    .split(';')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let disabled = match self.disabled.map(cell).unwrap_or_default() {
            "" => false,
            text if text.eq_ignore_ascii_case("true") => true,
            text if text.eq_ignore_ascii_case("false") => false,
            other => return Err(format!("disabled is {other:?}: write true or false")),
        };
        let mut attributes = BTreeMap::new();
        for (index, key) in &self.attributes {
            let value = cell(*index);
            if value.is_empty() {
                continue;
            }
            check_attribute_value(value).map_err(|why| format!("attribute {key:?}: {why}"))?;
            insert_attribute(&mut attributes, key, value)?;
        }
        Ok(Entry {
            id: id.to_owned(),
            gateways,
            disabled,
            attributes,
        })
    }
}

fn check_fleet(fleet: &Fleet) -> Result<(), FleetError> {
    if let Some(namespace) = &fleet.namespace {
        let label = namespace.len() <= 63 && !namespace.contains('.');
        if !label || !is_resource_name(namespace) {
            return Err(FleetError::Options(format!(
                "--namespace {namespace:?} is not a namespace name (DNS-1123 label)"
            )));
        }
    }
    for gateway in &fleet.gateways {
        check_gateway(gateway).map_err(|why| FleetError::Options(format!("--gateway {why}")))?;
    }
    Ok(())
}

fn check_gateway(name: &str) -> Result<(), String> {
    if is_resource_name(name) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a Gateway name (DNS-1123)"))
    }
}

fn check_attribute(key: &str, value: &str) -> Result<(), String> {
    check_attribute_key(key).map_err(|why| format!("key {key:?}: {why}"))?;
    check_attribute_value(value).map_err(|why| format!("attribute {key:?}: {why}"))
}

fn check_attribute_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty attribute key".into());
    }
    if key.chars().count() > MAX_ATTRIBUTE_KEY_LEN {
        return Err(format!(
            "attribute keys are at most {MAX_ATTRIBUTE_KEY_LEN} characters"
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("attribute keys hold no control characters".into());
    }
    Ok(())
}

fn check_attribute_value(value: &str) -> Result<(), String> {
    if value.chars().count() > MAX_ATTRIBUTE_VALUE_LEN {
        return Err(format!(
            "values are at most {MAX_ATTRIBUTE_VALUE_LEN} characters"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(
            "the value holds a line break or control character (an unclosed quote?)".into(),
        );
    }
    Ok(())
}

fn insert_attribute(
    attributes: &mut BTreeMap<String, String>,
    key: &str,
    value: &str,
) -> Result<(), String> {
    if attributes.len() >= MAX_ATTRIBUTES && !attributes.contains_key(key) {
        return Err(format!("more than {MAX_ATTRIBUTES} attributes"));
    }
    attributes.insert(key.to_owned(), value.to_owned());
    Ok(())
}

/// Devices from numbered entries: ids valid, ids and resource names unique.
fn assemble(entries: Vec<(u64, Entry)>, fleet: &Fleet) -> Result<Vec<Device>, FleetError> {
    let mut ids: HashMap<String, u64> = HashMap::new();
    let mut names: HashMap<String, u64> = HashMap::new();
    let mut devices = Vec::with_capacity(entries.len());
    for (line, entry) in entries {
        let at = |reason: String| FleetError::Line { line, reason };
        if let Some(first) = ids.insert(entry.id.clone(), line) {
            return Err(at(format!("device {:?} already on line {first}", entry.id)));
        }
        let device = device_of(entry, fleet).map_err(at)?;
        let name = device.metadata.name.clone().unwrap_or_default();
        if let Some(first) = names.insert(name.clone(), line) {
            return Err(at(format!(
                "its resource name {name:?} is already the one of line {first}; give one of them another id"
            )));
        }
        devices.push(device);
    }
    Ok(devices)
}

fn device_of(entry: Entry, fleet: &Fleet) -> Result<Device, String> {
    if !names::is_valid_device_id(&entry.id) {
        return Err(format!(
            "device id {:?}: only letters, digits, '-', '_', '.' and ':'",
            entry.id
        ));
    }
    let (name, device_id) = name_for(&entry.id)
        .ok_or_else(|| format!("device id {:?} gives no resource name", entry.id))?;
    let mut gateways = fleet.gateways.clone();
    for gateway in entry.gateways {
        check_gateway(&gateway)?;
        if !gateways.contains(&gateway) {
            gateways.push(gateway);
        }
    }
    if gateways.is_empty() {
        return Err("no Gateway: pass --gateway or fill the `gateways` column".into());
    }
    let credentials = match fleet.credential {
        CredentialKind::Generated => DeviceCredentials {
            generated: Some(defaults::<GeneratedCredential>()?),
            ..DeviceCredentials::default()
        },
        CredentialKind::Certificate => DeviceCredentials {
            certificate: Some(defaults::<CertificateCredential>()?),
            ..DeviceCredentials::default()
        },
    };
    let spec = DeviceSpec {
        gateways,
        device_id,
        credentials,
        disabled: entry.disabled,
        publish_topics: Vec::new(),
        attributes: entry.attributes,
    };
    let mut device = Device::new(&name, spec);
    device.metadata.namespace = fleet.namespace.clone();
    Ok(device)
}

/// A credential with the CRD's defaults (the ones the API server fills in for `{}`).
fn defaults<T: serde::de::DeserializeOwned>() -> Result<T, String> {
    serde_json::from_value(serde_json::json!({})).map_err(|e| format!("credential defaults: {e}"))
}
