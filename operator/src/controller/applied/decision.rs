//! The pure decision of whether applying a child can change anything: the hash of the
//! desired object last applied, the version the API server gave it then, and what a watch
//! cache shows of it now.

pub use crate::caches::{Cached, Seen, Version};
use std::hash::{Hash, Hasher};

/// What was applied last for one child: the desired object's hash and what the server
/// answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// [`desired_hash`] of the object applied.
    pub hash: u64,
    /// The child as the server answered the apply.
    pub seen: Seen,
}

/// Whether to send the apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing can change: the same object was applied and the child is as it was left.
    Skip,
    /// Apply (and record what the server answers).
    Apply,
}

/// Skip only when the desired object is the one last applied AND a filled cache shows the
/// child still is the object the server answered then, at the same version; any doubt
/// applies.
pub fn decide(last: Option<&Record>, desired: u64, cached: &Cached) -> Decision {
    match (last, cached) {
        (Some(last), Cached::Present(seen)) if last.hash == desired && *seen == last.seen => {
            Decision::Skip
        }
        _ => Decision::Apply,
    }
}

/// A hash of the desired object as it would be sent (its JSON): equal objects, equal
/// hashes, within this process.
pub fn desired_hash<K: serde::Serialize>(object: &K) -> Result<u64, serde_json::Error> {
    let bytes = serde_json::to_vec(object)?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;

    fn meta(generation: Option<i64>, version: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some("line-1-gateway".into()),
            namespace: Some("factory".into()),
            uid: Some("u-1".into()),
            generation,
            resource_version: Some(version.into()),
            ..ObjectMeta::default()
        }
    }

    fn config_map(value: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("line-1-gateway".into()),
                namespace: Some("factory".into()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([("config.yaml".into(), value.into())])),
            ..ConfigMap::default()
        }
    }

    /// The record of `desired` applied and answered with `answered`.
    fn applied(desired: u64, answered: &ObjectMeta) -> Record {
        Record {
            hash: desired,
            seen: Seen::of(answered).expect("versioned"),
        }
    }

    fn present(meta: &ObjectMeta) -> Cached {
        Cached::Present(Seen::of(meta).expect("versioned"))
    }

    #[test]
    fn an_unchanged_child_the_cache_shows_as_left_is_skipped() {
        let hash = desired_hash(&config_map("a")).expect("hashes");
        let answered = meta(None, "41");
        let last = applied(hash, &answered);
        assert_eq!(
            decide(Some(&last), hash, &present(&answered)),
            Decision::Skip
        );
    }

    #[test]
    fn a_changed_desired_object_is_applied() {
        let before = desired_hash(&config_map("a")).expect("hashes");
        let after = desired_hash(&config_map("b")).expect("hashes");
        assert_ne!(before, after);
        let answered = meta(None, "41");
        let last = applied(before, &answered);
        assert_eq!(
            decide(Some(&last), after, &present(&answered)),
            Decision::Apply
        );
    }

    #[test]
    fn a_child_someone_edited_is_applied_again() {
        let hash = desired_hash(&config_map("a")).expect("hashes");
        // A ConfigMap has no generation: any write moves its resourceVersion.
        let last = applied(hash, &meta(None, "41"));
        let edited = present(&meta(None, "57"));
        assert_eq!(decide(Some(&last), hash, &edited), Decision::Apply);
        // A Deployment's spec edit moves its generation.
        let last = applied(hash, &meta(Some(3), "41"));
        let edited = present(&meta(Some(4), "57"));
        assert_eq!(decide(Some(&last), hash, &edited), Decision::Apply);
    }

    #[test]
    fn a_deleted_child_is_applied_again() {
        let hash = desired_hash(&config_map("a")).expect("hashes");
        let last = applied(hash, &meta(None, "41"));
        assert_eq!(decide(Some(&last), hash, &Cached::Absent), Decision::Apply);
    }

    #[test]
    fn a_child_deleted_and_made_again_by_someone_else_is_applied() {
        let hash = desired_hash(&config_map("a")).expect("hashes");
        let answered = meta(Some(1), "41");
        let last = applied(hash, &answered);
        let mut other = answered.clone();
        other.uid = Some("u-2".into());
        assert_eq!(decide(Some(&last), hash, &present(&other)), Decision::Apply);
    }

    #[test]
    fn without_a_filled_cache_or_a_record_everything_is_applied() {
        let hash = desired_hash(&config_map("a")).expect("hashes");
        let answered = meta(None, "41");
        let last = applied(hash, &answered);
        assert_eq!(
            decide(Some(&last), hash, &Cached::NotReady),
            Decision::Apply
        );
        assert_eq!(decide(None, hash, &present(&answered)), Decision::Apply);
    }

    #[test]
    fn a_deployment_whose_status_alone_changed_is_skipped() {
        let deployment = Deployment {
            metadata: meta(None, "0"),
            spec: Some(DeploymentSpec {
                replicas: Some(2),
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        };
        let hash = desired_hash(&deployment).expect("hashes");
        let last = applied(hash, &meta(Some(3), "41"));
        // Pods became ready: the status moved the resourceVersion, not the generation.
        let now = Deployment {
            metadata: meta(Some(3), "97"),
            status: Some(DeploymentStatus {
                ready_replicas: Some(2),
                ..DeploymentStatus::default()
            }),
            ..deployment
        };
        assert_eq!(
            decide(Some(&last), hash, &present(&now.metadata)),
            Decision::Skip
        );
    }
}
