//! PodDisruptionBudgets across API versions: `policy/v1` from Kubernetes 1.21, only
//! `policy/v1beta1` before (the local test cluster runs 1.20). The version is discovered
//! once at startup; the spec fields the operator sets are identical in both.

use super::Error;
use crate::build::{BuildError, FIELD_MANAGER};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ApiResource, DynamicObject, ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};

/// Which PodDisruptionBudget API the cluster serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PdbApi {
    resource: ApiResource,
}

impl PdbApi {
    /// The API for `policy/<version>`.
    pub fn for_version(version: &str) -> Self {
        PdbApi {
            resource: ApiResource {
                group: "policy".to_owned(),
                version: version.to_owned(),
                api_version: format!("policy/{version}"),
                kind: "PodDisruptionBudget".to_owned(),
                plural: "poddisruptionbudgets".to_owned(),
            },
        }
    }

    /// Prefers `policy/v1`, falls back to `policy/v1beta1` when the cluster lacks it.
    pub async fn discover(client: &Client) -> Self {
        match client.list_api_group_resources("policy/v1").await {
            Ok(list)
                if list
                    .resources
                    .iter()
                    .any(|r| r.name == "poddisruptionbudgets") =>
            {
                Self::for_version("v1")
            }
            _ => Self::for_version("v1beta1"),
        }
    }

    /// The apiVersion in use.
    pub fn api_version(&self) -> &str {
        &self.resource.api_version
    }

    /// Converts a `policy/v1` object into the served version.
    pub fn to_dynamic(&self, pdb: &PodDisruptionBudget) -> Result<DynamicObject, Error> {
        let mut value = serde_json::to_value(pdb)?;
        value["apiVersion"] = serde_json::Value::String(self.resource.api_version.clone());
        Ok(serde_json::from_value(value)?)
    }

    /// Server-side applies the PodDisruptionBudget in the served version; answers its
    /// metadata as the server returned it.
    pub async fn apply(
        &self,
        client: &Client,
        pdb: &PodDisruptionBudget,
    ) -> Result<ObjectMeta, Error> {
        let namespace = pdb
            .metadata
            .namespace
            .clone()
            .ok_or(BuildError::MissingMetadata("namespace"))?;
        let name = pdb
            .metadata
            .name
            .clone()
            .ok_or(BuildError::MissingMetadata("name"))?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &namespace, &self.resource);
        let object = self.to_dynamic(pdb)?;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        Ok(api
            .patch(&name, &params, &Patch::Apply(&object))
            .await?
            .metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    #[test]
    fn v1_budget_converts_to_v1beta1_keeping_the_spec() {
        let pdb = PodDisruptionBudget {
            metadata: kube::api::ObjectMeta {
                name: Some("gw".into()),
                namespace: Some("factory".into()),
                ..Default::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let object = PdbApi::for_version("v1beta1")
            .to_dynamic(&pdb)
            .expect("converts");
        let types = object.types.expect("types");
        assert_eq!(types.api_version, "policy/v1beta1");
        assert_eq!(types.kind, "PodDisruptionBudget");
        assert_eq!(object.data["spec"]["maxUnavailable"], 1);
    }
}
