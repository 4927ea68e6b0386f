//! The namespace's registry keys: the key of the generated secrets' keyed hash and the
//! device CA, in one operator-made Secret per namespace (`tributary-device-registry`,
//! without an owner: deleting Devices or Gateways never invalidates the others'
//! credentials). Pods never mount it; gateways get the verifier key and the CA certificate
//! (never the CA key) through their own registry Secret.

use crate::build::{BuildError, FIELD_MANAGER};
use base64::Engine;
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::{Api, Client};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

/// Name of the per-namespace registry Secret.
pub const REGISTRY_SECRET: &str = "tributary-device-registry";
const KEY_VERIFIER: &str = "verifier-key";
const KEY_CA_CERT: &str = "ca.crt";
const KEY_CA_KEY: &str = "ca.key";

/// One namespace's keys.
pub struct NamespaceKeys {
    namespace: String,
    verifier_key: Vec<u8>,
    /// PEM of the device CA's certificate.
    pub ca_cert_pem: String,
    ca_key_pem: String,
}

impl std::fmt::Debug for NamespaceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("NamespaceKeys")
            .field("namespace", &self.namespace)
            .field("key_id", &self.key_id())
            .finish()
    }
}

type HmacSha256 = Hmac<Sha256>;

impl NamespaceKeys {
    /// Fresh keys: 32 random bytes and a new self-signed CA.
    pub fn generate(namespace: &str) -> Result<Self, BuildError> {
        let mut verifier_key = vec![0u8; 32];
        getrandom::fill(&mut verifier_key)
            .map_err(|e| BuildError::Invalid(format!("no randomness for the registry key: {e}")))?;
        let key = KeyPair::generate().map_err(certificate_error)?;
        let cert = ca_params(namespace)
            .self_signed(&key)
            .map_err(certificate_error)?;
        Ok(NamespaceKeys {
            namespace: namespace.to_owned(),
            verifier_key,
            ca_cert_pem: cert.pem(),
            ca_key_pem: key.serialize_pem(),
        })
    }

    /// The keys held in a registry Secret's data, `None` when a key is missing.
    pub fn from_data(namespace: &str, data: &BTreeMap<String, Vec<u8>>) -> Option<Self> {
        let text = |key: &str| String::from_utf8(data.get(key)?.clone()).ok();
        let verifier_key = data.get(KEY_VERIFIER).filter(|k| k.len() >= 16)?.clone();
        Some(NamespaceKeys {
            namespace: namespace.to_owned(),
            verifier_key,
            ca_cert_pem: text(KEY_CA_CERT)?,
            ca_key_pem: text(KEY_CA_KEY)?,
        })
    }

    /// The registry Secret holding these keys.
    pub fn secret(&self) -> Secret {
        let data = [
            (KEY_VERIFIER, self.verifier_key.clone()),
            (KEY_CA_CERT, self.ca_cert_pem.clone().into_bytes()),
            (KEY_CA_KEY, self.ca_key_pem.clone().into_bytes()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), ByteString(value)))
        .collect();
        Secret {
            metadata: ObjectMeta {
                name: Some(REGISTRY_SECRET.to_owned()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (
                        "app.kubernetes.io/managed-by".to_owned(),
                        FIELD_MANAGER.to_owned(),
                    ),
                    (
                        "app.kubernetes.io/part-of".to_owned(),
                        "tributary".to_owned(),
                    ),
                    // Owned by nothing: it belongs to the namespace, and stays.
                    (
                        crate::build::OWNER_KIND_LABEL.to_owned(),
                        "namespace".to_owned(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// The raw verifier key (for gateways' registry Secrets).
    pub fn verifier_key(&self) -> &[u8] {
        &self.verifier_key
    }

    /// A short, non-secret identifier of the verifier key.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(&self.verifier_key);
        digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
    }

    /// base64 of HMAC-SHA256(verifier key, `secret`): what gateways compare a presented
    /// generated secret against.
    pub fn verifier(&self, secret: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.mac(secret))
    }

    /// The bearer token of one gateway's registry endpoints: derived from the key and the
    /// Gateway's uid, so it is stable without being stored anywhere else.
    pub fn sync_token(&self, gateway_uid: &str) -> String {
        let input = format!("tributary sync token {gateway_uid}");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.mac(input.as_bytes()))
    }

    fn mac(&self, input: &[u8]) -> Vec<u8> {
        // HMAC accepts keys of any length.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.verifier_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(input);
        mac.finalize().into_bytes().to_vec()
    }

    /// The device CA as an issuer of device certificates.
    pub fn issuer(&self) -> Result<Issuer<'static, KeyPair>, BuildError> {
        let key = KeyPair::from_pem(&self.ca_key_pem).map_err(certificate_error)?;
        Ok(Issuer::new(ca_params(&self.namespace), key))
    }
}

/// The device CA's parameters: the same every time, so the issuer rebuilt from the stored
/// key names the stored certificate's subject.
fn ca_params(namespace: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Tributary device CA {namespace}"),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Tributary");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2125, 1, 1);
    params
}

fn certificate_error(error: rcgen::Error) -> BuildError {
    BuildError::Invalid(format!("device CA: {error}"))
}

/// The namespaces' keys, read (or created) once per namespace and then kept.
#[derive(Default)]
pub struct KeyCache {
    by_namespace: Mutex<HashMap<String, Arc<NamespaceKeys>>>,
}

impl KeyCache {
    /// The keys of `namespace`: cached, else read from its registry Secret, else created
    /// (a concurrent creation by another reconcile is read back).
    pub async fn get(
        &self,
        client: &Client,
        namespace: &str,
    ) -> Result<Arc<NamespaceKeys>, crate::controller::Error> {
        if let Some(keys) = self.cached(namespace) {
            return Ok(keys);
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let keys = match read(&api, namespace).await? {
            Some(keys) => keys,
            None => {
                let fresh = NamespaceKeys::generate(namespace)?;
                match api.create(&PostParams::default(), &fresh.secret()).await {
                    Ok(_) => fresh,
                    Err(kube::Error::Api(e)) if e.code == 409 => read(&api, namespace)
                        .await?
                        .ok_or(BuildError::Invalid(format!(
                            "Secret {REGISTRY_SECRET} exists but lacks its keys"
                        )))?,
                    Err(other) => return Err(other.into()),
                }
            }
        };
        let keys = Arc::new(keys);
        self.by_namespace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(namespace.to_owned(), keys.clone());
        Ok(keys)
    }

    fn cached(&self, namespace: &str) -> Option<Arc<NamespaceKeys>> {
        self.by_namespace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(namespace)
            .cloned()
    }

    /// Forgets a namespace's keys (its registry Secret was deleted or replaced).
    pub fn forget(&self, namespace: &str) {
        self.by_namespace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(namespace);
    }
}

/// The keys in the namespace's registry Secret; an unusable Secret is an error that names
/// it (deleting it makes the operator create new keys, and re-issue every credential).
async fn read(
    api: &Api<Secret>,
    namespace: &str,
) -> Result<Option<NamespaceKeys>, crate::controller::Error> {
    let Some(secret) = api.get_opt(REGISTRY_SECRET).await? else {
        return Ok(None);
    };
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    NamespaceKeys::from_data(namespace, &data)
        .map(Some)
        .ok_or_else(|| {
            BuildError::Invalid(format!(
                "Secret {REGISTRY_SECRET} lacks {KEY_VERIFIER}, {KEY_CA_CERT} or {KEY_CA_KEY}; \
                 delete it to have new keys made"
            ))
            .into()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_their_secret_and_derive_stable_verifiers_and_tokens() {
        let keys = NamespaceKeys::generate("city").expect("keys");
        let data: BTreeMap<String, Vec<u8>> = keys
            .secret()
            .data
            .expect("data")
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        let back = NamespaceKeys::from_data("city", &data).expect("complete");
        assert_eq!(back.verifier(b"s3cret"), keys.verifier(b"s3cret"));
        assert_ne!(keys.verifier(b"s3cret"), keys.verifier(b"s3cres"));
        assert_eq!(back.key_id(), keys.key_id());
        assert_eq!(back.sync_token("uid-1"), keys.sync_token("uid-1"));
        assert_ne!(keys.sync_token("uid-1"), keys.sync_token("uid-2"));
        let other = NamespaceKeys::generate("city").expect("keys");
        assert_ne!(other.verifier(b"s3cret"), keys.verifier(b"s3cret"));
        assert!(!format!("{keys:?}").contains(&keys.verifier(b"")));
    }

    #[test]
    fn an_incomplete_secret_is_not_taken_for_keys() {
        let data = BTreeMap::from([("verifier-key".to_owned(), vec![1u8; 32])]);
        assert!(NamespaceKeys::from_data("city", &data).is_none());
    }
}
