use std::io::Write;
use std::net::Ipv4Addr;

use argon2::Argon2;
use jsonwebtoken::{EncodingKey, Header};
use tributary_contract::gateway_config::JwtAuth;

use super::*;

const SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn temp_file(contents: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with(contents)
}

/// A tiny self-deleting temp file, to avoid a dev-dependency for one test module.
mod tempfile_path {
    use super::*;

    pub struct TempPath(pub std::path::PathBuf);

    impl TempPath {
        pub fn with(contents: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("tributary-auth-{}", ulid::Ulid::generate()));
            let mut file = std::fs::File::create(&path).expect("create temp file");
            file.write_all(contents.as_bytes())
                .expect("write temp file");
            Self(path)
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn password_config(file: &tempfile_path::TempPath) -> AuthConfig {
    AuthConfig {
        password_file: Some(file.0.clone()),
        failed_logins_per_minute: 1000,
        ..AuthConfig::default()
    }
}

fn password(device: &str, password: &str) -> Credentials {
    Credentials::Password {
        device: device.into(),
        password: password.as_bytes().to_vec(),
    }
}

#[tokio::test]
async fn password_device_authenticates_and_wrong_or_unknown_are_denied_alike() {
    let hash = hash_password_cheap(b"s3cret").expect("hash");
    let file = temp_file(&format!("# devices\npress-7:{hash}\n"));
    let auth = Arc::new(Authenticator::load(&password_config(&file)).expect("load"));
    assert_eq!(
        auth.authenticate(SOURCE, password("press-7", "s3cret"))
            .await,
        Ok("press-7".into())
    );
    assert_eq!(
        auth.authenticate(SOURCE, password("press-7", "wrong"))
            .await,
        Err(AuthError::Denied)
    );
    assert_eq!(
        auth.authenticate(SOURCE, password("ghost", "s3cret")).await,
        Err(AuthError::Denied)
    );
}

#[tokio::test]
async fn anonymous_is_refused_unless_enabled() {
    let auth = Arc::new(Authenticator::load(&AuthConfig::default()).expect("load"));
    assert_eq!(
        auth.authenticate(SOURCE, Credentials::None).await,
        Err(AuthError::Denied)
    );
    let config = AuthConfig {
        allow_anonymous: true,
        ..AuthConfig::default()
    };
    let auth = Arc::new(Authenticator::load(&config).expect("load"));
    assert_eq!(
        auth.authenticate(SOURCE, Credentials::None).await,
        Ok("anonymous".into())
    );
}

fn wrong_passwords(devices: impl Iterator<Item = String>) -> Vec<Credentials> {
    devices
        .map(|device| Credentials::Password {
            device,
            password: b"guess".to_vec(),
        })
        .collect()
}

#[tokio::test]
async fn correct_password_from_an_address_with_100_failed_logins_a_minute_is_accepted() {
    let hash = hash_password_cheap(b"s3cret").expect("hash");
    let file = temp_file(&format!("press-7:{hash}\n"));
    // The default allowance (30 a minute), as in production: devices share a NAT address
    // with whoever is failing.
    let config = AuthConfig {
        password_file: Some(file.0.clone()),
        ..AuthConfig::default()
    };
    let auth = Arc::new(Authenticator::load(&config).expect("load"));
    let attempts = wrong_passwords((0..100).map(|i| format!("ghost-{i}")))
        .into_iter()
        .map(|credentials| auth.authenticate(SOURCE, credentials));
    let results = futures::future::join_all(attempts).await;
    assert!(results.iter().all(Result::is_err), "{results:?}");
    assert_eq!(
        auth.authenticate(SOURCE, password("press-7", "s3cret"))
            .await,
        Ok("press-7".into())
    );
}

#[tokio::test]
async fn parallel_bad_logins_for_one_device_are_all_counted_before_any_check_ends() {
    let hash = hash_password_cheap(b"s3cret").expect("hash");
    let file = temp_file(&format!("press-7:{hash}\n"));
    let auth = Arc::new(Authenticator::load(&password_config(&file)).expect("load"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let attempts = wrong_passwords((0..50).map(|_| "press-7".to_owned()))
        .into_iter()
        .map(|credentials| auth.authenticate_by(SOURCE, credentials, deadline));
    let results = futures::future::join_all(attempts).await;
    let started = auth.password_checks_started();
    println!("50 parallel bad logins: {started} password checks ran, the rest were spaced out");
    assert!(results.iter().all(Result::is_err), "{results:?}");
    assert_eq!(auth.device_failures("press-7"), 50);
    assert!(started < 50, "every bad login reached the hash: {started}");
}

#[tokio::test]
async fn a_device_whose_password_is_being_guessed_still_gets_in_with_it() {
    let hash = hash_password_cheap(b"s3cret").expect("hash");
    let file = temp_file(&format!("press-7:{hash}\n"));
    let auth = Arc::new(Authenticator::load(&password_config(&file)).expect("load"));
    for _ in 0..8 {
        assert_eq!(
            auth.authenticate(SOURCE, password("press-7", "guess"))
                .await,
            Err(AuthError::Denied)
        );
    }
    assert_eq!(
        auth.authenticate(SOURCE, password("press-7", "s3cret"))
            .await,
        Ok("press-7".into())
    );
    assert_eq!(
        auth.device_failures("press-7"),
        8,
        "the good login took back only its own count"
    );
}

#[tokio::test]
async fn failure_maps_stay_at_their_bound_when_fed_100000_devices() {
    let config = AuthConfig {
        failed_logins_per_minute: 1000,
        ..AuthConfig::default()
    };
    let auth = Arc::new(Authenticator::load(&config).expect("load"));
    for i in 0..100_000u32 {
        let source = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(i) + 1));
        let result = auth
            .authenticate(source, password(&format!("ghost-{i}"), "guess"))
            .await;
        assert_eq!(result, Err(AuthError::Denied));
    }
    let bound = throttle::MAX_TRACKED;
    assert_eq!(auth.tracked_failures(), (bound, bound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_check_queue_refuses_at_once_while_a_started_login_completes() {
    // A costlier hash than the other tests so the first check is still running while the
    // queue fills.
    let slow = Argon2::from(argon2::Params::new(16 * 1024, 3, 1, None).expect("params"))
        .hash_password(b"s3cret")
        .expect("hash")
        .to_string();
    let file = temp_file(&format!("slow-7:{slow}\n"));
    let config = AuthConfig {
        password_check_slots: 1,
        password_check_queue: 1,
        ..password_config(&file)
    };
    let auth = Arc::new(Authenticator::load(&config).expect("load"));
    let good = tokio::spawn({
        let auth = Arc::clone(&auth);
        async move {
            auth.authenticate(SOURCE, password("slow-7", "s3cret"))
                .await
        }
    });
    assert!(
        eventually(|| auth.password_checks_running() == 1).await,
        "the good login's check never started"
    );
    let queued = tokio::spawn({
        let auth = Arc::clone(&auth);
        async move {
            auth.authenticate(SOURCE, password("ghost-1", "guess"))
                .await
        }
    });
    assert!(
        eventually(|| auth.password_checks_waiting() == 1).await,
        "the second login never queued"
    );
    assert_eq!(
        auth.authenticate(SOURCE, password("ghost-2", "guess"))
            .await,
        Err(AuthError::Busy)
    );
    assert!(
        !good.is_finished(),
        "the refusal waited for the running check"
    );
    assert_eq!(good.await.expect("join"), Ok("slow-7".into()));
    assert_eq!(queued.await.expect("join"), Err(AuthError::Denied));
}

/// Polls `condition` (every millisecond, for up to 20 s).
async fn eventually(condition: impl Fn() -> bool) -> bool {
    for _ in 0..20_000 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

#[test]
fn malformed_password_file_names_the_line_not_the_hash() {
    let file = temp_file("press-7:not-a-hash\n");
    let error = Authenticator::load(&password_config(&file))
        .err()
        .expect("must fail");
    let text = error.to_string();
    assert!(text.contains("line 1"), "{text}");
    assert!(!text.contains("not-a-hash"), "{text}");
}

struct Signer {
    key: EncodingKey,
    public_pem: String,
}

fn es256_signer() -> Signer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    Signer {
        key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("encoding key"),
        public_pem: pair.public_key_pem(),
    }
}

fn token(signer: &Signer, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &signer.key).expect("sign")
}

fn jwt_auth(public_pem: &str) -> (Arc<Authenticator>, tempfile_path::TempPath) {
    jwt_auth_with(public_pem, |_| {})
}

fn jwt_auth_with(
    public_pem: &str,
    adjust: impl FnOnce(&mut JwtAuth),
) -> (Arc<Authenticator>, tempfile_path::TempPath) {
    let file = temp_file(public_pem);
    let mut jwt = JwtAuth {
        public_key_files: vec![file.0.clone()],
        device_claim: "sub".into(),
        issuer: None,
        audience: None,
        max_token_lifetime_seconds: None,
    };
    adjust(&mut jwt);
    let config = AuthConfig {
        jwt: Some(jwt),
        failed_logins_per_minute: 1000,
        ..AuthConfig::default()
    };
    (Arc::new(Authenticator::load(&config).expect("load")), file)
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

#[tokio::test]
async fn valid_es256_token_yields_its_subject_as_device() {
    let signer = es256_signer();
    let (auth, _file) = jwt_auth(&signer.public_pem);
    let jwt = token(
        &signer,
        serde_json::json!({"sub": "press-7", "exp": now() + 600}),
    );
    assert!(looks_like_jwt(jwt.as_bytes()));
    assert_eq!(
        auth.authenticate(SOURCE, Credentials::Token(jwt)).await,
        Ok("press-7".into())
    );
}

#[tokio::test]
async fn expired_or_foreign_signed_or_wildcard_subject_tokens_are_denied() {
    let signer = es256_signer();
    let stranger = es256_signer();
    let (auth, _file) = jwt_auth(&signer.public_pem);
    let cases = [
        (
            "expired",
            token(
                &signer,
                serde_json::json!({"sub": "d", "exp": now() - 3600}),
            ),
        ),
        (
            "foreign key",
            token(
                &stranger,
                serde_json::json!({"sub": "d", "exp": now() + 600}),
            ),
        ),
        ("no exp", token(&signer, serde_json::json!({"sub": "d"}))),
        (
            "wildcard sub",
            token(&signer, serde_json::json!({"sub": "#", "exp": now() + 600})),
        ),
        ("garbage", "eyJ.x.y".to_string()),
    ];
    for (name, jwt) in cases {
        assert_eq!(
            auth.authenticate(SOURCE, Credentials::Token(jwt)).await,
            Err(AuthError::Denied),
            "{name}"
        );
    }
}

#[tokio::test]
async fn configured_issuer_and_audience_are_required_nbf_and_lifetime_are_honoured() {
    let signer = es256_signer();
    let (auth, _file) = jwt_auth_with(&signer.public_pem, |jwt| {
        jwt.issuer = Some("https://issuer.example".into());
        jwt.audience = Some("tributary".into());
        jwt.max_token_lifetime_seconds = Some(3600);
    });
    let good = serde_json::json!({
        "sub": "d", "exp": now() + 600, "iss": "https://issuer.example", "aud": "tributary"
    });
    let with = |changes: serde_json::Value| {
        let mut claims = good.clone();
        for (key, value) in changes.as_object().expect("object") {
            if value.is_null() {
                claims.as_object_mut().expect("object").remove(key);
            } else {
                claims[key] = value.clone();
            }
        }
        token(&signer, claims)
    };
    assert_eq!(
        auth.authenticate(SOURCE, Credentials::Token(token(&signer, good.clone())))
            .await,
        Ok("d".into()),
        "every claim right"
    );
    let refused = [
        ("no iss", with(serde_json::json!({"iss": null}))),
        ("no aud", with(serde_json::json!({"aud": null}))),
        (
            "other iss",
            with(serde_json::json!({"iss": "https://elsewhere"})),
        ),
        (
            "other aud",
            with(serde_json::json!({"aud": "someone-else"})),
        ),
        (
            "not yet valid",
            with(serde_json::json!({"nbf": now() + 600})),
        ),
        (
            "valid for a year",
            with(serde_json::json!({"exp": now() + 365 * 86_400})),
        ),
    ];
    for (name, jwt) in refused {
        assert_eq!(
            auth.authenticate(SOURCE, Credentials::Token(jwt)).await,
            Err(AuthError::Denied),
            "{name}"
        );
    }
    assert_eq!(
        auth.authenticate(
            SOURCE,
            Credentials::Token(with(serde_json::json!({"nbf": now() - 60})))
        )
        .await,
        Ok("d".into()),
        "nbf in the past"
    );
}
