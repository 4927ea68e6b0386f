//! Metrics of the device registry and of logins by credential type.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// Where a device table came from.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum TableSource {
    /// The mounted table file.
    File,
    /// `PUT /v1/devices/table`.
    Push,
}

impl TableSource {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TableSource::File => "file",
            TableSource::Push => "push",
        }
    }
}

/// How a device authenticated.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum LoginKind {
    /// A generated secret of the table (HMAC).
    Generated,
    /// An argon2 hash of the table.
    PasswordHash,
    /// A token signed with a table device's key.
    Jwt,
    /// A client certificate of a table device.
    Certificate,
    /// The legacy password file (`auth.passwordFile`).
    PasswordFile,
    /// A token signed with a Gateway-level key (`auth.jwt`).
    GatewayJwt,
    /// A client certificate of the Gateway's own CA (`auth.clientCertificates`).
    GatewayCertificate,
    /// No credentials (`auth.allowAnonymous`).
    Anonymous,
}

impl LoginKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LoginKind::Generated => "generated",
            LoginKind::PasswordHash => "password_hash",
            LoginKind::Jwt => "jwt",
            LoginKind::Certificate => "certificate",
            LoginKind::PasswordFile => "password_file",
            LoginKind::GatewayJwt => "gateway_jwt",
            LoginKind::GatewayCertificate => "gateway_certificate",
            LoginKind::Anonymous => "anonymous",
        }
    }
}

/// Labels: table source and result.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLoadLabels {
    /// `file` or `push`.
    pub source: &'static str,
    /// `applied`, `stale` or `invalid`.
    pub result: &'static str,
}

/// Labels: credential type.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    /// See [`LoginKind::as_str`].
    pub credential: &'static str,
}

/// The registry's metrics.
#[derive(Clone, Default)]
pub struct DeviceMetrics {
    /// Devices in the current table.
    pub table_devices: Gauge,
    /// The current table's `issuedAtMs`, in seconds.
    pub table_issued_at: Gauge<f64, AtomicU64>,
    /// Tables offered, by source and result.
    pub table_loads: Family<TableLoadLabels, Counter>,
    /// Successful logins by credential type.
    pub logins: Family<LoginLabels, Counter>,
}

impl DeviceMetrics {
    /// Registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "device_table_devices",
            "Devices in the device table in use",
            metrics.table_devices.clone(),
        );
        registry.register_with_unit(
            "device_table_issued_at",
            "When the device table in use was issued (Unix time)",
            Unit::Seconds,
            metrics.table_issued_at.clone(),
        );
        registry.register(
            "device_table_loads",
            "Device tables offered, by source and result",
            metrics.table_loads.clone(),
        );
        registry.register(
            "logins",
            "Successful device logins, by credential type",
            metrics.logins.clone(),
        );
        metrics
    }
}
