//! JWT inputs: a token (as the MQTT password) whose claims or signature are hostile; the
//! gateway requires the configured issuer and audience and a bounded lifetime.

use std::net::IpAddr;
use std::time::Instant;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::bench::{self, connect_from, Bench};
use crate::mqtt::{classify, connect};
use crate::table::Outcome;

/// A token presented as the MQTT 3.1.1 password.
pub struct Input {
    pub what: String,
    pub token: String,
}

impl Input {
    pub fn describe(&self) -> String {
        self.what.clone()
    }

    pub async fn run(&self, bench: &Bench, from: IpAddr) -> Outcome {
        let mut stream = match connect_from(from, bench.mqtt()).await {
            Ok(stream) => stream,
            Err(error) => return Outcome::Other(format!("connect: {error}")),
        };
        let packet = connect(false, "", "jwt", self.token.as_bytes(), &[], None, 60);
        let _ = stream.write_all(&packet).await;
        classify(&mut stream, Instant::now()).await
    }
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Claims every check accepts.
pub fn good_claims() -> Value {
    json!({
        "sub": "dev-57",
        "exp": now() + 600,
        "iss": bench::JWT_ISSUER,
        "aud": bench::JWT_AUDIENCE,
    })
}

/// `good_claims` with `changes` applied (a null removes the claim).
pub fn claims_with(changes: Value) -> Value {
    let mut claims = good_claims();
    if let (Some(claims), Some(changes)) = (claims.as_object_mut(), changes.as_object()) {
        for (key, value) in changes {
            if value.is_null() {
                claims.remove(key);
            } else {
                claims.insert(key.clone(), value.clone());
            }
        }
    }
    claims
}

pub fn sign(key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, key).expect("sign")
}

/// The rows' (name, input, expected CONNACK) with the bench's signing key.
pub fn inputs(bench: &Bench) -> Vec<(&'static str, Input, Outcome)> {
    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let stranger = EncodingKey::from_ec_pem(stranger.serialize_pem().as_bytes()).expect("key");
    let signed = |what: &str, changes: Value| Input {
        what: format!("token {what}"),
        token: sign(&bench.jwt_key, &claims_with(changes)),
    };
    // HS256 with the public key as the shared secret: the classic algorithm confusion.
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good_claims(),
        &EncodingKey::from_secret(bench.jwt_public_pem.as_bytes()),
    )
    .expect("sign");
    let refused = Outcome::Connack(4);
    vec![
        (
            "valid token",
            signed("with every claim right", json!({})),
            Outcome::Connack(0),
        ),
        (
            "no iss",
            signed("without iss (issuer configured)", json!({"iss": null})),
            refused.clone(),
        ),
        (
            "no aud",
            signed("without aud (audience configured)", json!({"aud": null})),
            refused.clone(),
        ),
        (
            "other iss",
            signed("from another issuer", json!({"iss": "https://elsewhere"})),
            refused.clone(),
        ),
        (
            "other aud",
            signed("for another audience", json!({"aud": "someone-else"})),
            refused.clone(),
        ),
        (
            "nbf ahead",
            signed("with nbf 10 minutes ahead", json!({"nbf": now() + 600})),
            refused.clone(),
        ),
        (
            "nbf past",
            signed("with nbf a minute ago", json!({"nbf": now() - 60})),
            Outcome::Connack(0),
        ),
        (
            "lifetime over the maximum",
            signed(
                "valid for a year (maximum 1 h)",
                json!({"exp": now() + 365 * 86_400}),
            ),
            refused.clone(),
        ),
        (
            "expired",
            signed("expired an hour ago", json!({"exp": now() - 3600})),
            refused.clone(),
        ),
        (
            "no exp",
            signed("without exp", json!({"exp": null})),
            refused.clone(),
        ),
        (
            "wildcard subject",
            signed("with sub `#`", json!({"sub": "#"})),
            refused.clone(),
        ),
        (
            "foreign key",
            Input {
                what: "token signed by another key".into(),
                token: sign(&stranger, &good_claims()),
            },
            refused.clone(),
        ),
        (
            "algorithm confusion",
            Input {
                what: "HS256 token keyed with the ES256 public key".into(),
                token: confused,
            },
            refused.clone(),
        ),
        (
            "garbage",
            Input {
                what: "`eyJ.x.y`".into(),
                token: "eyJ.x.y".into(),
            },
            refused,
        ),
    ]
}
