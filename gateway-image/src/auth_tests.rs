use std::io::Write;
use std::net::Ipv4Addr;

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

#[tokio::test]
async fn repeated_failures_from_one_address_are_throttled() {
    let config = AuthConfig {
        failed_logins_per_minute: 2,
        ..AuthConfig::default()
    };
    let auth = Arc::new(Authenticator::load(&config).expect("load"));
    for _ in 0..2 {
        assert_eq!(
            auth.authenticate(SOURCE, Credentials::None).await,
            Err(AuthError::Denied)
        );
    }
    assert_eq!(
        auth.authenticate(SOURCE, Credentials::None).await,
        Err(AuthError::Throttled)
    );
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
    let file = temp_file(public_pem);
    let config = AuthConfig {
        jwt: Some(JwtAuth {
            public_key_files: vec![file.0.clone()],
            device_claim: "sub".into(),
            issuer: None,
            audience: None,
        }),
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
