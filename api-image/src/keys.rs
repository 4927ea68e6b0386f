//! Application keys: only SHA-256 hashes are configured; a request's bearer key is hashed
//! and looked up. Each key carries the devices it may read, whether it may send them
//! commands, and its own token bucket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use thiserror::Error;
use tributary_contract::api_config::{ApiKey, KeyScope, RateLimit};

/// A key entry that cannot be used.
#[derive(Debug, Error, PartialEq)]
pub enum KeyError {
    /// The hash is not 64 hex digits.
    #[error("api key `{0}`: sha256 must be 64 hex digits (the SHA-256 of the key)")]
    BadHash(String),
    /// Two entries share a name or a hash.
    #[error("api key `{0}` appears twice (by name or by hash)")]
    Duplicate(String),
    /// A scope that admits nothing, or a rate that admits nothing.
    #[error("api key `{0}`: {1}")]
    Invalid(String, String),
}

/// The lowercase hex SHA-256 of a key, as configured.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The devices a key may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every device.
    All,
    /// Exactly these devices (sorted).
    Devices(Vec<String>),
    /// Devices whose id starts with this.
    Prefix(String),
}

impl Scope {
    fn from_config(scope: &KeyScope) -> Self {
        match scope {
            KeyScope::All => Scope::All,
            KeyScope::Devices(list) => {
                let mut list = list.clone();
                list.sort();
                list.dedup();
                Scope::Devices(list)
            }
            KeyScope::DevicePrefix(prefix) => Scope::Prefix(prefix.clone()),
        }
    }

    /// Whether the key may read this device.
    pub fn allows(&self, device: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Devices(list) => list.binary_search_by(|d| d.as_str().cmp(device)).is_ok(),
            Scope::Prefix(prefix) => device.starts_with(prefix.as_str()),
        }
    }

    /// Whether every device with `prefix` is in scope.
    pub fn covers_prefix(&self, prefix: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Devices(_) => false,
            Scope::Prefix(own) => prefix.starts_with(own.as_str()),
        }
    }
}

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: &RateLimit) -> Self {
        let burst = f64::from(limit.burst.max(1));
        Self {
            rate: limit.requests_per_second,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes one token at `now`; `Err(seconds)` until the next one when empty.
    pub fn take_at(&self, now: Instant) -> Result<(), f64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = *state;
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let tokens = (tokens + elapsed * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            Ok(())
        } else {
            *state = (tokens, now);
            Err((1.0 - tokens) / self.rate)
        }
    }

    /// Takes one token now.
    pub fn take(&self) -> Result<(), f64> {
        self.take_at(Instant::now())
    }
}

/// One configured key.
#[derive(Debug)]
pub struct Key {
    /// Its name (for logs and metrics; never the key).
    pub name: String,
    /// The devices it may read.
    pub scope: Scope,
    /// Whether it may send commands to the devices of its scope (`commands: true`).
    pub commands: bool,
    /// Its requests.
    pub bucket: TokenBucket,
}

/// Every configured key, by hash.
#[derive(Debug, Default)]
pub struct Keys {
    by_hash: HashMap<[u8; 32], Arc<Key>>,
}

impl Keys {
    /// Checks and indexes the configured keys.
    pub fn build(keys: &[ApiKey], default_limit: &RateLimit) -> Result<Self, KeyError> {
        let mut by_hash = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for key in keys {
            let digest: [u8; 32] = hex::decode(key.sha256.trim())
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| KeyError::BadHash(key.name.clone()))?;
            let limit = key.rate_limit.as_ref().unwrap_or(default_limit);
            if !(limit.requests_per_second > 0.0 && limit.requests_per_second.is_finite()) {
                return Err(KeyError::Invalid(
                    key.name.clone(),
                    "requestsPerSecond must be above 0".into(),
                ));
            }
            match &key.scope {
                KeyScope::Devices(list) if list.is_empty() => {
                    return Err(KeyError::Invalid(
                        key.name.clone(),
                        "scope.devices must name at least one device".into(),
                    ))
                }
                _ => {}
            }
            if !names.insert(key.name.clone()) || by_hash.contains_key(&digest) {
                return Err(KeyError::Duplicate(key.name.clone()));
            }
            by_hash.insert(
                digest,
                Arc::new(Key {
                    name: key.name.clone(),
                    scope: Scope::from_config(&key.scope),
                    commands: key.commands,
                    bucket: TokenBucket::new(limit),
                }),
            );
        }
        Ok(Self { by_hash })
    }

    /// Whether any key may send commands.
    pub fn any_commands(&self) -> bool {
        self.by_hash.values().any(|key| key.commands)
    }

    /// The key a presented secret belongs to.
    pub fn find(&self, presented: &str) -> Option<Arc<Key>> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.by_hash.get(&digest).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(name: &str, secret: &str, scope: KeyScope) -> ApiKey {
        ApiKey {
            name: name.into(),
            sha256: hash_key(secret),
            scope,
            commands: false,
            rate_limit: None,
        }
    }

    #[test]
    fn hash_matches_sha256sum_output() {
        // printf %s test | sha256sum
        assert_eq!(
            hash_key("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn presented_key_finds_its_entry_and_others_find_nothing() {
        let keys = Keys::build(
            &[
                key("all", "secret-1", KeyScope::All),
                key("a", "secret-2", KeyScope::DevicePrefix("a-".into())),
            ],
            &RateLimit::default(),
        )
        .expect("build");
        assert_eq!(
            keys.find("secret-2").map(|k| k.name.clone()),
            Some("a".into())
        );
        assert!(keys.find("secret-3").is_none());
        assert!(!keys.find("secret-1").is_some_and(|k| k.commands));
        assert!(
            !keys.any_commands(),
            "keys only read unless they say otherwise"
        );
        // The hash itself is not a key.
        assert!(keys.find(&hash_key("secret-1")).is_none());
    }

    #[test]
    fn scopes_admit_only_their_devices() {
        let list = Scope::from_config(&KeyScope::Devices(vec!["b".into(), "a".into()]));
        assert!(list.allows("a") && list.allows("b") && !list.allows("c"));
        assert!(!list.covers_prefix("a"));
        let prefix = Scope::Prefix("site-a-".into());
        assert!(prefix.allows("site-a-7") && !prefix.allows("site-b-7"));
        assert!(prefix.covers_prefix("site-a-1") && !prefix.covers_prefix("site-"));
        assert!(Scope::All.allows("anything") && Scope::All.covers_prefix(""));
    }

    #[test]
    fn bad_hashes_duplicates_and_empty_lists_are_refused() {
        let limit = RateLimit::default();
        let mut bad = key("x", "s", KeyScope::All);
        bad.sha256 = "abc".into();
        assert_eq!(
            Keys::build(&[bad], &limit).err(),
            Some(KeyError::BadHash("x".into()))
        );
        let twice = [key("x", "s", KeyScope::All), key("y", "s", KeyScope::All)];
        assert_eq!(
            Keys::build(&twice, &limit).err(),
            Some(KeyError::Duplicate("y".into()))
        );
        let empty = [key("x", "s", KeyScope::Devices(vec![]))];
        assert!(matches!(
            Keys::build(&empty, &limit),
            Err(KeyError::Invalid(..))
        ));
    }

    #[test]
    fn token_bucket_allows_burst_then_refills_at_rate() {
        let bucket = TokenBucket::new(&RateLimit {
            requests_per_second: 2.0,
            burst: 3,
        });
        let start = Instant::now();
        for _ in 0..3 {
            assert!(bucket.take_at(start).is_ok());
        }
        let wait = bucket.take_at(start).expect_err("empty");
        assert!((wait - 0.5).abs() < 1e-9, "{wait}");
        assert!(bucket.take_at(start + Duration::from_millis(500)).is_ok());
        assert!(bucket.take_at(start + Duration::from_millis(500)).is_err());
    }
}
