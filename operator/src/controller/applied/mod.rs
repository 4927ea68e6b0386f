//! Applies a child only when that can change something: zero writes at steady state.
//!
//! Every reconcile builds the whole desired set of children. For each child (kind,
//! namespace, name) the hash of the desired object last applied is kept with the version
//! the API server answered ([`decision::Version`]: the generation where the kind has one,
//! else the resourceVersion). The next apply of the same object is skipped while a filled
//! watch cache of the operator's children ([`caches`], label-selected, metadata only or,
//! for the Deployments and StatefulSets whose status the reconciles read, whole objects)
//! shows the child still at that version: a child edited or deleted by someone, or a
//! changed desired object, is applied again. Without a filled cache, everything is applied.

pub mod decision;

use super::{Context, Error};
use crate::build::BuildError;
use decision::{Decision, Record};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DynamicObject, ObjectMeta};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

/// A child: kind, namespace, name.
pub use crate::caches::Key;

/// Fewest records kept before a sweep drops those of children gone from the caches.
const SWEEP_FLOOR: usize = 1024;

/// What was applied, and the caches that show what became of it.
#[derive(Default)]
pub struct Applied {
    /// The children's caches.
    pub caches: crate::caches::ChildCaches,
    ledger: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    records: HashMap<Key, Record>,
    /// How many records the last sweep kept.
    kept: usize,
}

impl Applied {
    /// Whether to apply `key` with desired hash `hash`, and the cached child (whole object
    /// or metadata, by its cache).
    fn check(&self, key: &Key, hash: u64) -> (Decision, Option<crate::caches::Shared>) {
        let (cached, object) = self.caches.lookup(key);
        let ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        (
            decision::decide(ledger.records.get(key), hash, &cached),
            object,
        )
    }

    /// Records what the server answered to the apply of `key` with hash `hash`. Now and
    /// then (when the records doubled since) forgets the children the filled caches no
    /// longer hold: memory follows the children that exist.
    fn record(&self, key: Key, hash: u64, answered: &ObjectMeta) {
        let Some(seen) = decision::Seen::of(answered) else {
            return;
        };
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        ledger.records.insert(key, Record { hash, seen });
        if ledger.records.len() > (2 * ledger.kept).max(SWEEP_FLOOR) {
            ledger
                .records
                .retain(|key, _| self.caches.lookup(key).0 != decision::Cached::Absent);
            ledger.kept = ledger.records.len();
        }
    }

    /// Whether filled caches show that none of `children` (kind, name) exists in
    /// `namespace`: only then may a step skip reading them. Unknown is not absent.
    pub fn all_absent(&self, namespace: &str, children: &[(&str, &str)]) -> bool {
        children.iter().all(|(kind, name)| {
            let key = ((*kind).to_owned(), namespace.to_owned(), (*name).to_owned());
            self.caches.lookup(&key).0 == decision::Cached::Absent
        })
    }

    /// How many children are remembered (for tests).
    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .records
            .len()
    }
}

/// The key of a child of `kind` with metadata `meta`.
fn key_of(kind: &str, meta: &ObjectMeta) -> Result<Key, Error> {
    let namespace = meta
        .namespace
        .clone()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let name = meta
        .name
        .clone()
        .ok_or(BuildError::MissingMetadata("name"))?;
    Ok((kind.to_owned(), namespace, name))
}

/// The key and desired hash of `object`.
fn key_and_hash<K>(object: &K) -> Result<(Key, u64), Error>
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let key = key_of(&K::kind(&()), object.meta())?;
    Ok((key, decision::desired_hash(object)?))
}

/// Sends `send` (the apply of `object`, answering the child's metadata) unless it cannot
/// change anything; records what it answered.
async fn unless_current<K, F, Fut>(ctx: &Context, object: &K, send: F) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Serialize,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<ObjectMeta, Error>>,
{
    let (key, hash) = key_and_hash(object)?;
    send_unless_current(ctx, key, hash, send).await
}

/// Applies a child of a kind known at run time (`kind`, e.g. `PodMonitor`) with `send`
/// unless that cannot change anything.
pub async fn apply_dynamic<F, Fut>(
    ctx: &Context,
    kind: &str,
    object: &DynamicObject,
    send: F,
) -> Result<(), Error>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<ObjectMeta, Error>>,
{
    let key = key_of(kind, &object.metadata)?;
    let hash = decision::desired_hash(object)?;
    send_unless_current(ctx, key, hash, send).await
}

async fn send_unless_current<F, Fut>(
    ctx: &Context,
    key: Key,
    hash: u64,
    send: F,
) -> Result<(), Error>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<ObjectMeta, Error>>,
{
    if ctx.applied.check(&key, hash).0 == Decision::Skip {
        ctx.metrics.apply_skipped(&key.0);
        return Ok(());
    }
    let answered = send().await?;
    ctx.applied.record(key, hash, &answered);
    Ok(())
}

/// Server-side applies a child (see [`super::apply`]) unless that cannot change anything.
pub async fn apply_child<K>(ctx: &Context, object: &K) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    unless_current(ctx, object, || async {
        Ok(super::apply(&ctx.client, object).await?.meta().clone())
    })
    .await
}

/// Applies a PodDisruptionBudget in the served version unless that cannot change
/// anything.
pub async fn apply_pdb(ctx: &Context, pdb: &PodDisruptionBudget) -> Result<(), Error> {
    unless_current(ctx, pdb, || ctx.pdb.apply(&ctx.client, pdb)).await
}

/// [`apply_child`] answering the child: as the server answered the apply, or as the
/// whole-object cache holds it when the apply was skipped (its status as fresh as the
/// watch). A kind cached by metadata only is always applied.
pub async fn apply_kept<K>(ctx: &Context, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug
        + Send
        + Sync
        + 'static,
{
    let (key, hash) = key_and_hash(object)?;
    if let (Decision::Skip, Some(cached)) = ctx.applied.check(&key, hash) {
        if let Ok(kept) = cached.downcast::<K>() {
            ctx.metrics.apply_skipped(&key.0);
            return Ok(Arc::unwrap_or_clone(kept));
        }
    }
    let answered = super::apply(&ctx.client, object).await?;
    ctx.applied.record(key, hash, answered.meta());
    Ok(answered)
}

#[cfg(test)]
mod tests;
