//! Logins of devices in the device table: generated secrets (HMAC, microseconds),
//! argon2 hashes (the password check slots), per-device JWT keys and client certificates.
//! A table device takes its credentials from the table only; a disabled one is refused
//! whatever it presents. Every refusal is the same `Denied`.
//!
//! Timing: a table device's refusal costs what its credential kinds cost (the HMAC always,
//! then its argon2 hashes). An id the table does not have goes the legacy way: against the
//! password file, or the dummy argon2 hash when the file lacks it; without a password file,
//! it costs one HMAC, like a generated-secret device. (A table device with only an argon2
//! hash is then slower to refuse than an unknown id: documented in the README.)

use std::sync::Arc;

use jsonwebtoken::Algorithm;

use super::{outlives, AuthError, Authenticator};
use crate::metrics::LoginKind;
use crate::registry::now_ms;
use crate::registry::table::Device;
use crate::registry::verify::{generated_matches, mac};
use crate::tls::PeerCertificate;
use crate::topics::is_safe_identity;

impl Authenticator {
    /// A client certificate verified by the TLS handshake: a table device needs a
    /// `certificate` credential and not to be disabled; a certificate of the device CA
    /// must name a table device; others (the Gateway's own CA) are accepted as before.
    pub(super) fn check_certificate(
        &self,
        peer: PeerCertificate,
    ) -> Result<(String, LoginKind), AuthError> {
        if !is_safe_identity(&peer.device) {
            return Err(AuthError::Denied);
        }
        let Some(registry) = &self.registry else {
            return Ok((peer.device, LoginKind::GatewayCertificate));
        };
        match registry.device(&peer.device) {
            Some(device) if device.certificate && !device.disabled => {
                Ok((peer.device, LoginKind::Certificate))
            }
            Some(_) => Err(AuthError::Denied),
            None if registry.issued_by_device_ca(&peer.issuer) => Err(AuthError::Denied),
            None => Ok((peer.device, LoginKind::GatewayCertificate)),
        }
    }

    /// A token whose device claim names a table device, checked with that device's keys
    /// only; `None` when the claim names no table device (the Gateway's keys decide).
    pub(super) fn check_table_token(
        &self,
        token: &str,
    ) -> Option<Result<(String, LoginKind), AuthError>> {
        let registry = self.registry.as_ref()?;
        let claims: serde_json::Value =
            jsonwebtoken::dangerous::insecure_decode_claims(token).ok()?;
        let claimed = claims.get(&self.device_claim)?.as_str()?;
        let device = registry.device(claimed)?;
        if device.disabled {
            return Some(Err(AuthError::Denied));
        }
        let verified = device.jwt_keys.iter().find_map(|key| {
            let validation = match key.algorithm {
                Algorithm::ES256 => &self.table_jwt_validation[1],
                _ => &self.table_jwt_validation[0],
            };
            jsonwebtoken::decode::<serde_json::Value>(token, &key.key, validation).ok()
        });
        let Some(data) = verified else {
            return Some(Err(AuthError::Denied));
        };
        let now = jsonwebtoken::get_current_timestamp();
        let same_device =
            data.claims.get(&self.device_claim).and_then(|v| v.as_str()) == Some(claimed);
        if !same_device || outlives(&data.claims, self.max_token_lifetime, now) {
            return Some(Err(AuthError::Denied));
        }
        Some(Ok((claimed.to_owned(), LoginKind::Jwt)))
    }

    /// A password for a table device: its generated secrets first (an HMAC), then its
    /// argon2 hashes in the password check slots.
    pub(super) async fn check_table_password(
        &self,
        device: String,
        entry: &Arc<Device>,
        password: Vec<u8>,
        deadline: tokio::time::Instant,
    ) -> Result<(String, LoginKind), AuthError> {
        let key = self
            .registry
            .as_ref()
            .map(|registry| registry.verifier_key())
            .unwrap_or_default();
        let generated = generated_matches(key, &password, &entry.verifiers, now_ms());
        if entry.disabled {
            return Err(AuthError::Denied);
        }
        if generated {
            return Ok((device, LoginKind::Generated));
        }
        for hash in &entry.password_hashes {
            match self
                .hashing
                .check(hash.clone(), password.clone(), deadline)
                .await
            {
                Ok(true) => return Ok((device, LoginKind::PasswordHash)),
                Ok(false) => {}
                Err(super::hashing::Busy) => return Err(AuthError::Busy),
            }
        }
        Err(AuthError::Denied)
    }

    /// What refusing an unknown id costs without a password file: one HMAC, as for a
    /// device with a generated secret.
    pub(super) fn check_unknown_generated(&self, password: &[u8]) {
        if let Some(registry) = &self.registry {
            std::hint::black_box(mac(registry.verifier_key(), password));
        }
    }
}
