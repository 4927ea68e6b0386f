//! The device registry: what the operator keeps for `Device` resources between reconciles
//! and hands to the gateways.
//!
//! - [`keys`]: per namespace, the key of the generated secrets' keyed hash and the device
//!   CA (one operator-made Secret, read once).
//! - [`credentials`]: the credentials issued to a Device (generated secrets with rotation,
//!   certificates), as pure plans.
//! - [`table`]: one Gateway's device table, built from the cached Devices.
//! - [`sync`] and [`collector`]: pushing tables to the gateway pods and reading back what
//!   their devices do, written into the Devices' status.
//!
//! A change to a Device reaches the gateway pods in seconds: the Gateway controller
//! (woken by the Device) renders the table into the Gateway's registry Secret (which pods
//! read at start) and [`Registry::publish`]es it; the collector then pushes it to every
//! pod at once instead of waiting for the kubelet to refresh the mounted Secret.

pub mod collector;
pub mod credentials;
pub mod keys;
pub mod sync;
pub mod table;

use crate::crd::device::Device;
use bytes::Bytes;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Notify;

/// Longest a reconcile waits for the Device cache to be filled after a start.
const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A Gateway by namespace and name.
pub type GatewayKey = (String, String);

/// One Gateway's current table, as published to its pods.
#[derive(Clone, Debug)]
pub struct Published {
    /// `issuedAtMs` of the table.
    pub issued_at_ms: u64,
    /// The gzip-compressed table.
    pub table: Bytes,
    /// The bearer token of the Gateway's pods.
    pub token: String,
    /// The Device resource name of each device id in the table.
    pub resources: BTreeMap<String, String>,
}

/// The registry state shared by the controllers and the collector.
#[derive(Default)]
pub struct Registry {
    /// The namespaces' keys.
    pub keys: keys::KeyCache,
    /// The HTTP client of the gateway pods' registry endpoints.
    pub sync: sync::SyncClient,
    devices: Mutex<Vec<Store<DeserializeGuard<Device>>>>,
    pods: Mutex<Vec<Store<Pod>>>,
    published: Mutex<BTreeMap<GatewayKey, Arc<Published>>>,
    /// Wakes the collector when a table was published.
    pub changed: Notify,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    /// Adds the Device cache of one watched namespace (or of all).
    pub fn add_devices(&self, store: Store<DeserializeGuard<Device>>) {
        locked(&self.devices).push(store);
    }

    /// Adds the gateway-pod cache of one watched namespace (or of all).
    pub fn add_pods(&self, store: Store<Pod>) {
        locked(&self.pods).push(store);
    }

    /// Every readable Device of `namespace`, from the caches, once they were filled: a
    /// table built from a cache still empty after a restart would disconnect every device.
    pub async fn devices_in(
        &self,
        namespace: &str,
    ) -> Result<Vec<Arc<Device>>, crate::controller::Error> {
        let stores = locked(&self.devices).clone();
        for store in &stores {
            let ready = tokio::time::timeout(CACHE_WAIT, store.wait_until_ready()).await;
            if !matches!(ready, Ok(Ok(()))) {
                return Err(crate::controller::Error::CacheNotReady("Device"));
            }
        }
        Ok(stores
            .iter()
            .flat_map(|store| store.state())
            .filter(|guard| guard.namespace().as_deref() == Some(namespace))
            .filter_map(|guard| guard.0.as_ref().ok().cloned().map(Arc::new))
            .collect())
    }

    /// The cached running pods of a Gateway (by its pods' selector labels).
    pub fn pods_of(&self, namespace: &str, selector: &BTreeMap<String, String>) -> Vec<Arc<Pod>> {
        locked(&self.pods)
            .iter()
            .flat_map(|store| store.state())
            .filter(|pod| pod.namespace().as_deref() == Some(namespace))
            .filter(|pod| {
                let labels = pod.labels();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect()
    }

    /// Records a Gateway's table and wakes the collector to push it when it is new.
    pub fn publish(&self, gateway: GatewayKey, published: Published) {
        let mut tables = locked(&self.published);
        let newer = tables
            .get(&gateway)
            .is_none_or(|old| old.issued_at_ms != published.issued_at_ms);
        tables.insert(gateway, Arc::new(published));
        drop(tables);
        if newer {
            self.changed.notify_one();
        }
    }

    /// Forgets a deleted Gateway's table.
    pub fn withdraw(&self, gateway: &GatewayKey) {
        locked(&self.published).remove(gateway);
    }

    /// Every published table.
    pub fn published(&self) -> Vec<(GatewayKey, Arc<Published>)> {
        locked(&self.published)
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }
}
