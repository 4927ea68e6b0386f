//! The device table of one Gateway (pure): every Device of its namespace that names it,
//! with the credentials the gateway can check — generated secrets' verifiers (from the
//! Device's status, computed with the namespace's current key), certificate, argon2 hash
//! (from the referenced Secret), JWT key — whether it is disabled, its extra topics and its
//! attributes.

use crate::build::{gzip_json, hash_parts, BuildError, SecretData};
use crate::crd::device::Device;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use std::collections::BTreeMap;
use tributary_contract::device_table::{Credential, DeviceEntry, DeviceTable, GeneratedSecret};

/// The Devices of the namespace that name `gateway`, each device id once (the oldest
/// resource wins a duplicate id; the others are returned apart).
pub fn devices_of<'a>(
    gateway: &str,
    devices: impl IntoIterator<Item = &'a Device>,
) -> (Vec<&'a Device>, Vec<&'a Device>) {
    let mut named: Vec<&Device> = devices
        .into_iter()
        .filter(|d| d.spec.gateways.iter().any(|g| g == gateway))
        .collect();
    named.sort_by(|a, b| {
        (a.device_id(), created(a), a.name_any()).cmp(&(b.device_id(), created(b), b.name_any()))
    });
    let mut kept: Vec<&Device> = Vec::with_capacity(named.len());
    let mut duplicates = Vec::new();
    for device in named {
        match kept.last() {
            Some(last) if last.device_id() == device.device_id() => duplicates.push(device),
            _ => kept.push(device),
        }
    }
    (kept, duplicates)
}

fn created(device: &Device) -> String {
    device
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default()
}

/// The table entries (`issuedAtMs` left 0) of `devices`: `key_id` names the namespace key
/// the gateways hold (verifiers made with another key are left out until the Device is
/// reconciled again), `hashes` the data of the Secrets `passwordHash` references.
pub fn build_table(
    devices: &[&Device],
    key_id: &str,
    hashes: &SecretData,
    now: Timestamp,
) -> DeviceTable {
    DeviceTable {
        issued_at_ms: 0,
        devices: devices
            .iter()
            .map(|device| entry(device, key_id, hashes, now))
            .collect(),
    }
}

fn entry(device: &Device, key_id: &str, hashes: &SecretData, now: Timestamp) -> DeviceEntry {
    let spec = &device.spec;
    let status = device.status.clone().unwrap_or_default();
    let mut credentials = Vec::new();
    if let Some(generated) = status
        .generated
        .as_ref()
        .filter(|g| spec.credentials.generated.is_some() && g.key_id == key_id)
    {
        credentials.push(Credential::Generated(GeneratedSecret {
            verifier: generated.verifier.clone(),
            not_after_ms: None,
        }));
        let until = generated
            .previous_valid_until
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok());
        if let (Some(verifier), Some(until)) = (&generated.previous_verifier, until) {
            if until > now {
                credentials.push(Credential::Generated(GeneratedSecret {
                    verifier: verifier.clone(),
                    not_after_ms: u64::try_from(until.as_millisecond()).ok(),
                }));
            }
        }
    }
    if spec.credentials.certificate.is_some() && status.certificate_secret.is_some() {
        credentials.push(Credential::Certificate);
    }
    if let Some(reference) = &spec.credentials.password_hash {
        let hash = hashes
            .get(&reference.name)
            .and_then(|data| data.get(&reference.key))
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .map(str::trim)
            .filter(|hash| hash.starts_with("$argon2"));
        if let Some(hash) = hash {
            credentials.push(Credential::PasswordHash {
                hash: hash.to_owned(),
            });
        }
    }
    if let Some(jwt) = &spec.credentials.jwt {
        credentials.push(Credential::Jwt {
            public_key: jwt.public_key.clone(),
        });
    }
    DeviceEntry {
        id: device.device_id(),
        disabled: spec.disabled,
        credentials,
        publish_topics: spec.publish_topics.clone(),
        attributes: spec.attributes.clone(),
    }
}

/// Hex hash of a table's content (not its issue time): the table is re-issued only when
/// this changes, so nothing is written at steady state.
pub fn content_hash(table: &DeviceTable) -> Result<String, BuildError> {
    let json = serde_json::to_vec(&table.devices)
        .map_err(|e| BuildError::Invalid(format!("rendering the device table: {e}")))?;
    Ok(hash_parts([("devices", json.as_slice())]))
}

/// The gzip-compressed JSON the gateways read.
pub fn compress(table: &DeviceTable) -> Result<Vec<u8>, BuildError> {
    gzip_json("device table", table)
}

/// The Secrets (`name` → keys) that the Devices' `passwordHash` references name.
pub fn hash_secrets(devices: &[&Device]) -> BTreeMap<String, Vec<String>> {
    let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for reference in devices
        .iter()
        .filter_map(|d| d.spec.credentials.password_hash.as_ref())
    {
        names
            .entry(reference.name.clone())
            .or_default()
            .push(reference.key.clone());
    }
    names
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
