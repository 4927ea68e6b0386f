use super::*;

fn spec(rotation: i64, grace: i64) -> GeneratedCredential {
    GeneratedCredential {
        rotation,
        grace_period_seconds: grace,
    }
}

fn fresh(password: &str) -> impl FnOnce() -> Result<String, BuildError> + '_ {
    move || Ok(password.to_owned())
}

#[test]
fn a_first_secret_is_generated_and_then_kept() {
    let made = plan_generated(None, &spec(0, 60), 1_000, fresh("a"))
        .expect("plan")
        .expect("new");
    assert_eq!(made.password, "a");
    assert_eq!(made.previous, None);
    let again = plan_generated(Some(&made), &spec(0, 60), 2_000, fresh("b")).expect("plan");
    assert_eq!(again, None, "nothing changes without a rotation");
}

#[test]
fn a_rotation_keeps_the_old_secret_for_the_grace_period_then_drops_it() {
    let first = Generated {
        rotation: 0,
        password: "old".into(),
        previous: None,
    };
    let rotated = plan_generated(Some(&first), &spec(1, 60), 1_000, fresh("new"))
        .expect("plan")
        .expect("rotated");
    assert_eq!(rotated.password, "new");
    assert_eq!(rotated.rotation, 1);
    assert_eq!(rotated.previous, Some(("old".into(), 1_060)));
    assert_eq!(
        plan_generated(Some(&rotated), &spec(1, 60), 1_059, fresh("x")).expect("plan"),
        None,
        "still in the grace period"
    );
    let expired = plan_generated(Some(&rotated), &spec(1, 60), 1_060, fresh("x"))
        .expect("plan")
        .expect("previous dropped");
    assert_eq!(expired.previous, None);
    assert_eq!(expired.password, "new");
    let no_grace = plan_generated(Some(&first), &spec(2, 0), 1_000, fresh("n"))
        .expect("plan")
        .expect("rotated");
    assert_eq!(
        no_grace.previous, None,
        "a zero grace period ends the old secret at once"
    );
}

#[test]
fn a_generated_secret_round_trips_through_its_secret() {
    let generated = Generated {
        rotation: 3,
        password: "pw".into(),
        previous: Some(("old".into(), 1_764_000_000)),
    };
    let (data, annotations) = generated.to_secret("lamp-1");
    assert_eq!(data[USERNAME_KEY], b"lamp-1");
    assert_eq!(Generated::from_secret(&data, &annotations), Some(generated));
    assert_eq!(Generated::from_secret(&BTreeMap::new(), &annotations), None);
}

#[test]
fn certificates_are_issued_for_the_device_and_renewed_after_two_thirds() {
    let keys = NamespaceKeys::generate("city").expect("keys");
    let new = issue_certificate(
        &keys,
        "lamp-1",
        &CertificateCredential { validity_days: 30 },
        1_764_000_000,
    )
    .expect("issued");
    assert!(new.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(new.key_pem.contains("PRIVATE KEY"));
    let issued = Issued::from_annotations(&new.issued.annotations()).expect("annotations");
    assert_eq!(issued, new.issued);
    assert_eq!(issued.subject, "lamp-1");
    let ca = keys.key_id();
    assert!(!needs_certificate(
        Some(&issued),
        "lamp-1",
        &ca,
        1_764_000_000
    ));
    assert!(needs_certificate(
        Some(&issued),
        "lamp-2",
        &ca,
        1_764_000_000
    ));
    assert!(needs_certificate(
        Some(&issued),
        "lamp-1",
        "other-ca",
        1_764_000_000
    ));
    assert!(needs_certificate(
        Some(&issued),
        "lamp-1",
        &ca,
        issued.renew_at()
    ));
    assert!(needs_certificate(None, "lamp-1", &ca, 0));
}
