//! Devices in the examples: what the Device CRD documents beyond its schema, the Gateways
//! that take the registry's Devices only, factory-telemetry's fleet made from its CSV, and
//! the legacy password Secret the chaos suite keeps.

use super::*;
use tributary_operator::fleet;

/// The operator's Gateway validation, except that a Gateway whose `auth` configures
/// nothing is accepted: it takes the registry's Devices only (issue 14). The operator's
/// `validate` still refuses it until the registry side lands; drop this exception then.
pub(super) fn validate_gateway(gateway: &Gateway) -> Result<(), build::BuildError> {
    let auth = &gateway.spec.auth;
    let registry_only = auth.passwords.is_none()
        && auth.jwt.is_none()
        && auth.client_certificates.is_none()
        && !auth.allow_anonymous;
    match build::gateway::validate(gateway) {
        Err(build::BuildError::Invalid(reason))
            if registry_only && reason.starts_with("spec.auth: configure") =>
        {
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

/// What the Device CRD documents and its schema cannot say: a valid device id, at least
/// one credential, the attribute bounds.
pub(super) fn check_device(device: &Device) -> Result<(), String> {
    let id = device.device_id();
    if !fleet::names::is_valid_device_id(&id) {
        return Err(format!("device id {id:?}"));
    }
    let credentials = &device.spec.credentials;
    if credentials.generated.is_none()
        && credentials.certificate.is_none()
        && credentials.password_hash.is_none()
        && credentials.jwt.is_none()
    {
        return Err("spec.credentials: none configured".into());
    }
    let attributes = &device.spec.attributes;
    if attributes.len() > fleet::MAX_ATTRIBUTES {
        return Err(format!("more than {} attributes", fleet::MAX_ATTRIBUTES));
    }
    for (key, value) in attributes {
        if key.is_empty()
            || key.chars().count() > fleet::MAX_ATTRIBUTE_KEY_LEN
            || value.chars().count() > fleet::MAX_ATTRIBUTE_VALUE_LEN
        {
            return Err(format!("attribute {key:?} out of bounds"));
        }
    }
    Ok(())
}

#[test]
fn factory_devices_are_machine_1_to_50_made_from_machines_csv() {
    let dir = examples_dir().join("factory-telemetry");
    let mut problems = Vec::new();
    let objects = objects_of(&dir.join("devices.yaml"), &mut problems);
    assert_no_problems(problems);
    let devices: Vec<Device> = objects
        .iter()
        .map(|o| strict(o).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let names: Vec<&str> = devices
        .iter()
        .map(|d| d.metadata.name.as_deref().unwrap_or_default())
        .collect();
    let expected: Vec<String> = (1..=50).map(|n| format!("machine-{n}")).collect();
    assert_eq!(names, expected);
    for device in &devices {
        assert!(device.spec.credentials.generated.is_some(), "{device:?}");
        assert_eq!(device.spec.gateways, ["sensors"]);
        for key in ["site", "line", "model"] {
            assert!(
                device.spec.attributes.contains_key(key),
                "{key}: {device:?}"
            );
        }
    }
    // devices.yaml is what its header says: the CSV through `devices from-csv`.
    let csv = std::fs::read(dir.join("machines.csv")).expect("machines.csv");
    let fleet = fleet::Fleet {
        namespace: Some("factory".into()),
        gateways: vec!["sensors".into()],
        credential: fleet::CredentialKind::Generated,
    };
    let made = fleet::devices_from_csv(&csv, &fleet).expect("machines.csv is valid");
    assert_eq!(made.len(), devices.len());
    for (made, committed) in made.iter().zip(&devices) {
        assert_eq!(made.metadata.name, committed.metadata.name);
        assert_eq!(
            made.spec, committed.spec,
            "devices.yaml is stale: make it again from machines.csv (see its header)"
        );
    }
}

#[test]
fn chaos_legacy_passwords_are_machine_1_to_50_with_argon2_hashes() {
    // The legacy `auth.passwords` Secret lives on in the chaos suite, which proves that path.
    let file = examples_dir().join("../tests/e2e/chaos/device-credentials.yaml");
    let mut problems = Vec::new();
    let objects = objects_of(&file, &mut problems);
    assert_no_problems(problems);
    let passwords = objects
        .iter()
        .find_map(|o| {
            o.value
                .pointer("/stringData/passwords")
                .and_then(Value::as_str)
        })
        .expect("stringData.passwords");
    let devices: Vec<&str> = passwords
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (device, hash) = line.split_once(':').expect("device:hash");
            assert!(
                hash.starts_with("$argon2id$"),
                "{device}: not an argon2id hash"
            );
            device
        })
        .collect();
    let expected: Vec<String> = (1..=50).map(|n| format!("machine-{n}")).collect();
    assert_eq!(devices, expected);
    // One salt per device, even though the password is shared.
    let salts: BTreeSet<&str> = passwords
        .lines()
        .filter_map(|l| l.split('$').nth(4))
        .collect();
    assert_eq!(salts.len(), 50);
}
