//! Leader election through a `coordination.k8s.io/v1` Lease: one operator replica
//! reconciles, the others wait and take over when the Lease expires.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// A Lease-based lock held by `identity`.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration_seconds: i32,
}

/// Why the Lease could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("leader Lease: {0}")]
pub struct LeaseError(#[from] kube::Error);

/// Whether `spec` is free for `identity` at `now`: unheld, held by it, or expired.
pub fn is_free(spec: &LeaseSpec, identity: &str, now: Timestamp) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == identity {
        return true;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    match &spec.renew_time {
        Some(MicroTime(renewed)) => renewed
            .checked_add(SignedDuration::from_secs(duration))
            .map_or(true, |end| end < now),
        None => true,
    }
}

impl LeaseLock {
    /// A lock on Lease `namespace/name`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration_seconds: i32,
    ) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration_seconds,
        }
    }

    /// Acquires or renews the Lease. `Ok(false)` when another replica holds it (or won a
    /// race for it).
    pub async fn try_acquire(&self) -> Result<bool, LeaseError> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
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

    #[test]
    fn an_expired_lease_is_free() {
        let now = Timestamp::now();
        let old = now
            .checked_sub(SignedDuration::from_secs(16))
            .expect("time");
        assert!(is_free(&held_by("other", old), "me", now));
    }
}
