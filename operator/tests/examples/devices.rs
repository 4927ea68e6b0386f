//! Devices in the examples: what the Device CRD documents beyond its schema, the Gateways
//! that take the registry's Devices only, factory-telemetry's fleet made from its CSV, and
//! the legacy password Secret the chaos suite keeps.

use super::*;
use tributary_operator::fleet;

/// The operator's own Device validation.
pub(super) fn check_device(device: &Device) -> Result<(), String> {
    build::device::validate(device).map_err(|e| e.to_string())
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
