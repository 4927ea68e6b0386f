//! Reads of the objects the reconciles and the autoscaler dereference (Queues, the
//! Deployments and pods of Workers, Services, Secrets), answered from the operator's watch
//! caches when a filled cache holds them (one it shows missing, or a Queue or Sink not yet
//! Ready, is asked for: the watch that wakes a reconcile may run ahead of the cache), else
//! asked of the API server. At steady state a reconcile or an autoscaler poll makes no read
//! request.
//!
//! A Secret's data is never cached by a watch (the caches hold Secrets' metadata only): a
//! Secret a reconcile reads is read once by name and kept with the resourceVersion it was
//! read at; while the metadata cache shows it at that version, the kept one is the answer.

use crate::caches::ChildCaches;
use crate::crd::{Gateway, Queue, Sink};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::ListParams;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

/// A Secret's data (`stringData` merged in).
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// Fewest kept Secrets before a sweep drops those gone from the metadata cache.
const SWEEP_FLOOR: usize = 256;

/// A namespaced kind the reads can ask for.
pub trait Readable:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Readable for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// The operator's reads, through its caches.
pub struct Reads {
    client: Client,
    /// Queues, Sinks and Gateways (their controllers' caches), Deployments and Services (the children's),
    /// the metadata of every Secret.
    caches: ChildCaches,
    /// The Workers' pods, by watched namespace (`None`: all).
    worker_pods: Mutex<Vec<(Option<String>, Store<Pod>)>>,
    secrets: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    secrets: HashMap<(String, String), (String, Arc<Secret>)>,
    /// How many the last sweep kept.
    swept: usize,
}

impl Reads {
    /// Reads through `client` until caches are added.
    pub fn new(client: Client) -> Self {
        Reads {
            client,
            caches: ChildCaches::default(),
            worker_pods: Mutex::default(),
            secrets: Mutex::default(),
        }
    }

    /// The API client (for what is not read through a cache).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Adds a cache of `kind` of one watched namespace (`None`: all): `Queue`, `Sink` and
    /// `Gateway` (their controllers' caches), `Deployment` and `Service` (the children's, whole
    /// objects), `Secret` (the metadata of all Secrets).
    pub fn add<K>(&self, kind: &str, namespace: Option<String>, store: Store<K>)
    where
        K: Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        self.caches.add(kind, namespace, store);
    }

    /// Adds the cache of the Workers' pods of one watched namespace (`None`: all).
    pub fn add_worker_pods(&self, namespace: Option<String>, store: Store<Pod>) {
        self.worker_pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((namespace, store));
    }

    /// A Queue, or `None` when it does not exist.
    pub async fn queue(&self, namespace: &str, name: &str) -> Result<Option<Queue>, kube::Error> {
        let ready = |queue: &Queue| {
            let status = queue.status.as_ref();
            status.is_some_and(|s| crate::conditions::is_ready(&s.conditions))
        };
        self.guarded(namespace, name, ready).await
    }

    /// A Sink, or `None` when it does not exist.
    pub async fn sink(&self, namespace: &str, name: &str) -> Result<Option<Sink>, kube::Error> {
        let ready = |sink: &Sink| {
            let status = sink.status.as_ref();
            status.is_some_and(|s| crate::conditions::is_ready(&s.conditions))
        };
        self.guarded(namespace, name, ready).await
    }

    /// A Gateway that sends commands (what an ApplicationApi waits for), or `None` when it
    /// does not exist; one the cache shows without commands is asked for.
    pub async fn gateway_for_commands(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Gateway>, kube::Error> {
        let commanding =
            |gateway: &Gateway| gateway.spec.commands.enabled && !gateway.spec.routes.is_empty();
        self.guarded(namespace, name, commanding).await
    }

    /// One of the operator's kinds from its controller's cache when the cache shows it
    /// `settled` (Ready: what a dependent waits for); one that is not, or missing, or that
    /// cannot be read as such, is asked for. The watch that wakes a dependent may run ahead
    /// of the cache: a fresh answer then spares it a resync's wait, and at steady state
    /// every answer is cached.
    async fn guarded<K>(
        &self,
        namespace: &str,
        name: &str,
        settled: impl Fn(&K) -> bool,
    ) -> Result<Option<K>, kube::Error>
    where
        K: Readable,
    {
        let kind = K::kind(&());
        let cached = self
            .caches
            .object::<DeserializeGuard<K>>(&kind, namespace, name);
        if let Some(Some(guard)) = cached {
            if let Ok(object) = &guard.0 {
                if settled(object) {
                    return Ok(Some(object.clone()));
                }
            }
        }
        self.ask(namespace, name).await
    }

    /// A Deployment the operator made, or `None` when it does not exist; from the cache
    /// without its managedFields (who owns a field is asked of the API server).
    pub async fn deployment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Deployment>, kube::Error> {
        self.object("Deployment", namespace, name).await
    }

    /// A Service the operator made, or `None` when it does not exist.
    pub async fn service(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Service>, kube::Error> {
        self.object("Service", namespace, name).await
    }

    async fn object<K>(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<K>, kube::Error>
    where
        K: Readable,
    {
        // Only a present one is answered from the cache: one it shows missing may have been
        // made since (the watch that woke the caller may run ahead of the cache).
        if let Some(Some(cached)) = self.caches.object::<K>(kind, namespace, name) {
            return Ok(Some(Arc::unwrap_or_clone(cached)));
        }
        self.ask(namespace, name).await
    }

    /// Asks the API server.
    async fn ask<K: Readable>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<K>, kube::Error> {
        Api::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
    }

    /// The Workers' pods of `namespace` that carry every label of `selector`.
    pub async fn worker_pods(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<Pod>, kube::Error> {
        let matches = |pod: &Pod| {
            let labels = pod.labels();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        };
        if let Some(pods) = self.cached_pods(namespace) {
            return Ok(pods
                .into_iter()
                .filter(|pod| matches(pod))
                .map(Arc::unwrap_or_clone)
                .collect());
        }
        let selector: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let listed = pods
            .list(
                &ListParams::default()
                    .labels(&selector.join(","))
                    .match_any(),
            )
            .await?;
        Ok(listed.items)
    }

    /// The cached Workers' pods of `namespace`, when filled caches cover it.
    fn cached_pods(&self, namespace: &str) -> Option<Vec<Arc<Pod>>> {
        let stores = self
            .worker_pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let covering: Vec<&Store<Pod>> = stores
            .iter()
            .filter(|(ns, _)| ns.as_deref().is_none_or(|ns| ns == namespace))
            .map(|(_, store)| store)
            .collect();
        let ready = |store: &Store<Pod>| {
            use futures::FutureExt;
            matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
        };
        if covering.is_empty() || !covering.iter().all(|store| ready(store)) {
            return None;
        }
        Some(
            covering
                .iter()
                .flat_map(|store| store.state())
                .filter(|pod| pod.namespace().as_deref() == Some(namespace))
                .collect(),
        )
    }

    /// A Secret's data, or `None` when it does not exist.
    pub async fn secret_data(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<SecretData>>, kube::Error> {
        let secret = self.secret(namespace, name).await?;
        Ok(secret.map(|secret| Arc::new(data_of(&secret))))
    }

    /// A Secret, or `None` when it does not exist.
    pub async fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<Secret>>, kube::Error> {
        let key = (namespace.to_owned(), name.to_owned());
        let version = match self
            .caches
            .object::<PartialObjectMeta<Secret>>("Secret", namespace, name)
        {
            Some(Some(meta)) => meta.metadata.resource_version.clone(),
            // Missing in the cache may be made since: asked for.
            Some(None) | None => None,
        };
        if let Some(version) = &version {
            if let Some(secret) = self.kept(&key, version) {
                return Ok(Some(secret));
            }
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let Some(secret) = api.get_opt(name).await? else {
            return Ok(None);
        };
        let secret = Arc::new(secret);
        if let Some(read_at) = &secret.metadata.resource_version {
            self.keep(key, read_at.clone(), secret.clone());
        }
        Ok(Some(secret))
    }

    fn kept(&self, key: &(String, String), version: &str) -> Option<Arc<Secret>> {
        let kept = self.secrets.lock().unwrap_or_else(PoisonError::into_inner);
        kept.secrets
            .get(key)
            .filter(|(at, _)| at == version)
            .map(|(_, data)| data.clone())
    }

    /// Keeps a Secret; now and then (when the kept ones doubled since) forgets
    /// those the metadata cache no longer holds: memory follows the Secrets that exist.
    fn keep(&self, key: (String, String), version: String, secret: Arc<Secret>) {
        let mut kept = self.secrets.lock().unwrap_or_else(PoisonError::into_inner);
        kept.secrets.insert(key, (version, secret));
        if kept.secrets.len() > (2 * kept.swept).max(SWEEP_FLOOR) {
            kept.secrets.retain(|(namespace, name), _| {
                let cached = self
                    .caches
                    .object::<PartialObjectMeta<Secret>>("Secret", namespace, name);
                !matches!(cached, Some(None))
            });
            kept.swept = kept.secrets.len();
        }
    }

    /// How many Secrets are kept (for tests).
    #[cfg(test)]
    pub fn kept_secrets(&self) -> usize {
        self.secrets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .secrets
            .len()
    }
}

/// A Secret's `data` with its `stringData` merged in.
fn data_of(secret: &Secret) -> SecretData {
    let data = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()));
    let strings = secret
        .string_data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()));
    data.chain(strings).collect()
}

#[cfg(test)]
mod tests;
