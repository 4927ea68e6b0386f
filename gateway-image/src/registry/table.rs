//! The device table as the gateway uses it: decoded (gzip, bounded), checked once, and
//! indexed by device id, with every credential parsed into what a login needs. Pure: no
//! I/O, no clock.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::Arc;

use base64::Engine;
use tributary_contract::device_table::{Credential, DeviceEntry, DeviceTable};

use crate::auth::{parse_jwt_key, JwtKey, StoredHash};
use crate::topics::{is_safe_identity, validate_topic_filter};

/// The costliest argon2 hash a table may carry (blocks of 1 KiB): 256 MiB, so that a
/// table cannot make every password check slot allocate more than that.
pub const MAX_TABLE_HASH_BLOCKS: usize = 256 * 1024;

/// Why a table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// Not valid gzip.
    #[error("not gzip: {0}")]
    Gzip(String),
    /// Decompresses to more than the bound.
    #[error("decompressed table over {0} bytes")]
    TooLarge(usize),
    /// Not a valid table document.
    #[error("invalid table JSON: {0}")]
    Json(String),
    /// A device entry is unusable.
    #[error("device {id:?}: {reason}")]
    Device {
        /// The device id as written.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Decompresses `gzip` into at most `limit` bytes, refusing anything larger without
/// inflating past the limit.
pub fn gunzip_bounded(gzip: &[u8], limit: usize) -> Result<Vec<u8>, TableError> {
    let decoder = flate2::read::GzDecoder::new(gzip);
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    decoder
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|error| TableError::Gzip(error.to_string()))?;
    if out.len() > limit {
        return Err(TableError::TooLarge(limit));
    }
    Ok(out)
}

/// A generated secret's verifier: the HMAC-SHA256 output the password must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    /// HMAC-SHA256(verifier key, secret).
    pub mac: [u8; 32],
    /// Refused after this (Unix milliseconds).
    pub not_after_ms: Option<u64>,
}

impl Verifier {
    /// Whether it is still accepted at `now_ms`.
    pub fn valid_at(&self, now_ms: u64) -> bool {
        self.not_after_ms
            .is_none_or(|not_after| now_ms <= not_after)
    }
}

/// One device of the table, ready for logins and messages.
pub struct Device {
    /// Refused whatever it presents.
    pub disabled: bool,
    /// Generated secrets.
    pub verifiers: Vec<Verifier>,
    /// argon2 hashes of passwords the user chose.
    pub(crate) password_hashes: Vec<StoredHash>,
    /// Keys that sign its tokens.
    pub(crate) jwt_keys: Vec<JwtKey>,
    /// Whether a client certificate with its id as CN authenticates it.
    pub certificate: bool,
    /// Topic templates it may publish to besides the Gateway's.
    pub publish_topics: Vec<String>,
    /// Copied into its envelopes.
    pub attributes: BTreeMap<String, String>,
}

/// The table in use: devices by id.
#[derive(Default)]
pub struct Table {
    /// When the operator rendered it.
    pub issued_at_ms: u64,
    devices: HashMap<String, Arc<Device>>,
}

impl Table {
    /// The device named `id`, if the table has it.
    pub fn get(&self, id: &str) -> Option<&Arc<Device>> {
        self.devices.get(id)
    }

    /// Whether the table has `id`.
    pub fn contains(&self, id: &str) -> bool {
        self.devices.contains_key(id)
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether the table has no device.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The ids of the devices.
    pub fn ids(&self) -> impl Iterator<Item = &String> {
        self.devices.keys()
    }

    /// The blocks of the costliest password hash in the table (0 without any).
    pub fn max_hash_blocks(&self) -> usize {
        self.devices
            .values()
            .flat_map(|device| device.password_hashes.iter().map(StoredHash::blocks))
            .max()
            .unwrap_or(0)
    }

    /// Whether `id` is a table device that is not disabled.
    pub fn allows(&self, id: &str) -> bool {
        self.get(id).is_some_and(|device| !device.disabled)
    }

    /// Devices of `self` whose live sessions must close under `next`: removed or disabled.
    pub fn revoked_by<'a>(&'a self, next: &'a Table) -> impl Iterator<Item = &'a String> {
        self.devices
            .iter()
            .filter_map(move |(id, device)| (!device.disabled && !next.allows(id)).then_some(id))
    }
}

/// Parses and checks a decompressed table document.
pub fn parse_table(json: &[u8]) -> Result<Table, TableError> {
    let table: DeviceTable =
        serde_json::from_slice(json).map_err(|error| TableError::Json(error.to_string()))?;
    index(table)
}

/// Decompresses (at most `limit` bytes) and parses a gzip table.
pub fn decode_table(gzip: &[u8], limit: usize) -> Result<Table, TableError> {
    parse_table(&gunzip_bounded(gzip, limit)?)
}

fn index(table: DeviceTable) -> Result<Table, TableError> {
    let mut devices = HashMap::with_capacity(table.devices.len());
    for entry in table.devices {
        let id = entry.id.clone();
        let device = device(entry)?;
        if devices.insert(id.clone(), Arc::new(device)).is_some() {
            return Err(TableError::Device {
                id,
                reason: "listed twice",
            });
        }
    }
    Ok(Table {
        issued_at_ms: table.issued_at_ms,
        devices,
    })
}

fn device(entry: DeviceEntry) -> Result<Device, TableError> {
    let bad = |reason| TableError::Device {
        id: entry.id.clone(),
        reason,
    };
    if !is_safe_identity(&entry.id) {
        return Err(bad("not a usable device id"));
    }
    for template in &entry.publish_topics {
        validate_topic_filter(&template.replace("{device}", &entry.id))
            .map_err(|_| bad("a publish topic is not a valid topic filter"))?;
    }
    let mut device = Device {
        disabled: entry.disabled,
        verifiers: Vec::new(),
        password_hashes: Vec::new(),
        jwt_keys: Vec::new(),
        certificate: false,
        publish_topics: entry.publish_topics.clone(),
        attributes: entry.attributes.clone(),
    };
    for credential in &entry.credentials {
        match credential {
            Credential::Generated(secret) => device.verifiers.push(Verifier {
                mac: decode_verifier(&secret.verifier).ok_or_else(|| bad("invalid verifier"))?,
                not_after_ms: secret.not_after_ms,
            }),
            Credential::PasswordHash { hash } => {
                let hash = StoredHash::parse(hash).ok_or_else(|| bad("invalid argon2 hash"))?;
                if hash.blocks() > MAX_TABLE_HASH_BLOCKS {
                    return Err(bad("argon2 memory cost over 256 MiB"));
                }
                device.password_hashes.push(hash);
            }
            Credential::Jwt { public_key } => device
                .jwt_keys
                .push(parse_jwt_key(public_key).ok_or_else(|| bad("invalid JWT public key"))?),
            Credential::Certificate => device.certificate = true,
        }
    }
    Ok(device)
}

/// base64 of a 32-byte HMAC-SHA256 output.
fn decode_verifier(text: &str) -> Option<[u8; 32]> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
