use super::names::{is_resource_name, name_for, sanitised_name, NamePattern, MAX_NAME_LEN};
use super::*;

fn fleet(gateways: &[&str]) -> Fleet {
    Fleet {
        namespace: Some("factory".into()),
        gateways: gateways.iter().map(|g| (*g).to_owned()).collect(),
        credential: CredentialKind::Generated,
    }
}

fn from_csv(text: &str) -> Result<Vec<Device>, FleetError> {
    devices_from_csv(text.as_bytes(), &fleet(&["sensors"]))
}

fn line_error(text: &str) -> (u64, String) {
    match from_csv(text) {
        Err(FleetError::Line { line, reason }) => (line, reason),
        other => panic!("expected a line error, got {other:?}"),
    }
}

fn name(device: &Device) -> &str {
    device.metadata.name.as_deref().unwrap_or_default()
}

#[test]
fn csv_rows_become_devices_with_gateways_disabled_and_attributes() {
    let devices = from_csv(
        "id,line,site,gateways,disabled\n\
         machine-1,line-1,north,,\n\
         machine-2,line-2,north,backup;sensors; spare ,true\n\
         machine-3,,south,,FALSE\n",
    )
    .expect("valid CSV");
    assert_eq!(devices.len(), 3);
    let first = &devices[0];
    assert_eq!(name(first), "machine-1");
    assert_eq!(first.metadata.namespace.as_deref(), Some("factory"));
    assert_eq!(first.spec.device_id, None);
    assert_eq!(first.spec.gateways, ["sensors"]);
    assert!(!first.spec.disabled);
    assert_eq!(
        first.spec.attributes,
        BTreeMap::from([
            ("line".to_owned(), "line-1".to_owned()),
            ("site".to_owned(), "north".to_owned())
        ])
    );
    let generated = first
        .spec
        .credentials
        .generated
        .as_ref()
        .expect("generated");
    assert_eq!(generated.grace_period_seconds, 86_400);
    assert!(first.spec.credentials.certificate.is_none());
    // The gateways column adds to --gateway, without repeating one.
    assert_eq!(devices[1].spec.gateways, ["sensors", "backup", "spare"]);
    assert!(devices[1].spec.disabled);
    // An empty cell sets no attribute.
    assert_eq!(devices[2].spec.attributes.len(), 1);
    assert!(!devices[2].spec.disabled);
}

#[test]
fn ids_that_are_not_resource_names_get_a_sanitised_name_and_device_id() {
    let devices = from_csv("id\nMachine_7\nplant:north:m-8\n").expect("valid");
    assert_eq!(name(&devices[0]), "machine-7");
    assert_eq!(devices[0].spec.device_id.as_deref(), Some("Machine_7"));
    assert_eq!(devices[0].device_id(), "Machine_7");
    assert_eq!(name(&devices[1]), "plant-north-m-8");
    assert_eq!(devices[1].device_id(), "plant:north:m-8");
}

#[test]
fn quoted_cells_comments_and_empty_lines_are_read() {
    let devices =
        from_csv("# the north plant\nid,location\n\n\"machine-1\",\"hall 2, bay \"\"A\"\"\"\n\n")
            .expect("valid");
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].spec.attributes["location"], "hall 2, bay \"A\"");
}

#[test]
fn duplicate_ids_and_names_are_refused_naming_both_lines() {
    let (line, reason) = line_error("id\nm-1\nm-2\nm-1\n");
    assert_eq!(line, 4);
    assert!(reason.contains("already on line 2"), "{reason}");
    let (line, reason) = line_error("id\nM_1\nm-1\n");
    assert_eq!(line, 3);
    assert!(
        reason.contains("\"m-1\"") && reason.contains("line 2"),
        "{reason}"
    );
}

#[test]
fn attribute_bounds_of_the_crd_are_enforced() {
    let keys: Vec<String> = (0..33).map(|i| format!("k{i}")).collect();
    let values = vec!["v"; 33].join(",");
    let (line, reason) = line_error(&format!("id,{}\nm-1,{values}\n", keys.join(",")));
    assert_eq!(line, 2);
    assert!(reason.contains("more than 32 attributes"), "{reason}");
    // 32 are fine, and sparse rows with fewer too.
    let csv = format!(
        "id,{}\nm-1,{}\n",
        keys[..32].join(","),
        vec!["v"; 32].join(",")
    );
    assert_eq!(
        from_csv(&csv).expect("32 attributes")[0]
            .spec
            .attributes
            .len(),
        32
    );

    let long_key = "k".repeat(64);
    let (line, reason) = line_error(&format!("id,{long_key}\nm-1,v\n"));
    assert_eq!(line, 1);
    assert!(reason.contains("at most 63"), "{reason}");
    let long_value = "v".repeat(257);
    let (line, reason) = line_error(&format!("id,site\nm-1,ok\nm-2,{long_value}\n"));
    assert_eq!(line, 3);
    assert!(
        reason.contains("at most 256") && reason.contains("site"),
        "{reason}"
    );
    assert!(from_csv(&format!("id,site\nm-1,{}\n", "v".repeat(256))).is_ok());
}

#[test]
fn malformed_csv_is_reported_by_line() {
    let (line, reason) = line_error("id,site\nm-1,north\nm-2,north,extra\n");
    assert_eq!(line, 3);
    assert!(
        reason.contains("3 fields") && reason.contains("header has 2"),
        "{reason}"
    );
    // An unclosed quote swallows the lines after it into one value.
    let (line, reason) = line_error("id,site\nm-1,\"north\nm-2,south\n");
    assert_eq!(line, 2);
    assert!(reason.contains("unclosed quote"), "{reason}");
    let (line, reason) = line_error("name,site\nm-1,north\n");
    assert_eq!(line, 1);
    assert!(reason.contains("`id`"), "{reason}");
    let (line, _) = line_error("id,site,site\nm-1,a,b\n");
    assert_eq!(line, 1);
    let (line, reason) = line_error("id,site\nm-1,a\n,b\n");
    assert_eq!((line, reason.as_str()), (3, "empty id"));
    let (line, reason) = line_error("id,disabled\nm-1,yes\n");
    assert_eq!(line, 2);
    assert!(reason.contains("\"yes\""), "{reason}");
    let (line, reason) = line_error("id\nmachine one\n");
    assert_eq!(line, 2);
    assert!(reason.contains("only letters"), "{reason}");
    let (line, reason) = line_error("id\nm-1\nm-\u{0}\n");
    assert_eq!(line, 3);
    assert!(reason.contains("only letters"), "{reason}");
}

#[test]
fn invalid_utf8_and_empty_input_are_errors_not_panics() {
    let result = devices_from_csv(b"id\nm-1\nm-\xff\n", &fleet(&["g"]));
    assert!(
        matches!(result, Err(FleetError::Line { line: 3, .. })),
        "{result:?}"
    );
    assert!(matches!(from_csv(""), Err(FleetError::Options(_))));
    assert!(matches!(from_csv("id\n"), Err(FleetError::Options(_))));
    assert!(matches!(
        from_csv("# only a comment\n"),
        Err(FleetError::Options(_))
    ));
}

#[test]
fn every_device_needs_a_gateway_and_names_are_checked() {
    let result = devices_from_csv(b"id\nm-1\n", &fleet(&[]));
    let error = result.expect_err("no gateway").to_string();
    assert!(error.starts_with("line 2: no Gateway"), "{error}");
    assert!(devices_from_csv(b"id,gateways\nm-1,g\n", &fleet(&[])).is_ok());
    let error = devices_from_csv(b"id\nm-1\n", &fleet(&["Bad_Gateway"])).expect_err("bad");
    assert!(error.to_string().contains("--gateway"), "{error}");
    let mut other = fleet(&["g"]);
    other.namespace = Some("a.b".into());
    assert!(devices_from_csv(b"id\nm-1\n", &other).is_err());
    other.namespace = None;
    let devices = devices_from_csv(b"id\nm-1\n", &other).expect("no namespace");
    assert_eq!(devices[0].metadata.namespace, None);
}

#[test]
fn certificate_fleets_get_certificates_only() {
    let mut certificate = fleet(&["g"]);
    certificate.credential = CredentialKind::Certificate;
    let devices = devices_from_csv(b"id\nm-1\n", &certificate).expect("valid");
    let credentials = &devices[0].spec.credentials;
    assert_eq!(
        credentials.certificate.as_ref().map(|c| c.validity_days),
        Some(365)
    );
    assert!(credentials.generated.is_none());
    assert_eq!("certificate".parse(), Ok(CredentialKind::Certificate));
    assert_eq!("generated".parse(), Ok(CredentialKind::Generated));
    assert!("jwt".parse::<CredentialKind>().is_err());
}

#[test]
fn yaml_has_one_document_per_device_that_parses_back() {
    let devices = from_csv("id,site\nm-1,north\nM_2,south\n").expect("valid");
    let yaml = to_yaml(&devices).expect("yaml");
    assert_eq!(yaml.matches("---\n").count(), 2);
    assert!(!yaml.contains("status"), "{yaml}");
    let parsed: Vec<Device> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|document| serde::Deserialize::deserialize(document).expect("a Device"))
        .collect();
    assert_eq!(parsed.len(), devices.len());
    for (back, device) in parsed.iter().zip(&devices) {
        assert_eq!(back.metadata, device.metadata);
        assert_eq!(back.spec, device.spec);
    }
    let value: serde_json::Value =
        serde_yaml::from_str(yaml.split("---\n").nth(1).expect("doc")).expect("yaml");
    assert_eq!(value["apiVersion"], "tributary.dev/v1alpha1");
    assert_eq!(value["kind"], "Device");
}

#[test]
fn generate_names_devices_after_the_pattern_with_attributes() {
    let generated = Generated {
        count: 3,
        first: 9,
        pattern: "lamp-{n:04}".into(),
        attributes: vec!["site=harbour".into(), "model = L2 ".into()],
    };
    let devices = generate(&generated, &fleet(&["street"])).expect("valid");
    let names: Vec<&str> = devices.iter().map(name).collect();
    assert_eq!(names, ["lamp-0009", "lamp-0010", "lamp-0011"]);
    assert_eq!(devices[2].spec.attributes["site"], "harbour");
    assert_eq!(devices[2].spec.attributes["model"], "L2");
    assert_eq!(devices[0].spec.gateways, ["street"]);
}

#[test]
fn generate_refuses_bad_counts_patterns_and_attributes() {
    let base = Generated {
        count: 2,
        first: 1,
        pattern: "lamp-{n}".into(),
        attributes: Vec::new(),
    };
    let with = |change: &dyn Fn(&mut Generated)| {
        let mut generated = base.clone();
        change(&mut generated);
        generate(&generated, &fleet(&["g"]))
            .expect_err("refused")
            .to_string()
    };
    assert!(with(&|g| g.count = 0).contains("--count"));
    assert!(with(&|g| g.count = MAX_GENERATED + 1).contains("--count"));
    assert!(with(&|g| g.first = u64::MAX).contains("--first"));
    assert!(with(&|g| g.pattern = "lamp".into()).contains("no {n}"));
    assert!(with(&|g| g.pattern = "lamp-{n}-{n}".into()).contains("one {n}"));
    assert!(with(&|g| g.pattern = "lamp-{n:4}".into()).contains("{n:0W}"));
    assert!(with(&|g| g.pattern = "lamp {n}".into()).starts_with("device 1:"));
    assert!(with(&|g| g.attributes = vec!["site".into()]).contains("KEY=VALUE"));
    let too_many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    assert!(with(&|g| g.attributes = too_many.clone()).contains("32"));
    assert!(generate(&base, &fleet(&[])).is_err());
}

#[test]
fn resource_names_follow_dns_1123() {
    for good in ["m-1", "a", "plant.north.m-1", "0abc"] {
        assert!(is_resource_name(good), "{good}");
    }
    for bad in ["", "M-1", "-m", "m-", "a..b", "a.-b", "m_1", "m 1", "m:1"] {
        assert!(!is_resource_name(bad), "{bad}");
    }
    assert!(is_resource_name(&"a".repeat(MAX_NAME_LEN)));
    assert!(!is_resource_name(&"a".repeat(MAX_NAME_LEN + 1)));
    assert_eq!(sanitised_name("__A..b-_").as_deref(), Some("a.b"));
    assert_eq!(sanitised_name("---"), None);
    let long = sanitised_name(&format!("{}_x", "a".repeat(300))).expect("name");
    assert_eq!(long.len(), MAX_NAME_LEN);
    assert_eq!(name_for("m-1"), Some(("m-1".into(), None)));
    assert_eq!(name_for("M:1"), Some(("m-1".into(), Some("M:1".into()))));
}

#[test]
fn name_patterns_pad_and_keep_text_around_the_number() {
    let pattern = NamePattern::parse("a-{n:03}-b").expect("valid");
    assert_eq!(pattern.expand(7), "a-007-b");
    assert_eq!(pattern.expand(12345), "a-12345-b");
    assert_eq!(NamePattern::parse("{n}").expect("valid").expand(0), "0");
    assert!(NamePattern::parse("a-{n").is_err());
    assert!(NamePattern::parse("a-{n:021}").is_err());
}
