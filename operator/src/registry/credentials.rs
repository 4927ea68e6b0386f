//! The credentials the operator issues to a Device, as pure plans over what exists: a
//! generated secret (with rotation and a grace period for the previous one) and a client
//! certificate from the namespace's device CA (renewed after two thirds of its validity).

use super::keys::NamespaceKeys;
use crate::build::BuildError;
use crate::crd::device::{CertificateCredential, GeneratedCredential};
use k8s_openapi::jiff::Timestamp;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
use std::collections::BTreeMap;

/// Secret key of the device id in a credentials Secret.
pub const USERNAME_KEY: &str = "username";
/// Secret key of the current generated secret.
pub const PASSWORD_KEY: &str = "password";
/// Secret key of the previous generated secret during a rotation's grace period.
pub const PREVIOUS_PASSWORD_KEY: &str = "previous-password";
/// Annotation: the `rotation` the current secret was made for.
pub const ROTATION_ANNOTATION: &str = "tributary.dev/rotation";
/// Annotation: end of the previous secret's grace period (RFC 3339).
pub const PREVIOUS_VALID_UNTIL_ANNOTATION: &str = "tributary.dev/previous-valid-until";
/// Annotation: end of an issued certificate's validity (RFC 3339).
pub const NOT_AFTER_ANNOTATION: &str = "tributary.dev/not-after";
/// Annotation: start of an issued certificate's validity (RFC 3339).
pub const NOT_BEFORE_ANNOTATION: &str = "tributary.dev/not-before";
/// Annotation: the device CA (key id) that issued a certificate.
pub const ISSUER_ANNOTATION: &str = "tributary.dev/issuer";
/// Annotation: the common name an issued certificate carries.
pub const SUBJECT_ANNOTATION: &str = "tributary.dev/subject";

/// A generated secret as kept in its Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    /// The `rotation` it was made for.
    pub rotation: i64,
    /// The current secret.
    pub password: String,
    /// The previous secret and the end of its grace period (Unix seconds).
    pub previous: Option<(String, i64)>,
}

impl Generated {
    /// Reads it back from a Secret's data and annotations; `None` when incomplete.
    pub fn from_secret(
        data: &BTreeMap<String, Vec<u8>>,
        annotations: &BTreeMap<String, String>,
    ) -> Option<Self> {
        let text = |key: &str| String::from_utf8(data.get(key)?.clone()).ok();
        let password = text(PASSWORD_KEY).filter(|p| !p.is_empty())?;
        let rotation = annotations.get(ROTATION_ANNOTATION)?.parse().ok()?;
        let previous = match (
            text(PREVIOUS_PASSWORD_KEY),
            annotations
                .get(PREVIOUS_VALID_UNTIL_ANNOTATION)
                .and_then(|t| t.parse::<Timestamp>().ok()),
        ) {
            (Some(password), Some(until)) => Some((password, until.as_second())),
            _ => None,
        };
        Some(Generated {
            rotation,
            password,
            previous,
        })
    }

    /// The Secret data (`username`, `password`, maybe `previous-password`) and annotations.
    pub fn to_secret(
        &self,
        device_id: &str,
    ) -> (BTreeMap<String, Vec<u8>>, BTreeMap<String, String>) {
        let mut data = BTreeMap::from([
            (USERNAME_KEY.to_owned(), device_id.as_bytes().to_vec()),
            (PASSWORD_KEY.to_owned(), self.password.as_bytes().to_vec()),
        ]);
        let mut annotations =
            BTreeMap::from([(ROTATION_ANNOTATION.to_owned(), self.rotation.to_string())]);
        if let Some((previous, until)) = &self.previous {
            data.insert(
                PREVIOUS_PASSWORD_KEY.to_owned(),
                previous.as_bytes().to_vec(),
            );
            annotations.insert(PREVIOUS_VALID_UNTIL_ANNOTATION.to_owned(), rfc3339(*until));
        }
        (data, annotations)
    }
}

/// What the generated secret should be now: the existing one, a new one (none yet, or the
/// spec asks for another rotation: the old one stays valid for the grace period), or the
/// existing one without its expired previous secret. `Some` when it changed.
pub fn plan_generated(
    existing: Option<&Generated>,
    spec: &GeneratedCredential,
    now: i64,
    fresh: impl FnOnce() -> Result<String, BuildError>,
) -> Result<Option<Generated>, BuildError> {
    let Some(existing) = existing else {
        return Ok(Some(Generated {
            rotation: spec.rotation,
            password: fresh()?,
            previous: None,
        }));
    };
    if existing.rotation != spec.rotation {
        let grace = spec.grace_period_seconds.max(0);
        return Ok(Some(Generated {
            rotation: spec.rotation,
            password: fresh()?,
            previous: (grace > 0).then(|| (existing.password.clone(), now.saturating_add(grace))),
        }));
    }
    match &existing.previous {
        Some((_, until)) if *until <= now => Ok(Some(Generated {
            previous: None,
            ..existing.clone()
        })),
        _ => Ok(None),
    }
}

/// An issued certificate as its Secret's annotations describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Key id of the CA that issued it.
    pub issuer: String,
    /// Its common name.
    pub subject: String,
}

impl Issued {
    /// Reads it back from a certificate Secret's annotations.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Option<Self> {
        let time = |key: &str| {
            annotations
                .get(key)?
                .parse::<Timestamp>()
                .ok()
                .map(|t| t.as_second())
        };
        Some(Issued {
            not_before: time(NOT_BEFORE_ANNOTATION)?,
            not_after: time(NOT_AFTER_ANNOTATION)?,
            issuer: annotations.get(ISSUER_ANNOTATION)?.clone(),
            subject: annotations.get(SUBJECT_ANNOTATION)?.clone(),
        })
    }

    /// Its annotations.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (NOT_BEFORE_ANNOTATION.to_owned(), rfc3339(self.not_before)),
            (NOT_AFTER_ANNOTATION.to_owned(), rfc3339(self.not_after)),
            (ISSUER_ANNOTATION.to_owned(), self.issuer.clone()),
            (SUBJECT_ANNOTATION.to_owned(), self.subject.clone()),
        ])
    }

    /// When it is due for renewal: two thirds into its validity.
    pub fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }
}

/// Whether a (new) certificate must be issued: none yet, another device id or CA, or past
/// two thirds of its validity.
pub fn needs_certificate(existing: Option<&Issued>, device_id: &str, ca: &str, now: i64) -> bool {
    existing.is_none_or(|issued| {
        issued.subject != device_id || issued.issuer != ca || now >= issued.renew_at()
    })
}

/// A certificate issued now: PEM certificate, PEM key and what its annotations record.
pub struct NewCertificate {
    /// PEM of the certificate.
    pub cert_pem: String,
    /// PEM of its private key.
    pub key_pem: String,
    /// Its validity, issuer and subject.
    pub issued: Issued,
}

/// Issues a client certificate for `device_id` from the namespace's device CA.
pub fn issue_certificate(
    keys: &NamespaceKeys,
    device_id: &str,
    spec: &CertificateCredential,
    now: i64,
) -> Result<NewCertificate, BuildError> {
    let failed = |e: rcgen::Error| BuildError::Invalid(format!("issuing the certificate: {e}"));
    // A little backdating absorbs clock skew between the operator and devices.
    let not_before = now - 300;
    let not_after = now.saturating_add(spec.validity_days.clamp(1, 3650) * 86_400);
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, device_id);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = offset(not_before)?;
    params.not_after = offset(not_after)?;
    let key = KeyPair::generate().map_err(failed)?;
    let cert = params.signed_by(&key, &keys.issuer()?).map_err(failed)?;
    Ok(NewCertificate {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        issued: Issued {
            not_before,
            not_after,
            issuer: keys.key_id(),
            subject: device_id.to_owned(),
        },
    })
}

fn offset(seconds: i64) -> Result<time::OffsetDateTime, BuildError> {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .map_err(|e| BuildError::Invalid(format!("certificate validity: {e}")))
}

/// RFC 3339 of Unix seconds.
pub fn rfc3339(seconds: i64) -> String {
    Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
#[path = "credentials_tests.rs"]
mod tests;
