//! Device authentication: argon2 password hashes, JWTs (RS256/ES256) and client
//! certificates, plus throttling of failed logins (per source address and per device id).
//!
//! Every failure looks the same to the device (`AuthError::Denied`): whether the device
//! exists is never revealed, and unknown devices cost as much CPU (and are throttled the
//! same way) as known ones. Password checks run in a fixed number of slots with reused
//! memory ([`hashing`]); throttling slows attackers without refusing a correct password
//! from a busy address ([`throttle`]).

mod hashing;
mod registry;
mod throttle;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use argon2::{Argon2, PasswordHasher};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tributary_contract::gateway_config::{AuthConfig, JwtAuth};

use self::hashing::HashingPool;
pub(crate) use self::hashing::StoredHash;
use self::throttle::Throttle;
use crate::metrics::{LoginKind, Metrics};
use crate::registry::activity::Event;
use crate::registry::Registry;
use crate::tls::PeerCertificate;
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
    /// The device id's password checks are booked out past the login deadline (too many
    /// recent failures for it); try again later. Unknown ids are throttled alike.
    #[error("too many failed logins")]
    Throttled,
    /// No password check slot freed up in time, or the queue for them is full.
    #[error("password checks busy")]
    Busy,
}

/// How long a login may wait (throttling and the password check queue) when the caller
/// has no deadline of its own.
pub const DEFAULT_LOGIN_WAIT: Duration = Duration::from_secs(10);

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
    /// A verified client certificate (its device id and issuer).
    Certificate(PeerCertificate),
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

/// A public key that verifies device tokens, with its algorithm.
pub(crate) struct JwtKey {
    key: DecodingKey,
    algorithm: Algorithm,
}

/// Parses a PEM RSA (RS256) or P-256 EC (ES256) public key.
pub(crate) fn parse_jwt_key(pem: &str) -> Option<JwtKey> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
        return Some(JwtKey {
            key,
            algorithm: Algorithm::RS256,
        });
    }
    DecodingKey::from_ec_pem(pem.as_bytes())
        .ok()
        .map(|key| JwtKey {
            key,
            algorithm: Algorithm::ES256,
        })
}

/// Verifies device credentials.
pub struct Authenticator {
    passwords: HashMap<String, StoredHash>,
    /// Verified against for unknown devices so they take as long as known ones.
    dummy_hash: Option<StoredHash>,
    jwt_keys: Vec<JwtKey>,
    jwt_validation: Vec<Validation>,
    /// How tokens signed with a table device's key are checked: [RS256, ES256].
    table_jwt_validation: [Validation; 2],
    device_claim: String,
    /// Longest remaining validity a token may claim (`jwt.maxTokenLifetimeSeconds`).
    max_token_lifetime: Option<u64>,
    allow_anonymous: bool,
    anonymous_device: String,
    throttle: Throttle,
    /// Password checks are CPU- and memory-heavy: a fixed number of slots with reused
    /// argon2 memory, and a bounded queue in front of them.
    hashing: HashingPool,
    /// The device table, when the Gateway has one: its devices take their credentials
    /// from it only.
    registry: Option<Arc<Registry>>,
    /// Where logins are counted by credential type.
    metrics: Option<Arc<Metrics>>,
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
                let key = parse_jwt_key(&read(path)?).ok_or_else(|| AuthLoadError::JwtKey {
                    path: path.display().to_string(),
                })?;
                jwt_validation.push(jwt_validation_for(key.algorithm, jwt));
                jwt_keys.push(key);
            }
        }
        // Without a password file there is no device whose existence could leak.
        let dummy_hash = passwords.values().next().and_then(dummy_hash);
        // Every slot's memory fits the costliest hash, allocated once and reused.
        let blocks = passwords
            .values()
            .chain(&dummy_hash)
            .map(StoredHash::blocks)
            .max()
            .unwrap_or(0);
        Ok(Self {
            passwords,
            dummy_hash,
            jwt_keys,
            jwt_validation,
            table_jwt_validation: [Algorithm::RS256, Algorithm::ES256]
                .map(|algorithm| table_jwt_validation(algorithm, config.jwt.as_ref())),
            device_claim,
            max_token_lifetime: config
                .jwt
                .as_ref()
                .and_then(|jwt| jwt.max_token_lifetime_seconds),
            allow_anonymous: config.allow_anonymous,
            anonymous_device: config.anonymous_device.clone(),
            throttle: Throttle::new(config.failed_logins_per_minute),
            hashing: HashingPool::new(
                usize::from(config.password_check_slots),
                usize::from(config.password_check_queue),
                blocks,
            ),
            registry: None,
            metrics: None,
        })
    }

    /// Takes the credentials of `registry`'s devices from it, and counts logins in
    /// `metrics`.
    pub fn with_registry(
        mut self,
        registry: Option<Arc<Registry>>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        self.registry = registry;
        self.metrics = metrics;
        self
    }

    /// Whether JWT authentication is configured (Gateway keys, or a device table whose
    /// devices may have keys).
    pub fn jwt_enabled(&self) -> bool {
        !self.jwt_keys.is_empty() || self.registry.is_some()
    }

    /// Authenticates a device; returns its device id. Waits at most
    /// [`DEFAULT_LOGIN_WAIT`]; see [`Authenticator::authenticate_by`].
    pub async fn authenticate(
        self: &Arc<Self>,
        source: IpAddr,
        credentials: Credentials,
    ) -> Result<String, AuthError> {
        let deadline = tokio::time::Instant::now() + DEFAULT_LOGIN_WAIT;
        self.authenticate_by(source, credentials, deadline).await
    }

    /// Authenticates a device; returns its device id. Throttling and the wait for a
    /// password check slot end by `deadline` (`Throttled` / `Busy`); a check that started
    /// runs to its end. CPU-heavy hashing runs on the blocking pool.
    pub async fn authenticate_by(
        self: &Arc<Self>,
        source: IpAddr,
        credentials: Credentials,
        deadline: tokio::time::Instant,
    ) -> Result<String, AuthError> {
        let table_device = match &credentials {
            Credentials::Password { device, .. } => self
                .registry
                .as_ref()
                .filter(|registry| registry.current().contains(device))
                .map(|_| device.clone()),
            _ => None,
        };
        let result = self.verify(source, credentials, deadline).await;
        if let Some(registry) = &self.registry {
            match &result {
                Ok((device, _)) => registry.record(device, Event::Login),
                Err(AuthError::Denied) => {
                    if let Some(device) = &table_device {
                        registry.record(device, Event::Rejected);
                    }
                }
                Err(_) => {}
            }
        }
        let (device, kind) = result?;
        if let Some(metrics) = &self.metrics {
            metrics.login(kind);
        }
        Ok(device)
    }

    /// Checks the credentials; the device id and how it authenticated.
    async fn verify(
        self: &Arc<Self>,
        source: IpAddr,
        credentials: Credentials,
        deadline: tokio::time::Instant,
    ) -> Result<(String, LoginKind), AuthError> {
        match credentials {
            // Verified by the TLS handshake; nothing to guess.
            Credentials::Certificate(peer) => self.check_certificate(peer),
            Credentials::None if self.allow_anonymous => {
                Ok((self.anonymous_device.clone(), LoginKind::Anonymous))
            }
            Credentials::None => {
                // Cheap to refuse, but counted: the address's next attempts wait.
                let _ = self.throttle.admit(source, None, deadline);
                Err(AuthError::Denied)
            }
            Credentials::Token(token) => {
                // The device id is only known once the signature checks out: by address.
                let admission = self.admit(source, None, deadline).await?;
                let result = match self.check_table_token(&token) {
                    Some(result) => result,
                    None => self
                        .check_token(&token)
                        .map(|id| (id, LoginKind::GatewayJwt)),
                };
                if result.is_ok() {
                    self.throttle.succeeded(&admission);
                }
                result
            }
            Credentials::Password { device, password } => {
                let admission = self.admit(source, Some(&device), deadline).await?;
                let entry = self.registry.as_ref().and_then(|r| r.device(&device));
                let result = match entry {
                    Some(entry) => {
                        self.check_table_password(device, &entry, password, deadline)
                            .await
                    }
                    None => self
                        .check_password(device, password, deadline)
                        .await
                        .map(|id| (id, LoginKind::PasswordFile)),
                };
                if result.is_ok() {
                    self.throttle.succeeded(&admission);
                }
                result
            }
        }
    }

    /// Counts the attempt as a failure (taken back on success) and waits out its delay.
    async fn admit(
        &self,
        source: IpAddr,
        identity: Option<&str>,
        deadline: tokio::time::Instant,
    ) -> Result<throttle::Admission, AuthError> {
        let admission = self
            .throttle
            .admit(source, identity, deadline)
            .map_err(|throttle::Throttled| AuthError::Throttled)?;
        if !admission.wait.is_zero() {
            let until = tokio::time::Instant::now() + admission.wait;
            if until >= deadline {
                return Err(AuthError::Busy);
            }
            tokio::time::sleep_until(until).await;
        }
        Ok(admission)
    }

    async fn check_password(
        &self,
        device: String,
        password: Vec<u8>,
        deadline: tokio::time::Instant,
    ) -> Result<String, AuthError> {
        let (hash, known) = match self.passwords.get(&device) {
            Some(hash) => (hash, true),
            None => match &self.dummy_hash {
                Some(dummy) => (dummy, false),
                None => {
                    // No password file: cost what a generated-secret check costs.
                    self.check_unknown_generated(&password);
                    return Err(AuthError::Denied);
                }
            },
        };
        match self.hashing.check(hash.clone(), password, deadline).await {
            Ok(true) if known => Ok(device),
            Ok(_) => Err(AuthError::Denied),
            Err(hashing::Busy) => Err(AuthError::Busy),
        }
    }

    /// Failed logins counted for `device` in its current window (metrics, tests).
    pub fn device_failures(&self, device: &str) -> u32 {
        self.throttle.identity_failures(device)
    }

    /// Failed logins counted for the client address `source` in its current window
    /// (behind a PROXY protocol load balancer, the address the header named).
    pub fn address_failures(&self, source: IpAddr) -> u32 {
        self.throttle.address_failures(source)
    }

    /// (source addresses, device ids) with failures being tracked; each is bounded.
    pub fn tracked_failures(&self) -> (usize, usize) {
        self.throttle.tracked()
    }

    /// Password checks started since load.
    pub fn password_checks_started(&self) -> u64 {
        self.hashing.started()
    }

    /// Password checks running now.
    pub fn password_checks_running(&self) -> usize {
        self.hashing.running()
    }

    /// Password logins waiting for a check slot now.
    pub fn password_checks_waiting(&self) -> usize {
        self.hashing.waiting()
    }

    fn check_token(&self, token: &str) -> Result<String, AuthError> {
        for (key, validation) in self.jwt_keys.iter().zip(&self.jwt_validation) {
            let Ok(data) = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, validation)
            else {
                continue;
            };
            if outlives(
                &data.claims,
                self.max_token_lifetime,
                jsonwebtoken::get_current_timestamp(),
            ) {
                return Err(AuthError::Denied);
            }
            return match data.claims.get(&self.device_claim).and_then(|v| v.as_str()) {
                Some(device) if is_safe_identity(device) => Ok(device.to_owned()),
                _ => Err(AuthError::Denied),
            };
        }
        Err(AuthError::Denied)
    }
}

/// How tokens signed with `algorithm` are checked: `exp` always, `nbf` when present (30 s
/// of clock skew either way), and a configured issuer or audience must be in the token.
fn jwt_validation_for(algorithm: Algorithm, jwt: &JwtAuth) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = JWT_LEEWAY_SECONDS;
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    if let Some(issuer) = &jwt.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &jwt.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// How tokens signed with a table device's key are checked: as Gateway-level tokens when
/// `auth.jwt` is configured (issuer, audience), else `exp` required, `nbf` when present.
fn table_jwt_validation(algorithm: Algorithm, jwt: Option<&JwtAuth>) -> Validation {
    if let Some(jwt) = jwt {
        return jwt_validation_for(algorithm, jwt);
    }
    let mut validation = Validation::new(algorithm);
    validation.leeway = JWT_LEEWAY_SECONDS;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp"]);
    validation
}

/// Clock skew tolerated between the token issuer and the gateway.
const JWT_LEEWAY_SECONDS: u64 = 30;

/// Whether a token's `exp` lies further ahead than `max_lifetime` (plus the leeway).
fn outlives(claims: &serde_json::Value, max_lifetime: Option<u64>, now: u64) -> bool {
    let (Some(max), Some(exp)) = (max_lifetime, claims.get("exp").and_then(|v| v.as_u64())) else {
        return false;
    };
    exp > now.saturating_add(max).saturating_add(JWT_LEEWAY_SECONDS)
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
fn dummy_hash(like: &StoredHash) -> Option<StoredHash> {
    let phc = like
        .argon2()
        .hash_password(b"tributary-dummy")
        .ok()?
        .to_string();
    StoredHash::parse(&phc)
}

fn read(path: &Path) -> Result<String, AuthLoadError> {
    std::fs::read_to_string(path).map_err(|source| AuthLoadError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Parses `device:hash` lines; blank lines and `#` comments are skipped.
fn parse_password_file(
    path: &Path,
    text: &str,
) -> Result<HashMap<String, StoredHash>, AuthLoadError> {
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
        if !is_safe_identity(device) {
            return Err(bad());
        }
        let hash = StoredHash::parse(hash).ok_or_else(bad)?;
        out.insert(device.to_owned(), hash);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
