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
pub mod roster;
pub mod sync;
pub mod table;

use crate::crd::device::Device;
use crate::crd::{ApplicationApi, Gateway};
use bytes::Bytes;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::Secret;
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Notify;

/// The readable Devices of cached entries.
pub fn readable(guards: &[Arc<DeserializeGuard<Device>>]) -> impl Iterator<Item = &Device> {
    guards.iter().filter_map(|guard| guard.0.as_ref().ok())
}

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
    device_secrets: Mutex<Vec<Store<PartialObjectMeta<Secret>>>>,
    gateways: Mutex<Vec<Store<DeserializeGuard<Gateway>>>>,
    apis: Mutex<Vec<Store<DeserializeGuard<ApplicationApi>>>>,
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

    /// Adds the cache of Device credential Secrets' metadata of one watched namespace.
    pub fn add_device_secrets(&self, store: Store<PartialObjectMeta<Secret>>) {
        locked(&self.device_secrets).push(store);
    }

    /// Adds the Gateway cache of one watched namespace (or of all).
    pub fn add_gateways(&self, store: Store<DeserializeGuard<Gateway>>) {
        locked(&self.gateways).push(store);
    }

    /// Adds the ApplicationApi cache of one watched namespace (or of all).
    pub fn add_apis(&self, store: Store<DeserializeGuard<ApplicationApi>>) {
        locked(&self.apis).push(store);
    }

    /// Every readable ApplicationApi in the caches.
    pub fn apis(&self) -> Vec<ApplicationApi> {
        locked(&self.apis)
            .iter()
            .flat_map(|store| store.state())
            .filter_map(|guard| guard.0.as_ref().ok().cloned())
            .collect()
    }

    /// The cached metadata of a Device's credential Secret (`None`: not cached, which does
    /// not prove it is missing: the reconcile then asks the API server).
    pub fn device_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<PartialObjectMeta<Secret>>> {
        let key = ObjectRef::new(name).within(namespace);
        locked(&self.device_secrets)
            .iter()
            .find_map(|store| store.get(&key))
    }

    /// Whether the Gateway is in the caches (once they were filled); `None` without a
    /// Gateway cache (the reconcile then asks the API server).
    pub async fn gateway_cached(&self, namespace: &str, name: &str) -> Option<bool> {
        let stores = locked(&self.gateways).clone();
        if stores.is_empty() {
            return None;
        }
        for store in &stores {
            let ready = tokio::time::timeout(CACHE_WAIT, store.wait_until_ready()).await;
            if !matches!(ready, Ok(Ok(()))) {
                return None;
            }
        }
        let key = ObjectRef::new(name).within(namespace);
        Some(stores.iter().any(|store| store.get(&key).is_some()))
    }

    /// Every Device of `namespace` in the caches (shared, not copied; unreadable ones are
    /// skipped by [`readable`]), once they were filled: a table built from a cache still
    /// empty after a restart would disconnect every device.
    pub async fn devices_in(
        &self,
        namespace: &str,
    ) -> Result<Vec<Arc<DeserializeGuard<Device>>>, crate::controller::Error> {
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
