//! The device registry: the table of devices the operator renders for this Gateway
//! (`tributary_contract::device_table`), its keys, and what its devices did here.
//!
//! The table arrives from the mounted file ([`watch`], re-read when it changes) or pushed
//! to `PUT /v1/devices/table` ([`endpoints`]); either way a table replaces the current one
//! only when it was issued at the same time or later. The current table sits behind a
//! read lock around an `Arc`: a login or a message clones the `Arc` and reads without
//! holding the lock. A table that removes or disables a device revokes its live MQTT
//! sessions; nobody else's.

pub mod activity;
pub mod endpoints;
pub mod table;
pub mod verify;
pub mod watch;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tributary_contract::device_table::{DeviceReport, RegistryFiles, MAX_TABLE_JSON_BYTES};

use self::activity::{Activity, Event};
use self::table::{Device, Table, TableError};
use crate::metrics::{Metrics, TableSource};
use crate::mqtt::registry::Sessions;

/// Why the registry could not be loaded at start.
#[derive(Debug, thiserror::Error)]
pub enum RegistryLoadError {
    /// The verifier key or sync token file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The verifier key or sync token file is empty.
    #[error("{0} is empty")]
    Empty(String),
    /// The device CA file holds no usable certificate.
    #[error("{path}: {reason}")]
    DeviceCa {
        /// The file.
        path: String,
        /// What is wrong (never the contents).
        reason: String,
    },
}

/// Why a table was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The table is unusable.
    #[error(transparent)]
    Invalid(#[from] TableError),
    /// Issued before the current table.
    #[error("table issued at {offered} ms, before the current one ({current} ms)")]
    Stale {
        /// The offered table's `issuedAtMs`.
        offered: u64,
        /// The current table's.
        current: u64,
    },
}

/// The registry of one gateway process.
pub struct Registry {
    current: RwLock<Arc<Table>>,
    /// Serializes applies, so the issued-at comparison and the swap are one step.
    applying: Mutex<()>,
    verifier_key: Vec<u8>,
    sync_token: Vec<u8>,
    /// The raw subject of the device CA: a certificate it issued names its issuer so.
    device_ca_subject: Option<Vec<u8>>,
    activity: Activity,
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
}

impl Registry {
    /// Reads the keys and the device CA (errors stop the start), then the table file: a
    /// missing or invalid table is logged and the registry starts empty (the operator
    /// pushes one).
    pub fn load(
        files: &RegistryFiles,
        sessions: Arc<Sessions>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RegistryLoadError> {
        let verifier_key = read_secret(&files.verifier_key_file)?;
        let sync_token = read_secret(&files.sync_token_file)?;
        let device_ca_subject = files
            .device_ca_file
            .as_deref()
            .map(ca_subject)
            .transpose()?;
        let registry = Self {
            current: RwLock::new(Arc::new(Table::default())),
            applying: Mutex::new(()),
            verifier_key,
            sync_token,
            device_ca_subject,
            activity: Activity::default(),
            sessions,
            metrics,
        };
        registry.load_file(&files.table_file);
        Ok(registry)
    }

    /// Reads, decodes and applies the table file; failures are logged and counted.
    pub fn load_file(&self, path: &Path) {
        let outcome = std::fs::read(path)
            .map_err(|error| error.to_string())
            .and_then(|gzip| {
                table::decode_table(&gzip, MAX_TABLE_JSON_BYTES).map_err(|e| e.to_string())
            });
        match outcome {
            Ok(table) => {
                if let Err(error) = self.apply(table, TableSource::File) {
                    tracing::info!(path = %path.display(), %error, "device table file not applied");
                }
            }
            Err(error) => {
                self.metrics.table_load(TableSource::File, "invalid");
                tracing::error!(path = %path.display(), %error, "device table file unusable");
            }
        }
    }

    /// Replaces the current table with `table` unless it was issued earlier; revokes the
    /// live sessions of devices it removes or disables.
    pub fn apply(&self, table: Table, source: TableSource) -> Result<(), ApplyError> {
        let _applying = self.applying.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.current();
        if table.issued_at_ms < current.issued_at_ms {
            self.metrics.table_load(source, "stale");
            return Err(ApplyError::Stale {
                offered: table.issued_at_ms,
                current: current.issued_at_ms,
            });
        }
        let revoked: Vec<String> = current.revoked_by(&table).cloned().collect();
        let table = Arc::new(table);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&table);
        self.activity.retain_table(&table);
        self.metrics
            .table_applied(source, table.len(), table.issued_at_ms);
        let closed: usize = revoked.iter().map(|id| self.sessions.revoke(id)).sum();
        tracing::info!(
            source = source.as_str(),
            devices = table.len(),
            issued_at_ms = table.issued_at_ms,
            revoked = revoked.len(),
            sessions_closed = closed,
            "device table applied"
        );
        Ok(())
    }

    /// The table in use.
    pub fn current(&self) -> Arc<Table> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether a device of `before` (the table a login was checked against) has since been
    /// removed or disabled: a session registered after the new table's revocations ran
    /// must not stay.
    pub fn revoked_since(&self, before: &Table, device: &str) -> bool {
        before.allows(device) && !self.current().allows(device)
    }

    /// The table's entry for `id`.
    pub fn device(&self, id: &str) -> Option<Arc<Device>> {
        self.current().get(id).cloned()
    }

    /// The key of generated secrets' HMAC.
    pub fn verifier_key(&self) -> &[u8] {
        &self.verifier_key
    }

    /// Whether `presented` is the sync token (constant time).
    pub fn token_matches(&self, presented: &[u8]) -> bool {
        verify::token_eq(presented, &self.sync_token)
    }

    /// Whether a certificate naming `issuer` (raw DER subject) was issued by the device CA.
    pub fn issued_by_device_ca(&self, issuer: &[u8]) -> bool {
        self.device_ca_subject
            .as_deref()
            .is_some_and(|subject| subject == issuer)
    }

    /// Records an event of `device` when it is a table device.
    pub fn record(&self, device: &str, event: Event) {
        if self.current().contains(device) {
            self.activity.record(device, event, now_ms());
        }
    }

    /// What this pod reports to the operator.
    pub fn report(&self) -> DeviceReport {
        let table = self.current();
        let devices = self.activity.report(&table, |id| {
            u32::try_from(self.sessions.count(id)).unwrap_or(u32::MAX)
        });
        DeviceReport {
            table_issued_at_ms: table.issued_at_ms,
            devices,
        }
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0)
}

/// A key or token file's bytes, without a trailing newline; empty is refused.
fn read_secret(path: &Path) -> Result<Vec<u8>, RegistryLoadError> {
    let mut bytes = std::fs::read(path).map_err(|source| RegistryLoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(RegistryLoadError::Empty(path.display().to_string()));
    }
    Ok(bytes)
}

/// The raw subject of the first certificate in a PEM file.
fn ca_subject(path: &Path) -> Result<Vec<u8>, RegistryLoadError> {
    use rustls_pki_types::pem::PemObject;
    let bad = |reason: String| RegistryLoadError::DeviceCa {
        path: path.display().to_string(),
        reason,
    };
    let der = rustls_pki_types::CertificateDer::from_pem_file(path)
        .map_err(|error| bad(error.to_string()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|error| bad(error.to_string()))?;
    Ok(parsed.subject().as_raw().to_vec())
}
