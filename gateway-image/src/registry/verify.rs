//! Generated secrets: a keyed fast hash (HMAC-SHA256) compared in constant time. The
//! secrets are random (at least 128 bits), so a slow hash adds nothing but cost.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::table::Verifier;

/// HMAC-SHA256(`key`, `secret`).
pub fn mac(key: &[u8], secret: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0; 32],
    };
    mac.update(secret);
    mac.finalize().into_bytes().into()
}

/// The verifier the operator writes for `secret`: base64(HMAC-SHA256(key, secret)).
pub fn verifier_for(key: &[u8], secret: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(mac(key, secret))
}

/// Whether `password` is the secret of one of `verifiers` still valid at `now_ms`. The
/// HMAC is computed and every verifier compared whatever matched, in constant time.
pub fn generated_matches(key: &[u8], password: &[u8], verifiers: &[Verifier], now_ms: u64) -> bool {
    let presented = mac(key, password);
    verifiers.iter().fold(false, |matched, verifier| {
        let equal = constant_time_eq(&presented, &verifier.mac);
        matched | (equal & verifier.valid_at(now_ms))
    })
}

/// Equality of two byte strings whose time depends on neither's contents: both are hashed
/// first (SHA-256), then the digests are compared without an early exit. For bearer tokens,
/// whose length must not leak either.
pub fn token_eq(presented: &[u8], expected: &[u8]) -> bool {
    constant_time_eq(
        &Sha256::digest(presented).into(),
        &Sha256::digest(expected).into(),
    )
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(key: &[u8], secret: &[u8], not_after_ms: Option<u64>) -> Verifier {
        Verifier {
            mac: mac(key, secret),
            not_after_ms,
        }
    }

    #[test]
    fn the_right_secret_matches_and_a_wrong_one_or_key_does_not() {
        let verifiers = [verifier(b"key", b"s3cret", None)];
        assert!(generated_matches(b"key", b"s3cret", &verifiers, 0));
        assert!(!generated_matches(b"key", b"s3creT", &verifiers, 0));
        assert!(!generated_matches(b"other key", b"s3cret", &verifiers, 0));
        assert!(!generated_matches(b"key", b"s3cret", &[], 0));
    }

    #[test]
    fn a_rotated_out_secret_matches_until_its_not_after() {
        let verifiers = [
            verifier(b"key", b"old", Some(1_000)),
            verifier(b"key", b"new", None),
        ];
        assert!(generated_matches(b"key", b"old", &verifiers, 1_000));
        assert!(generated_matches(b"key", b"new", &verifiers, 1_000));
        assert!(!generated_matches(b"key", b"old", &verifiers, 1_001));
        assert!(generated_matches(b"key", b"new", &verifiers, 1_001));
    }

    #[test]
    fn the_verifier_is_base64_of_the_hmac() {
        // RFC 4231 test case 2.
        let text = verifier_for(b"Jefe", b"what do ya want for nothing?");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("base64");
        assert_eq!(
            bytes[..4],
            [0x5b, 0xdc, 0xc1, 0x46],
            "HMAC-SHA256 per RFC 4231"
        );
    }

    #[test]
    fn tokens_compare_by_content_only() {
        assert!(token_eq(b"abc", b"abc"));
        assert!(!token_eq(b"abc", b"abd"));
        assert!(!token_eq(b"abc", b"abcd"));
        assert!(!token_eq(b"", b"abc"));
    }
}
