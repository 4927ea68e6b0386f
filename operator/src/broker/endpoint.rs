//! How to reach a Queue's broker: the managed RabbitMQ through its Service with the
//! generated credentials, or the external one from the URIs in the user's Secrets. Both the
//! Queue controller and the autoscaler dereference a Queue's broker here.
//!
//! An [`Endpoint`] carries credentials: never log it.

use super::management::Management;
use crate::build::queue::{
    self as build, BrokerPlan, Credentials, ManagedNames, AMQP_PORT, KEY_COOKIE, KEY_PASSWORD,
    KEY_USERNAME, MANAGEMENT_PORT,
};
use crate::build::BuildError;
use crate::crd::Queue;
use crate::reads::{Reads, SecretData};
use kube::ResourceExt;
use std::sync::Arc;

/// How the operator reaches the broker of a Queue (credentials inside: never log).
pub struct Endpoint {
    /// AMQP URI.
    pub amqp_uri: String,
    /// PEM bundle of the broker's private CA (an external broker's `caSecretRef`).
    pub ca: Option<String>,
    /// Management API, when the broker has one the operator knows.
    pub management: Option<Management>,
}

impl Endpoint {
    /// The AMQP side of the endpoint, for the [`super::Broker`] pool.
    pub fn amqp(&self) -> super::Amqp<'_> {
        super::Amqp {
            uri: &self.amqp_uri,
            ca: self.ca.as_deref(),
        }
    }
}

/// Why a Queue's broker cannot be reached yet (the caller decides what to report).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unreachable {
    /// The Queue's spec is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The managed broker's Service has no address yet.
    #[error("broker Service has no address yet")]
    NoAddress,
    /// The Secret with the external broker's URI, or its key, does not exist.
    #[error("Secret {name:?} with key {key:?} does not exist")]
    MissingSecret {
        /// Secret name.
        name: String,
        /// Key in it.
        key: String,
    },
}

/// Why the lookup itself failed.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The Queue lacks metadata, or no credentials could be generated.
    #[error("building children: {0}")]
    Build(#[from] BuildError),
}

/// Validates the Queue and dereferences how to reach its broker.
pub async fn lookup(
    reads: &Reads,
    queue: &Queue,
) -> Result<Result<Endpoint, Unreachable>, LookupError> {
    let plan = match build::validate(queue) {
        Ok(plan) => plan,
        Err(BuildError::Invalid(message)) => return Ok(Err(Unreachable::Invalid(message))),
        Err(other) => return Err(other.into()),
    };
    lookup_plan(reads, queue, &plan).await
}

/// Dereferences how to reach the broker of a validated Queue.
pub async fn lookup_plan(
    reads: &Reads,
    queue: &Queue,
    plan: &BrokerPlan,
) -> Result<Result<Endpoint, Unreachable>, LookupError> {
    let namespace = queue.namespace().unwrap_or_default();
    let (uri, management_uri, ca_ref) = match plan {
        BrokerPlan::Managed(_) => {
            return Ok(managed(reads, queue).await?.ok_or(Unreachable::NoAddress));
        }
        BrokerPlan::External {
            uri,
            management_uri,
            ca,
        } => (uri, management_uri, ca),
    };
    let read = |data: Option<Arc<SecretData>>, key: &str| {
        data.and_then(|d| d.get(key).cloned())
            .and_then(|v| String::from_utf8(v).ok())
    };
    let Some(amqp_uri) = read(reads.secret_data(&namespace, &uri.name).await?, &uri.key) else {
        return Ok(Err(Unreachable::MissingSecret {
            name: uri.name.clone(),
            key: uri.key.clone(),
        }));
    };
    let amqp_uri = amqp_uri.trim().to_owned();
    let ca = match ca_ref {
        Some(r) => {
            let Some(pem) = read(reads.secret_data(&namespace, &r.name).await?, &r.key) else {
                return Ok(Err(Unreachable::MissingSecret {
                    name: r.name.clone(),
                    key: r.key.clone(),
                }));
            };
            if let Err(message) = check_ca_use(&amqp_uri, &pem) {
                return Ok(Err(Unreachable::Invalid(message)));
            }
            Some(pem)
        }
        None => None,
    };
    let management = match management_uri {
        Some(r) => read(reads.secret_data(&namespace, &r.name).await?, &r.key)
            .and_then(|text| Management::from_uri(text.trim())),
        None => None,
    };
    Ok(Ok(Endpoint {
        amqp_uri,
        ca,
        management,
    }))
}

/// Whether a private CA fits the URI: only an `amqps://` URI uses one, and the bundle must
/// hold a certificate. The message names the fields, never the URI.
pub fn check_ca_use(amqp_uri: &str, pem: &str) -> Result<(), String> {
    if !amqp_uri.to_ascii_lowercase().starts_with("amqps://") {
        return Err(
            "spec.broker.external.caSecretRef needs an amqps:// URI in uriSecretRef (a CA does \
             nothing on a plain amqp:// connection)"
                .into(),
        );
    }
    tributary_service_kit::amqp::check_ca(pem, "spec.broker.external.caSecretRef")
        .map_err(|error| error.to_string())
}

/// How to reach the Queue's managed broker through its Service; `None` while (or when) the
/// Service has no address.
pub async fn managed(reads: &Reads, queue: &Queue) -> Result<Option<Endpoint>, LookupError> {
    let namespace = queue.namespace().unwrap_or_default();
    managed_by_name(reads, &namespace, &queue.name_any()).await
}

/// [`managed`] by the Queue's namespace and name (the Gateway and Worker controllers reach
/// the broker of a Queue they name, also once the Queue itself is gone).
pub async fn managed_by_name(
    reads: &Reads,
    namespace: &str,
    queue: &str,
) -> Result<Option<Endpoint>, LookupError> {
    let names = ManagedNames::for_queue(queue);
    let ip = reads
        .service(namespace, &names.broker)
        .await?
        .and_then(|s| s.spec)
        .and_then(|s| s.cluster_ip)
        .filter(|ip| ip != "None");
    let Some(ip) = ip else {
        return Ok(None);
    };
    let creds = credentials(reads, namespace, &names).await?;
    // The ClusterIP works from inside the cluster and from a node alike.
    Ok(Some(Endpoint {
        ca: None,
        amqp_uri: format!(
            "amqp://{}:{}@{ip}:{AMQP_PORT}/%2f",
            creds.username, creds.password
        ),
        management: Some(Management {
            base_url: format!("http://{ip}:{MANAGEMENT_PORT}"),
            username: creds.username,
            password: creds.password,
        }),
    }))
}

/// The managed broker's credentials: read back from its Secret, or generated the first
/// time.
pub async fn credentials(
    reads: &Reads,
    namespace: &str,
    names: &ManagedNames,
) -> Result<Credentials, LookupError> {
    let existing = reads.secret_data(namespace, &names.credentials).await?;
    let text = |key: &str| {
        existing
            .as_ref()
            .and_then(|data| data.get(key))
            .and_then(|value| String::from_utf8(value.clone()).ok())
            .filter(|value| !value.is_empty())
    };
    Ok(Credentials {
        username: text(KEY_USERNAME).unwrap_or_else(|| "tributary".to_owned()),
        password: match text(KEY_PASSWORD) {
            Some(password) => password,
            None => random_token(24)?,
        },
        erlang_cookie: match text(KEY_COOKIE) {
            Some(cookie) => cookie,
            None => random_token(32)?,
        },
    })
}

/// `bytes` random alphanumeric characters (about 5.95 bits of entropy each).
pub fn random_token(bytes: usize) -> Result<String, BuildError> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer)
        .map_err(|error| BuildError::Invalid(format!("no randomness for credentials: {error}")))?;
    // Alphanumeric only: safe inside URIs without escaping.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    Ok(buffer
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_alphanumeric_and_of_the_asked_length() {
        let token = random_token(24).expect("randomness");
        assert_eq!(token.len(), 24);
        assert!(token.chars().all(|c| c.is_ascii_alphanumeric()), "{token}");
        assert_ne!(token, random_token(24).expect("randomness"));
    }

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_private_ca_with_a_plain_amqp_uri_is_an_invalid_spec() {
        let message = check_ca_use("amqp://u:secret@rabbit:5672/%2f", CA).expect_err("plain");
        assert!(
            message.contains("caSecretRef needs an amqps:// URI"),
            "{message}"
        );
        assert!(!message.contains("secret@"), "{message}");
        assert_eq!(check_ca_use("amqps://u:p@rabbit:5671/%2f", CA), Ok(()));
        assert_eq!(check_ca_use("AMQPS://u:p@rabbit:5671/%2f", CA), Ok(()));
    }

    #[test]
    fn a_ca_secret_without_a_certificate_is_an_invalid_spec() {
        let message =
            check_ca_use("amqps://u:p@rabbit:5671/%2f", "not pem").expect_err("no certificate");
        assert!(message.contains("caSecretRef"), "{message}");
    }

    #[test]
    fn why_a_broker_is_unreachable_reads_as_the_queue_condition_says_it() {
        assert_eq!(
            Unreachable::NoAddress.to_string(),
            "broker Service has no address yet"
        );
        let missing = Unreachable::MissingSecret {
            name: "amqp".into(),
            key: "uri".into(),
        };
        assert_eq!(
            missing.to_string(),
            "Secret \"amqp\" with key \"uri\" does not exist"
        );
    }
}
