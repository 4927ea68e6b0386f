//! Desired state of a Device: validation of its spec, and the Secrets that carry the
//! credentials the operator issues to it (owned by the Device, so deleting it deletes
//! them).

use super::gateway::check_filter;
use super::{child_meta, name_and_namespace, BuildError};
use crate::crd::device::Device;
use crate::registry::credentials::{Generated, NewCertificate};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use std::collections::BTreeMap;

/// Most attributes per device.
pub const MAX_ATTRIBUTES: usize = 32;
/// Longest attribute key.
pub const MAX_ATTRIBUTE_KEY: usize = 63;
/// Longest attribute value.
pub const MAX_ATTRIBUTE_VALUE: usize = 256;
/// Longest device id.
pub const MAX_DEVICE_ID: usize = 128;
/// Longest Device resource name: its credential Secrets carry it as a label value.
pub const MAX_NAME_LEN: usize = 63;
/// Most extra publish topics per device.
pub const MAX_PUBLISH_TOPICS: usize = 16;
const COMPONENT: &str = "device";

/// Name of the Secret holding a Device's generated secret.
pub fn credentials_secret_name(device: &str) -> String {
    format!("{device}-credentials")
}

/// Name of the Secret holding a Device's client certificate.
pub fn certificate_secret_name(device: &str) -> String {
    format!("{device}-certificate")
}

/// Whether `id` may be a device id: 1 to 128 letters, digits, `-`, `_`, `.` or `:` (safe
/// in topics, user names, certificate names and logs).
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// Validates a Device's spec without looking at other resources.
pub fn validate(device: &Device) -> Result<(), BuildError> {
    let (name, _) = name_and_namespace(device)?;
    let spec = &device.spec;
    let invalid = |message: String| Err(BuildError::Invalid(message));
    if name.len() > MAX_NAME_LEN {
        return invalid(format!(
            "metadata.name: at most {MAX_NAME_LEN} characters (spec.deviceId may be longer)"
        ));
    }
    let id = device.device_id();
    if !valid_device_id(&id) {
        return invalid(format!(
            "spec.deviceId {id:?}: use 1 to {MAX_DEVICE_ID} letters, digits, '-', '_', '.' or ':'"
        ));
    }
    if spec.gateways.is_empty() || spec.gateways.iter().any(String::is_empty) {
        return invalid("spec.gateways: name at least one Gateway".into());
    }
    let credentials = &spec.credentials;
    if credentials.generated.is_none()
        && credentials.certificate.is_none()
        && credentials.password_hash.is_none()
        && credentials.jwt.is_none()
    {
        return invalid(
            "spec.credentials: set at least one of generated, certificate, passwordHash, jwt"
                .into(),
        );
    }
    if let Some(jwt) = &credentials.jwt {
        if !jwt
            .public_key
            .trim_start()
            .starts_with("-----BEGIN PUBLIC KEY-----")
        {
            return invalid("spec.credentials.jwt.publicKey: expected a PEM public key".into());
        }
    }
    validate_topics(&spec.publish_topics)?;
    validate_attributes(&spec.attributes)
}

fn validate_topics(topics: &[String]) -> Result<(), BuildError> {
    if topics.len() > MAX_PUBLISH_TOPICS {
        return Err(BuildError::Invalid(format!(
            "spec.publishTopics: at most {MAX_PUBLISH_TOPICS}"
        )));
    }
    for topic in topics {
        let filled = topic.replace("{device}", "d");
        check_filter(&filled)
            .map_err(|why| BuildError::Invalid(format!("spec.publishTopics {topic:?}: {why}")))?;
    }
    Ok(())
}

fn validate_attributes(attributes: &BTreeMap<String, String>) -> Result<(), BuildError> {
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(BuildError::Invalid(format!(
            "spec.attributes: at most {MAX_ATTRIBUTES}"
        )));
    }
    for (key, value) in attributes {
        if key.is_empty()
            || key.chars().count() > MAX_ATTRIBUTE_KEY
            || key.contains(char::is_control)
        {
            return Err(BuildError::Invalid(format!(
                "spec.attributes: key {key:?} must be 1 to {MAX_ATTRIBUTE_KEY} characters"
            )));
        }
        if value.chars().count() > MAX_ATTRIBUTE_VALUE {
            return Err(BuildError::Invalid(format!(
                "spec.attributes.{key}: at most {MAX_ATTRIBUTE_VALUE} characters"
            )));
        }
    }
    Ok(())
}

fn secret(
    device: &Device,
    name: &str,
    type_: &str,
    data: BTreeMap<String, Vec<u8>>,
    annotations: BTreeMap<String, String>,
) -> Result<Secret, BuildError> {
    let mut metadata = child_meta(device, name, COMPONENT)?;
    metadata.annotations = Some(annotations);
    Ok(Secret {
        metadata,
        type_: Some(type_.to_owned()),
        data: Some(
            data.into_iter()
                .map(|(key, value)| (key, ByteString(value)))
                .collect(),
        ),
        ..Secret::default()
    })
}

/// The Secret of a generated secret: `username`, `password` (and `previous-password`
/// during a rotation's grace period), with its rotation in annotations.
pub fn credentials_secret(device: &Device, generated: &Generated) -> Result<Secret, BuildError> {
    let (name, _) = name_and_namespace(device)?;
    let (data, annotations) = generated.to_secret(&device.device_id());
    secret(
        device,
        &credentials_secret_name(&name),
        "Opaque",
        data,
        annotations,
    )
}

/// The `kubernetes.io/tls` Secret of an issued client certificate, with the CA that
/// issued it (`ca.crt`) so devices can trust the same CA for the gateway if it signs its
/// server certificate too.
pub fn certificate_secret(
    device: &Device,
    certificate: &NewCertificate,
    ca_pem: &str,
) -> Result<Secret, BuildError> {
    let (name, _) = name_and_namespace(device)?;
    let data = BTreeMap::from([
        (
            "tls.crt".to_owned(),
            certificate.cert_pem.clone().into_bytes(),
        ),
        (
            "tls.key".to_owned(),
            certificate.key_pem.clone().into_bytes(),
        ),
        ("ca.crt".to_owned(), ca_pem.as_bytes().to_vec()),
    ]);
    secret(
        device,
        &certificate_secret_name(&name),
        "kubernetes.io/tls",
        data,
        certificate.issued.annotations(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn device(spec: serde_json::Value) -> Device {
        serde_json::from_value(json!({
            "apiVersion": "tributary.dev/v1alpha1",
            "kind": "Device",
            "metadata": {"name": "lamp-1", "namespace": "city", "uid": "u1"},
            "spec": spec
        }))
        .expect("device")
    }

    fn error(spec: serde_json::Value) -> String {
        match validate(&device(spec)) {
            Err(BuildError::Invalid(message)) => message,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_generated_device_is_valid() {
        validate(&device(
            json!({"gateways": ["lights"], "credentials": {"generated": {}}}),
        ))
        .expect("valid");
    }

    #[test]
    fn bad_specs_are_refused_naming_the_field() {
        let generated = json!({"generated": {}});
        assert!(error(json!({"gateways": [], "credentials": generated})).contains("spec.gateways"));
        assert!(error(json!({"gateways": ["g"], "credentials": {}})).contains("spec.credentials"));
        assert!(error(json!({"gateways": ["g"], "credentials": generated,
                              "deviceId": "a/b"}))
        .contains("spec.deviceId"));
        assert!(error(json!({"gateways": ["g"], "credentials": generated,
                              "publishTopics": ["a/#/b"]}))
        .contains("spec.publishTopics"));
        let many: serde_json::Map<String, serde_json::Value> =
            (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert!(error(json!({"gateways": ["g"], "credentials": generated,
                              "attributes": many}))
        .contains("at most 32"));
        assert!(error(json!({"gateways": ["g"], "credentials": generated,
                              "attributes": {"k": "v".repeat(257)}}))
        .contains("spec.attributes.k"));
        assert!(
            error(json!({"gateways": ["g"], "credentials": {"jwt": {"publicKey": "x"}}}))
                .contains("publicKey")
        );
    }

    #[test]
    fn credential_secrets_are_owned_by_the_device() {
        let d = device(json!({"gateways": ["g"], "credentials": {"generated": {}}}));
        let generated = Generated {
            rotation: 0,
            password: "pw".into(),
            previous: None,
        };
        let s = credentials_secret(&d, &generated).expect("secret");
        assert_eq!(s.metadata.name.as_deref(), Some("lamp-1-credentials"));
        let owner = &s.metadata.owner_references.as_ref().expect("owned")[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Device", "u1"));
        let data = s.data.expect("data");
        assert_eq!(data["username"].0, b"lamp-1");
        assert_eq!(data["password"].0, b"pw");
    }
}
