//! Message payloads: JSON readings that depend only on (device number, seq), so tests and
//! pipelines can predict every one of them.
//!
//! - `factory`: `{"machine", "seq", "temperatureF", "vibration", "rpm"}`; in range
//!   `temperatureF` is 150.0–190.0, out of range 260.0–300.0; `vibration` 0.10–0.90 (mm/s);
//!   `rpm` 1400–1600.
//! - `streetlight`: `{"lamp", "seq", "status", "vehicles", "failure"}`; in range `status`
//!   is `on` or `dim` and `failure` is false, out of range `status` is `fault` and
//!   `failure` is true; `vehicles` 0–40.

use serde::Serialize;

/// The payload family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PayloadKind {
    /// Machines on a production line: temperature, vibration, rpm.
    Factory,
    /// Street lights: lamp status, passing vehicles, failure flag.
    Streetlight,
}

/// One factory machine reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FactoryReading {
    /// The device id.
    pub machine: String,
    /// Per-device sequence number, from 1.
    pub seq: u64,
    /// Degrees Fahrenheit, one decimal.
    #[serde(rename = "temperatureF")]
    pub temperature_f: f64,
    /// Vibration velocity in mm/s, two decimals.
    pub vibration: f64,
    /// Spindle revolutions per minute.
    pub rpm: u32,
}

/// One street light reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreetlightReading {
    /// The device id.
    pub lamp: String,
    /// Per-device sequence number, from 1.
    pub seq: u64,
    /// `on`, `dim` or (out of range) `fault`.
    pub status: &'static str,
    /// Vehicles counted since the last reading.
    pub vehicles: u32,
    /// Whether the lamp reports a failure (the out-of-range case).
    pub failure: bool,
}

/// Whether message `seq` is one of the deliberately out-of-range ones (every `every`-th).
pub fn is_out_of_range(seq: u64, every: Option<u64>) -> bool {
    matches!(every, Some(k) if k > 0 && seq.is_multiple_of(k))
}

/// The payload of message `seq` of device number `n` with id `device`, as JSON bytes.
pub fn payload(kind: PayloadKind, device: &str, n: u32, seq: u64, every: Option<u64>) -> Vec<u8> {
    let bits = mix(u64::from(n), seq);
    let out_of_range = is_out_of_range(seq, every);
    // Serialising these plain structs cannot fail; an empty payload would show up in tests.
    match kind {
        PayloadKind::Factory => serde_json::to_vec(&factory(device, seq, bits, out_of_range)),
        PayloadKind::Streetlight => {
            serde_json::to_vec(&streetlight(device, seq, bits, out_of_range))
        }
    }
    .unwrap_or_default()
}

/// The factory reading of (`n`, `seq`).
pub fn factory_reading(device: &str, n: u32, seq: u64, every: Option<u64>) -> FactoryReading {
    factory(
        device,
        seq,
        mix(u64::from(n), seq),
        is_out_of_range(seq, every),
    )
}

/// The street light reading of (`n`, `seq`).
pub fn streetlight_reading(
    device: &str,
    n: u32,
    seq: u64,
    every: Option<u64>,
) -> StreetlightReading {
    streetlight(
        device,
        seq,
        mix(u64::from(n), seq),
        is_out_of_range(seq, every),
    )
}

fn factory(device: &str, seq: u64, bits: u64, out_of_range: bool) -> FactoryReading {
    let base = if out_of_range { 2600 } else { 1500 };
    FactoryReading {
        machine: device.to_owned(),
        seq,
        temperature_f: (base + pick(bits, 0, 401)) as f64 / 10.0,
        vibration: (10 + pick(bits, 16, 81)) as f64 / 100.0,
        rpm: 1400 + pick(bits, 32, 201) as u32,
    }
}

fn streetlight(device: &str, seq: u64, bits: u64, out_of_range: bool) -> StreetlightReading {
    let status = match (out_of_range, pick(bits, 0, 4)) {
        (true, _) => "fault",
        (false, 0) => "dim",
        (false, _) => "on",
    };
    StreetlightReading {
        lamp: device.to_owned(),
        seq,
        status,
        vehicles: pick(bits, 16, 41) as u32,
        failure: out_of_range,
    }
}

/// A value in `0..range` from 16 bits of `bits` starting at `shift`.
fn pick(bits: u64, shift: u32, range: u64) -> u64 {
    ((bits >> shift) & 0xFFFF) % range
}

/// SplitMix64 of (n, seq): well spread and stable across versions and platforms.
fn mix(n: u64, seq: u64) -> u64 {
    let mut z = ((n << 40) ^ seq).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).expect("payload is JSON")
    }

    #[test]
    fn same_device_and_seq_give_the_same_payload() {
        let a = payload(PayloadKind::Factory, "machine-3", 3, 17, None);
        let b = payload(PayloadKind::Factory, "machine-3", 3, 17, None);
        assert_eq!(a, b);
        assert_ne!(a, payload(PayloadKind::Factory, "machine-3", 3, 18, None));
    }

    #[test]
    fn payload_bytes_are_pinned_so_downstream_tests_can_rely_on_them() {
        // The README's examples; changing the generator breaks predictions elsewhere.
        assert_eq!(
            String::from_utf8(payload(PayloadKind::Factory, "machine-7", 7, 12, None)),
            Ok(r#"{"machine":"machine-7","seq":12,"temperatureF":151.5,"vibration":0.42,"rpm":1579}"#.to_owned())
        );
        assert_eq!(
            String::from_utf8(payload(PayloadKind::Streetlight, "lamp-3", 3, 5, None)),
            Ok(
                r#"{"lamp":"lamp-3","seq":5,"status":"dim","vehicles":11,"failure":false}"#
                    .to_owned()
            )
        );
    }

    #[test]
    fn factory_payload_has_the_documented_fields_in_range() {
        for seq in 1..=500 {
            let value = json(&payload(PayloadKind::Factory, "machine-1", 1, seq, None));
            assert_eq!(value["machine"], "machine-1");
            assert_eq!(value["seq"], seq);
            let t = value["temperatureF"].as_f64().expect("temperatureF");
            assert!((150.0..=190.0).contains(&t), "temperature {t}");
            let v = value["vibration"].as_f64().expect("vibration");
            assert!((0.1..=0.9).contains(&v), "vibration {v}");
            let rpm = value["rpm"].as_u64().expect("rpm");
            assert!((1400..=1600).contains(&rpm), "rpm {rpm}");
        }
    }

    #[test]
    fn every_kth_reading_is_out_of_range() {
        for seq in 1..=30 {
            let reading = factory_reading("m", 2, seq, Some(10));
            let hot = reading.temperature_f >= 260.0;
            assert_eq!(hot, seq % 10 == 0, "seq {seq}: {}", reading.temperature_f);
        }
        assert!(!is_out_of_range(10, None));
        assert!(!is_out_of_range(10, Some(0)));
    }

    #[test]
    fn streetlight_failure_marks_the_out_of_range_readings() {
        let value = json(&payload(PayloadKind::Streetlight, "lamp-4", 4, 6, Some(3)));
        assert_eq!(value["lamp"], "lamp-4");
        assert_eq!(value["status"], "fault");
        assert_eq!(value["failure"], true);
        let normal = streetlight_reading("lamp-4", 4, 7, Some(3));
        assert!(!normal.failure);
        assert!(["on", "dim"].contains(&normal.status));
        assert!(normal.vehicles <= 40);
    }

    #[test]
    fn devices_differ_for_the_same_seq() {
        let readings: std::collections::HashSet<String> = (1..=20)
            .map(|n| format!("{:?}", factory_reading("x", n, 1, None)))
            .collect();
        assert!(readings.len() > 15);
    }
}
