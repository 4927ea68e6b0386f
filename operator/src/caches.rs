//! Watch caches by kind and watched namespace, read without a request: the children the
//! operator applies (`controller::applied`: metadata only, or whole objects for the kinds
//! whose status or address the reconciles read; label-selected) and the objects the
//! reconciles dereference (`reads`). They are filled by `run`.

use futures::FutureExt;
use kube::api::ObjectMeta;
use kube::api::{ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Resource;
use std::any::Any;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

/// The version the API server gave a child: its `metadata.generation` when its kind has
/// one (it moves only with the spec: a Deployment's status updates leave it), else its
/// `metadata.resourceVersion` (which moves with every write).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Version {
    /// `metadata.generation`.
    Generation(i64),
    /// `metadata.resourceVersion`.
    ResourceVersion(String),
}

/// Which object a child is, and at which version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// `metadata.uid`: a child deleted and made again by someone else is another object.
    pub uid: Option<String>,
    /// Its version.
    pub version: Version,
}

impl Seen {
    /// What the metadata says; `None` when it carries no version (not from a server).
    pub fn of(meta: &ObjectMeta) -> Option<Seen> {
        let version = match (meta.generation, &meta.resource_version) {
            (Some(generation), _) => Version::Generation(generation),
            (None, Some(version)) => Version::ResourceVersion(version.clone()),
            (None, None) => return None,
        };
        Some(Seen {
            uid: meta.uid.clone(),
            version,
        })
    }
}

/// What a watch cache shows of a child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cached {
    /// No cache of its kind and namespace, or not filled yet: nothing is known.
    NotReady,
    /// The filled cache does not hold it: deleted (or its labels removed).
    Absent,
    /// The filled cache holds it, at this version.
    Present(Seen),
}

/// A cached object: kind, namespace, name.
pub type Key = (String, String, String);

/// A cached child, whole or metadata only (downcast to find out).
pub type Shared = Arc<dyn Any + Send + Sync>;

/// One cache, whatever its object type.
trait Lookup: Send + Sync {
    /// Whether it was filled (its first list arrived).
    fn ready(&self) -> bool;
    /// The child's version and the cached object.
    fn get(&self, namespace: &str, name: &str) -> Option<(Option<Seen>, Shared)>;
}

impl<K> Lookup for Store<K>
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    fn ready(&self) -> bool {
        matches!(self.wait_until_ready().now_or_never(), Some(Ok(())))
    }

    fn get(&self, namespace: &str, name: &str) -> Option<(Option<Seen>, Shared)> {
        let object = Store::get(self, &ObjectRef::new(name).within(namespace))?;
        let seen = Seen::of(object.meta());
        Some((seen, object))
    }
}

/// The metadata of a kind known at run time (the Prometheus Operator's).
struct Dynamic {
    store: Store<PartialObjectMeta<DynamicObject>>,
    resource: ApiResource,
}

impl Lookup for Dynamic {
    fn ready(&self) -> bool {
        matches!(self.store.wait_until_ready().now_or_never(), Some(Ok(())))
    }

    fn get(&self, namespace: &str, name: &str) -> Option<(Option<Seen>, Shared)> {
        let key = ObjectRef::new_with(name, self.resource.clone()).within(namespace);
        let object = self.store.get(&key)?;
        let seen = Seen::of(object.meta());
        Some((seen, object))
    }
}

struct Registered {
    kind: String,
    /// `None`: every namespace.
    namespace: Option<String>,
    cache: Box<dyn Lookup>,
}

/// The children's caches of every watched namespace.
#[derive(Default)]
pub struct ChildCaches {
    registered: Mutex<Vec<Registered>>,
}

impl ChildCaches {
    /// Adds the cache of `kind` (e.g. `ConfigMap`) of one watched namespace (`None`: all).
    pub fn add<K>(&self, kind: &str, namespace: Option<String>, store: Store<K>)
    where
        K: Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Default + Eq + Hash + Clone,
    {
        let registered = Registered {
            kind: kind.to_owned(),
            namespace,
            cache: Box::new(store),
        };
        self.registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(registered);
    }

    /// Adds the metadata cache of `resource`'s kind of one watched namespace (`None`: all).
    pub fn add_dynamic(
        &self,
        resource: &ApiResource,
        namespace: Option<String>,
        store: Store<PartialObjectMeta<DynamicObject>>,
    ) {
        let registered = Registered {
            kind: resource.kind.clone(),
            namespace,
            cache: Box::new(Dynamic {
                store,
                resource: resource.clone(),
            }),
        };
        self.registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(registered);
    }

    /// The cached object of `kind` (of type `K`, as its cache holds it): `None` when no
    /// filled cache covers it (ask the API server), `Some(None)` when the caches show that
    /// it does not exist.
    pub fn object<K: Send + Sync + 'static>(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Option<Arc<K>>> {
        let key = (kind.to_owned(), namespace.to_owned(), name.to_owned());
        match self.lookup(&key) {
            (Cached::Absent, _) => Some(None),
            (_, Some(object)) => object.downcast::<K>().ok().map(Some),
            (_, None) => None,
        }
    }

    /// What the caches covering the child's kind and namespace show of it: nothing known
    /// unless one covers it and all that do are filled.
    pub(crate) fn lookup(&self, key: &Key) -> (Cached, Option<Shared>) {
        let (kind, namespace, name) = key;
        let registered = self
            .registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let covering: Vec<&Registered> = registered
            .iter()
            .filter(|r| &r.kind == kind && r.namespace.as_ref().is_none_or(|n| n == namespace))
            .collect();
        if covering.is_empty() || !covering.iter().all(|r| r.cache.ready()) {
            return (Cached::NotReady, None);
        }
        match covering.iter().find_map(|r| r.cache.get(namespace, name)) {
            Some((Some(seen), object)) => (Cached::Present(seen), Some(object)),
            // Cached without a version: nothing to compare with.
            Some((None, object)) => (Cached::NotReady, Some(object)),
            None => (Cached::Absent, None),
        }
    }
}
