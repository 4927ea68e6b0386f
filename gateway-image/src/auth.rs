//! Device authentication: argon2 password hashes, JWTs (RS256/ES256) and client
//! certificates, plus a limit on failed logins per source address.
//!
//! Every failure looks the same to the device (`AuthError::Denied`): whether the device
//! exists is never revealed, and unknown devices cost as much CPU as known ones.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tributary_contract::gateway_config::AuthConfig;

use crate::topics::is_safe_identity;

/// Errors loading authentication sources.
#[derive(Debug, thiserror::Error)]
pub enum AuthLoadError {
    /// A file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A password file line is not `device:hash` with a valid PHC hash.
    #[error("{path} line {line}: expected `device:$argon2id$...`")]
    PasswordLine {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
    },
    /// A JWT public key file holds neither an RSA nor an EC public key.
    #[error("{path}: not a PEM RSA or EC public key")]
    JwtKey {
        /// The file.
        path: String,
    },
}

/// Why authentication failed. Deliberately uninformative towards the device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Wrong or missing credentials (the only thing the device learns).
    #[error("bad credentials")]
    Denied,
    /// Too many failed logins from this address recently.
    #[error("too many failed logins")]
    Throttled,
}

/// What a device presented.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Device id and password.
    Password {
        /// The device id (MQTT user name, HTTP Basic user).
        device: String,
        /// The password.
        password: Vec<u8>,
    },
    /// A JWT.
    Token(String),
    /// A verified client certificate's device id.
    Certificate(String),
    /// Nothing.
    None,
}

impl Credentials {
    /// The method label for metrics.
    pub fn method(&self) -> &'static str {
        match self {
            Credentials::Password { .. } => "password",
            Credentials::Token(_) => "jwt",
            Credentials::Certificate(_) => "certificate",
            Credentials::None => "none",
        }
    }
}

/// Whether a password looks like a JWT (three base64url parts).
pub fn looks_like_jwt(password: &[u8]) -> bool {
    password.starts_with(b"eyJ") && password.iter().filter(|&&b| b == b'.').count() == 2
}

struct JwtKey {
    key: DecodingKey,
    algorithm: Algorithm,
}

/// Verifies device credentials.
pub struct Authenticator {
    passwords: HashMap<String, String>,
    /// Verified against for unknown devices so they take as long as known ones.
    dummy_hash: String,
    jwt_keys: Vec<JwtKey>,
    jwt_validation: Vec<Validation>,
    device_claim: String,
    allow_anonymous: bool,
    anonymous_device: String,
    failures: FailureLimiter,
    /// Password hashing is CPU- and memory-heavy (argon2 allocates its memory cost per
    /// hash): a login storm must not spawn hundreds of blocking threads, each keeping its
    /// allocator arena, so at most one verification per core runs at once.
    hashing: tokio::sync::Semaphore,
}

impl Authenticator {
    /// Loads password hashes and JWT keys from the files named in `config`.
    pub fn load(config: &AuthConfig) -> Result<Self, AuthLoadError> {
        let passwords = match &config.password_file {
            Some(path) => parse_password_file(path, &read(path)?)?,
            None => HashMap::new(),
        };
        let mut jwt_keys = Vec::new();
        let mut jwt_validation = Vec::new();
        let mut device_claim = "sub".to_owned();
        if let Some(jwt) = &config.jwt {
            device_claim = jwt.device_claim.clone();
            for path in &jwt.public_key_files {
                let pem = read(path)?;
                let key = if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                    JwtKey {
                        key,
                        algorithm: Algorithm::RS256,
                    }
                } else if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                    JwtKey {
                        key,
                        algorithm: Algorithm::ES256,
                    }
                } else {
                    return Err(AuthLoadError::JwtKey {
                        path: path.display().to_string(),
                    });
                };
                let mut validation = Validation::new(key.algorithm);
                validation.leeway = 30;
                validation.set_required_spec_claims(&["exp"]);
                if let Some(issuer) = &jwt.issuer {
                    validation.set_issuer(&[issuer]);
                }
                match &jwt.audience {
                    Some(audience) => validation.set_audience(&[audience]),
                    None => validation.validate_aud = false,
                }
                jwt_validation.push(validation);
                jwt_keys.push(key);
            }
        }
        // Without a password file there is no device whose existence could leak.
        let dummy_hash = match passwords.values().next() {
            Some(like) => dummy_hash(like),
            None => String::new(),
        };
        Ok(Self {
            passwords,
            dummy_hash,
            jwt_keys,
            jwt_validation,
            device_claim,
            allow_anonymous: config.allow_anonymous,
            anonymous_device: config.anonymous_device.clone(),
            failures: FailureLimiter::new(config.failed_logins_per_minute),
            hashing: tokio::sync::Semaphore::new(
                std::thread::available_parallelism()
                    .map(usize::from)
                    .unwrap_or(2),
            ),
        })
    }

    /// Whether JWT authentication is configured.
    pub fn jwt_enabled(&self) -> bool {
        !self.jwt_keys.is_empty()
    }

    /// Authenticates a device; returns its device id. CPU-heavy hashing runs on the
    /// blocking pool.
    pub async fn authenticate(
        self: &Arc<Self>,
        source: IpAddr,
        credentials: Credentials,
    ) -> Result<String, AuthError> {
        if self.failures.is_throttled(source) {
            return Err(AuthError::Throttled);
        }
        let this = Arc::clone(self);
        let result = match credentials {
            Credentials::Certificate(device) if is_safe_identity(&device) => Ok(device),
            Credentials::Certificate(_) => Err(AuthError::Denied),
            Credentials::Password { device, password } => match self.hashing.acquire().await {
                Ok(_permit) => {
                    tokio::task::spawn_blocking(move || this.check_password(device, &password))
                        .await
                        .unwrap_or(Err(AuthError::Denied))
                }
                Err(_) => Err(AuthError::Denied),
            },
            Credentials::Token(token) => self.check_token(&token),
            Credentials::None if self.allow_anonymous => Ok(self.anonymous_device.clone()),
            Credentials::None => Err(AuthError::Denied),
        };
        if result.is_err() {
            self.failures.record(source);
        }
        result
    }

    fn check_password(&self, device: String, password: &[u8]) -> Result<String, AuthError> {
        let (hash, known) = match self.passwords.get(&device) {
            Some(hash) => (hash.as_str(), true),
            None if self.dummy_hash.is_empty() => return Err(AuthError::Denied),
            None => (self.dummy_hash.as_str(), false),
        };
        let verified = Argon2::default().verify_password(password, hash).is_ok();
        if verified && known {
            Ok(device)
        } else {
            Err(AuthError::Denied)
        }
    }

    fn check_token(&self, token: &str) -> Result<String, AuthError> {
        for (key, validation) in self.jwt_keys.iter().zip(&self.jwt_validation) {
            let Ok(data) = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, validation)
            else {
                continue;
            };
            return match data.claims.get(&self.device_claim).and_then(|v| v.as_str()) {
                Some(device) if is_safe_identity(device) => Ok(device.to_owned()),
                _ => Err(AuthError::Denied),
            };
        }
        Err(AuthError::Denied)
    }
}

/// Hashes a password as an argon2id PHC string with the recommended cost (for writing
/// password files).
pub fn hash_password(password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    Argon2::default()
        .hash_password(password)
        .map(|hash| hash.to_string())
}

/// Hashes a password with a low argon2 cost: only for tests, where debug builds make the
/// recommended cost take seconds.
pub fn hash_password_cheap(password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    let params = argon2::Params::new(1024, 1, 1, None).unwrap_or_default();
    Argon2::from(params)
        .hash_password(password)
        .map(|hash| hash.to_string())
}

/// A hash of a fixed password with the same cost as the real ones, so that unknown devices
/// take as long to refuse as wrong passwords.
fn dummy_hash(like: &str) -> String {
    let params = argon2::PasswordHash::new(like)
        .ok()
        .and_then(|hash| argon2::Params::try_from(&hash).ok())
        .unwrap_or_default();
    Argon2::from(params)
        .hash_password(b"tributary-dummy")
        .map(|h| h.to_string())
        .unwrap_or_default()
}

fn read(path: &Path) -> Result<String, AuthLoadError> {
    std::fs::read_to_string(path).map_err(|source| AuthLoadError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Parses `device:hash` lines; blank lines and `#` comments are skipped.
fn parse_password_file(path: &Path, text: &str) -> Result<HashMap<String, String>, AuthLoadError> {
    let mut out = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || AuthLoadError::PasswordLine {
            path: path.display().to_string(),
            line: index + 1,
        };
        let (device, hash) = line.split_once(':').ok_or_else(bad)?;
        if !is_safe_identity(device) || argon2::PasswordHash::new(hash).is_err() {
            return Err(bad());
        }
        out.insert(device.to_owned(), hash.to_owned());
    }
    Ok(out)
}

/// Counts failed logins per source address in one-minute windows.
struct FailureLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn is_throttled(&self, source: IpAddr) -> bool {
        let Ok(windows) = self.windows.lock() else {
            return false;
        };
        windows.get(&source).is_some_and(|(start, count)| {
            start.elapsed() < Duration::from_secs(60) && *count >= self.per_minute
        })
    }

    fn record(&self, source: IpAddr) {
        let Ok(mut windows) = self.windows.lock() else {
            return;
        };
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| start.elapsed() < Duration::from_secs(60));
        }
        let entry = windows.entry(source).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= Duration::from_secs(60) {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
