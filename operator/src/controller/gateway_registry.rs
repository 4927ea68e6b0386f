//! A Gateway's device table: built from the cached Devices that name it, written into its
//! registry Secret when its content changed (the pods read it at start), and published to
//! the collector, which pushes it to the running pods at once.

use super::{apply, Context, Error};
use crate::build::gateway::registry_secret_name;
use crate::build::{child_meta, BuildError, SecretData};
use crate::crd::Gateway;
use crate::registry::keys::NamespaceKeys;
use crate::registry::table::{self, build_table, compress, content_hash, devices_of};
use crate::registry::Published;
use bytes::Bytes;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::{Api, Resource, ResourceExt};
use std::collections::BTreeMap;
use tributary_contract::device_table::{
    DEVICE_CA_FILE, SYNC_TOKEN_FILE, TABLE_FILE, VERIFIER_KEY_FILE,
};

/// Annotation: the content hash of the table in the Secret.
const HASH_ANNOTATION: &str = "tributary.dev/table-hash";
/// Annotation: the table's `issuedAtMs`.
const ISSUED_ANNOTATION: &str = "tributary.dev/issued-at-ms";
/// Largest compressed table written into the Secret (Secrets hold at most 1 MiB); a larger
/// one still reaches the running pods by push, but pods starting later wait for the push.
pub const MAX_SECRET_TABLE: usize = 900 * 1024;

/// What the Gateway's status says about its devices.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TableSummary {
    /// Devices in the table.
    pub devices: usize,
    /// Device resources left out because another one has the same device id.
    pub duplicates: Vec<String>,
    /// The table was too large for the Secret.
    pub too_large: bool,
}

impl TableSummary {
    /// One line for the Ready condition.
    pub fn describe(&self) -> String {
        let mut text = format!("{} devices in its table", self.devices);
        if !self.duplicates.is_empty() {
            text.push_str(&format!(
                "; left out for a duplicate device id: {}",
                self.duplicates.join(", ")
            ));
        }
        if self.too_large {
            text.push_str(&format!(
                "; the table exceeds {} KiB and reaches pods only by push",
                MAX_SECRET_TABLE / 1024
            ));
        }
        text
    }
}

/// Builds, stores and publishes the Gateway's table.
pub async fn publish(ctx: &Context, gateway: &Gateway) -> Result<TableSummary, Error> {
    let namespace = gateway.namespace().unwrap_or_default();
    let name = gateway.name_any();
    let keys = ctx.registry.keys.get(&ctx.client, &namespace).await?;
    let devices = ctx.registry.devices_in(&namespace).await?;
    let (kept, duplicates) = devices_of(&name, crate::registry::readable(&devices));
    let hashes = hash_secrets(ctx, &namespace, &kept).await?;
    let mut device_table = build_table(&kept, &keys.key_id(), &hashes, Timestamp::now());
    let hash = content_hash(&device_table)?;
    let secret_name = registry_secret_name(&name);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = api.get_metadata_opt(&secret_name).await?;
    let annotation = |key: &str| {
        existing
            .as_ref()
            .and_then(|m| m.annotations().get(key).cloned())
    };
    let previous: u64 = annotation(ISSUED_ANNOTATION)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let unchanged = annotation(HASH_ANNOTATION).as_deref() == Some(hash.as_str());
    device_table.issued_at_ms = if unchanged {
        previous
    } else {
        now_ms().max(previous + 1)
    };
    let compressed = compress(&device_table)?;
    let too_large = compressed.len() > MAX_SECRET_TABLE;
    let token = keys.sync_token(gateway.meta().uid.as_deref().unwrap_or_default());
    if !unchanged && !too_large {
        let secret = registry_secret(
            gateway,
            &keys,
            &token,
            &compressed,
            &hash,
            device_table.issued_at_ms,
        )?;
        apply(&ctx.client, &secret).await?;
    }
    ctx.registry.publish(
        (namespace, name),
        Published {
            issued_at_ms: device_table.issued_at_ms,
            table: Bytes::from(compressed),
            token,
            resources: kept.iter().map(|d| (d.device_id(), d.name_any())).collect(),
        },
    );
    Ok(TableSummary {
        devices: kept.len(),
        duplicates: duplicates.iter().map(|d| d.name_any()).collect(),
        too_large,
    })
}

fn now_ms() -> u64 {
    u64::try_from(Timestamp::now().as_millisecond()).unwrap_or(0)
}

/// The Secrets holding the Devices' argon2 hashes; a missing one leaves those devices
/// without that credential (the Device reports it).
async fn hash_secrets(
    ctx: &Context,
    namespace: &str,
    devices: &[&crate::crd::Device],
) -> Result<SecretData, Error> {
    let mut data = SecretData::new();
    for name in table::hash_secrets(devices).into_keys() {
        if let Some(values) = ctx.reads.secret_data(namespace, &name).await? {
            data.insert(name, std::sync::Arc::unwrap_or_clone(values));
        }
    }
    Ok(data)
}

/// The registry Secret: the table, the verifier key, the sync token and the CA
/// certificate (never its key), owned by the Gateway.
fn registry_secret(
    gateway: &Gateway,
    keys: &NamespaceKeys,
    token: &str,
    compressed: &[u8],
    hash: &str,
    issued_at_ms: u64,
) -> Result<Secret, BuildError> {
    let name = registry_secret_name(&gateway.name_any());
    let mut metadata = child_meta(gateway, &name, "gateway")?;
    metadata.annotations = Some(BTreeMap::from([
        (HASH_ANNOTATION.to_owned(), hash.to_owned()),
        (ISSUED_ANNOTATION.to_owned(), issued_at_ms.to_string()),
    ]));
    let data = [
        (TABLE_FILE, compressed.to_vec()),
        (VERIFIER_KEY_FILE, keys.verifier_key().to_vec()),
        (SYNC_TOKEN_FILE, token.as_bytes().to_vec()),
        (DEVICE_CA_FILE, keys.ca_cert_pem.as_bytes().to_vec()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), ByteString(value)))
    .collect();
    Ok(Secret {
        metadata,
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    })
}
