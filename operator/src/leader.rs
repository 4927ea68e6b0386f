//! Leader election through a `coordination.k8s.io/v1` Lease: one operator replica
//! reconciles, the others wait and take over when the Lease expires.
//!
//! The Lease also tells other Tributary operators which namespaces this one acts on (a
//! label and an annotation), so that a second installation watching the same namespaces
//! notices the first and refuses to start instead of fighting over the same objects.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

/// The label every Tributary operator's leader Lease carries.
pub const LEASE_LABEL: (&str, &str) = ("app.kubernetes.io/name", "tributary-operator");

/// The annotation naming the namespaces an operator watches (`*` for all).
pub const WATCH_ANNOTATION: &str = "tributary.dev/watch-namespaces";

/// A Lease-based lock held by `identity`.
pub struct LeaseLock {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    duration_seconds: i32,
    watched: Vec<String>,
}

/// The annotation value for the watched namespaces (empty: all).
pub fn watch_annotation(watched: &[String]) -> String {
    if watched.is_empty() {
        "*".to_owned()
    } else {
        watched.join(",")
    }
}

/// Whether two operators, watching `a` and `b` (annotation values), act on a common
/// namespace.
pub fn watches_overlap(a: &str, b: &str) -> bool {
    if a == "*" || b == "*" {
        return true;
    }
    let theirs: Vec<&str> = b.split(',').map(str::trim).collect();
    a.split(',')
        .map(str::trim)
        .any(|ns| !ns.is_empty() && theirs.contains(&ns))
}

/// The other Tributary operators that hold a live Lease and watch a namespace this one
/// (Lease `own_namespace/own_name`, watching `watched`) watches too, described for a person.
pub fn conflicting_operators(
    leases: &[Lease],
    (own_namespace, own_name): (&str, &str),
    watched: &[String],
    now: Timestamp,
) -> Vec<String> {
    let ours = watch_annotation(watched);
    leases
        .iter()
        .filter(|lease| {
            !(lease.namespace().as_deref() == Some(own_namespace) && lease.name_any() == own_name)
        })
        .filter(|lease| {
            lease.labels().get(LEASE_LABEL.0).map(String::as_str) == Some(LEASE_LABEL.1)
        })
        .filter_map(|lease| {
            let spec = lease.spec.as_ref()?;
            if !is_live(spec, now) {
                return None;
            }
            let theirs = lease
                .annotations()
                .get(WATCH_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| "*".to_owned());
            watches_overlap(&ours, &theirs).then(|| {
                let holder = spec.holder_identity.as_deref().unwrap_or_default();
                let scope = if theirs == "*" {
                    "every namespace".to_owned()
                } else {
                    format!("namespaces {theirs}")
                };
                format!(
                    "Lease {}/{} held by {holder}, watching {scope}",
                    lease.namespace().unwrap_or_default(),
                    lease.name_any()
                )
            })
        })
        .collect()
}

/// Lists the live Leases of other Tributary operators watching a namespace this one
/// watches (empty when there are none).
pub async fn other_operators(
    client: &Client,
    own: (&str, &str),
    watched: &[String],
) -> Result<Vec<String>, LeaseError> {
    let leases: Api<Lease> = Api::all(client.clone());
    let selector = format!("{}={}", LEASE_LABEL.0, LEASE_LABEL.1);
    let list = leases
        .list(&ListParams::default().labels(&selector))
        .await?;
    Ok(conflicting_operators(
        &list.items,
        own,
        watched,
        Timestamp::now(),
    ))
}

/// Why the Lease could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("leader Lease: {0}")]
pub struct LeaseError(#[from] kube::Error);

/// Whether `spec` is held and unexpired at `now`.
pub fn is_live(spec: &LeaseSpec, now: Timestamp) -> bool {
    if spec
        .holder_identity
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        return false;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    match &spec.renew_time {
        Some(MicroTime(renewed)) => renewed
            .checked_add(SignedDuration::from_secs(duration))
            .is_ok_and(|end| end >= now),
        None => false,
    }
}

/// Whether `spec` is free for `identity` at `now`: unheld, held by it, or expired.
pub fn is_free(spec: &LeaseSpec, identity: &str, now: Timestamp) -> bool {
    spec.holder_identity.as_deref() == Some(identity) || !is_live(spec, now)
}

impl LeaseLock {
    /// A lock on Lease `namespace/name`, for an operator watching `watched` (empty: all).
    pub fn new(
        client: Client,
        (namespace, name): (&str, &str),
        identity: &str,
        duration_seconds: i32,
        watched: &[String],
    ) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration_seconds,
            watched: watched.to_vec(),
        }
    }

    /// The Lease's namespace and name.
    pub fn lease(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    /// The namespaces the operator watches (empty: all).
    pub fn watched(&self) -> &[String] {
        &self.watched
    }

    /// Labels the Lease so other operators find it, with the watched namespaces.
    fn mark(&self, metadata: &mut ObjectMeta) {
        metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(LEASE_LABEL.0.to_owned(), LEASE_LABEL.1.to_owned());
        metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(WATCH_ANNOTATION.to_owned(), watch_annotation(&self.watched));
    }

    /// Acquires or renews the Lease. `Ok(false)` when another replica holds it (or won a
    /// race for it).
    pub async fn try_acquire(&self) -> Result<bool, LeaseError> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let mut lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            self.mark(&mut lease.metadata);
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(error) => Err(error.into()),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        if !is_free(&current, &self.identity, now) {
            return Ok(false);
        }
        let ours = current.holder_identity.as_deref() == Some(self.identity.as_str());
        let acquired = if ours {
            current.acquire_time.map_or(now, |t| t.0)
        } else {
            now
        };
        let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!ours);
        lease.spec = Some(self.spec(acquired, now, transitions));
        self.mark(&mut lease.metadata);
        // `replace` carries the resourceVersion: a concurrent writer makes this fail (409).
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Gives the Lease up (on graceful shutdown) so another replica takes over at once.
    pub async fn release(&self) -> Result<(), LeaseError> {
        if let Some(mut lease) = self.api.get_opt(&self.name).await? {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = None;
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await?;
            }
        }
        Ok(())
    }

    /// Seconds the Lease is valid without renewal.
    pub fn duration_seconds(&self) -> i32 {
        self.duration_seconds
    }

    /// Tries to acquire the Lease every 3 s until it does (`true`) or `stop` fires (`false`).
    pub async fn acquire_unless_stopped(&self, stop: &mut watch::Receiver<bool>) -> bool {
        loop {
            match self.try_acquire().await {
                Ok(true) => return true,
                Ok(false) => {
                    tracing::info!(identity = %self.identity, "waiting for the leader Lease")
                }
                Err(error) => tracing::warn!(%error, "leader election failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(3)) => {},
                _ = stop.wait_for(|stopped| *stopped) => return false,
            }
        }
    }

    /// Renews the held Lease every 5 s in the background until `stop` fires. When another
    /// replica took it, or renewals failed for longer than the Lease lasts, sets `lost` and
    /// stops the operator through `stop_tx`.
    pub fn keep_renewed(
        self: Arc<Self>,
        stop_tx: watch::Sender<bool>,
        lost: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<()> {
        let mut stop = stop_tx.subscribe();
        tokio::spawn(async move {
            let period = Duration::from_secs(5);
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {},
                    _ = stop.wait_for(|stopped| *stopped) => return,
                }
                match self.try_acquire().await {
                    Ok(true) => last_ok = tokio::time::Instant::now(),
                    Ok(false) => {
                        tracing::error!("another replica took the leader Lease");
                        lost.store(true, Ordering::Relaxed);
                        let _ = stop_tx.send(true);
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "renewing the leader Lease failed");
                        let lasts = u64::from(self.duration_seconds.unsigned_abs());
                        if last_ok.elapsed() > Duration::from_secs(lasts) {
                            lost.store(true, Ordering::Relaxed);
                            let _ = stop_tx.send(true);
                            return;
                        }
                    }
                }
            }
        })
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration_seconds),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::mock_api::{mocked, Exchange};
    use serde_json::json;

    fn held_by(holder: &str, renewed: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_fresh_lease_of_another_replica_is_not_free() {
        let now = Timestamp::now();
        assert!(!is_free(&held_by("other", now), "me", now));
        assert!(is_free(&held_by("me", now), "me", now));
        assert!(is_free(&LeaseSpec::default(), "me", now));
    }

    fn lease(namespace: &str, name: &str, watching: Option<&str>, spec: LeaseSpec) -> Lease {
        let mut lease = Lease {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(
                    LEASE_LABEL.0.to_owned(),
                    LEASE_LABEL.1.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        };
        if let Some(watching) = watching {
            lease.metadata.annotations = Some(BTreeMap::from([(
                WATCH_ANNOTATION.to_owned(),
                watching.to_owned(),
            )]));
        }
        lease
    }

    #[test]
    fn watched_namespaces_overlap_when_either_watches_all_or_they_share_one() {
        assert!(watches_overlap("*", "a"));
        assert!(watches_overlap("a,b", "*"));
        assert!(watches_overlap("a,b", "c, b"));
        assert!(!watches_overlap("a,b", "c"));
        assert_eq!(watch_annotation(&[]), "*");
        assert_eq!(watch_annotation(&["a".into(), "b".into()]), "a,b");
    }

    #[test]
    fn a_live_lease_of_another_operator_on_the_same_namespaces_conflicts() {
        let now = Timestamp::now();
        let old = now
            .checked_sub(SignedDuration::from_secs(60))
            .expect("time");
        let leases = vec![
            // Our own Lease (another replica of this installation): never a conflict.
            lease(
                "tributary-system",
                "tributary-operator",
                None,
                held_by("peer", now),
            ),
            // Another installation watching everything: a conflict.
            lease(
                "other-system",
                "tributary-operator",
                Some("*"),
                held_by("x-1", now),
            ),
            // Another installation on other namespaces: no conflict.
            lease(
                "team-b",
                "tributary-operator",
                Some("team-b"),
                held_by("b-1", now),
            ),
            // An uninstalled operator's expired Lease: no conflict.
            lease("gone", "tributary-operator", Some("*"), held_by("g-1", old)),
        ];
        let found = conflicting_operators(
            &leases,
            ("tributary-system", "tributary-operator"),
            &["factory".to_owned()],
            now,
        );
        assert_eq!(
            found,
            vec!["Lease other-system/tributary-operator held by x-1, watching every namespace"]
        );
        let on_team_b = conflicting_operators(
            &leases,
            ("tributary-system", "tributary-operator"),
            &["team-b".to_owned()],
            now,
        );
        assert_eq!(on_team_b.len(), 2, "{on_team_b:?}");
    }

    const LEASE: &str =
        "/apis/coordination.k8s.io/v1/namespaces/tributary-system/leases/tributary-operator";

    fn lock(client: Client) -> LeaseLock {
        LeaseLock::new(
            client,
            ("tributary-system", "tributary-operator"),
            "me",
            15,
            &["factory".to_owned()],
        )
    }

    fn stored(spec: LeaseSpec) -> serde_json::Value {
        let mut lease = lease("tributary-system", "tributary-operator", None, spec);
        lease.metadata.resource_version = Some("5".into());
        serde_json::to_value(lease).expect("serializes")
    }

    #[tokio::test]
    async fn an_expired_lease_of_another_replica_is_taken_over() {
        let old = Timestamp::now()
            .checked_sub(SignedDuration::from_secs(60))
            .expect("time");
        let spec = LeaseSpec {
            lease_transitions: Some(2),
            ..held_by("other", old)
        };
        let (client, server) = mocked();
        let scenario = server.run(vec![
            Exchange::get(LEASE).reply(stored(spec)),
            // A replace carrying the resourceVersion read: a concurrent writer fails it.
            Exchange::put(LEASE)
                .with("/metadata/resourceVersion", json!("5"))
                .with(
                    "/metadata/annotations/tributary.dev~1watch-namespaces",
                    json!("factory"),
                )
                .with("/spec/holderIdentity", json!("me"))
                .with("/spec/leaseTransitions", json!(3))
                .with("/spec/leaseDurationSeconds", json!(15)),
        ]);
        assert!(lock(client).try_acquire().await.expect("no API error"));
        scenario.done().await;
    }

    #[tokio::test]
    async fn a_live_lease_of_another_replica_is_left_alone() {
        let (client, server) = mocked();
        let scenario = server.run(vec![
            Exchange::get(LEASE).reply(stored(held_by("other", Timestamp::now())))
        ]);
        assert!(!lock(client).try_acquire().await.expect("no API error"));
        scenario.done().await;
    }

    #[tokio::test]
    async fn a_lost_race_to_create_the_lease_is_not_an_error() {
        let (client, server) = mocked();
        let scenario = server.run(vec![
            Exchange::get(LEASE).not_found(),
            Exchange::post("/apis/coordination.k8s.io/v1/namespaces/tributary-system/leases")
                .with(
                    "/metadata/labels/app.kubernetes.io~1name",
                    json!("tributary-operator"),
                )
                .with("/spec/holderIdentity", json!("me"))
                .conflict(),
        ]);
        assert!(!lock(client).try_acquire().await.expect("no API error"));
        scenario.done().await;
    }

    #[tokio::test]
    async fn release_gives_the_held_lease_up() {
        let (client, server) = mocked();
        let scenario = server.run(vec![
            Exchange::get(LEASE).reply(stored(held_by("me", Timestamp::now()))),
            Exchange::put(LEASE)
                .without("/spec/holderIdentity")
                .without("/spec/renewTime")
                .with("/metadata/resourceVersion", json!("5")),
        ]);
        lock(client).release().await.expect("released");
        scenario.done().await;
    }

    #[test]
    fn an_expired_lease_is_free() {
        let now = Timestamp::now();
        let old = now
            .checked_sub(SignedDuration::from_secs(16))
            .expect("time");
        assert!(is_free(&held_by("other", old), "me", now));
    }
}
