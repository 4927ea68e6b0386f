//! What the platform lets each namespace choose: the images its Gateways, Workers and
//! managed brokers run, and the Service types its Gateways open. Set by the operator's
//! settings (`--allowed-images`, `--allowed-service-types`; the chart's `tenancy` values),
//! checked in every reconcile's validate step; a refused choice becomes the resource's
//! `Ready=False/InvalidSpec` condition, and nothing is created for it.
//!
//! A rule names a namespace (or `*` for every namespace not named) and its allowed values:
//! `tenant-a=registry.example.com/tenant-a/,registry.example.com/shared/;*=registry.example.com/shared/`.
//! Without any rule, everything is allowed (the default); with rules but none for a
//! namespace and no `*`, that namespace may choose anything.

use crate::crd::{Gateway, Queue, Worker};
use kube::ResourceExt;
use std::collections::BTreeMap;

use super::BuildError;

/// Allowed values per namespace, `*` standing for every namespace not named.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceRules(BTreeMap<String, Vec<String>>);

impl NamespaceRules {
    /// Parses `NAMESPACE=VALUE[,VALUE…][;NAMESPACE=…]` (empty text: no rules).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rules = BTreeMap::new();
        for rule in text.split(';').map(str::trim).filter(|r| !r.is_empty()) {
            let (namespace, values) = rule
                .split_once('=')
                .ok_or_else(|| format!("{rule:?} is not NAMESPACE=VALUE[,VALUE...]"))?;
            let namespace = namespace.trim();
            let values: Vec<String> = values
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .collect();
            if namespace.is_empty() || values.is_empty() {
                return Err(format!(
                    "{rule:?} needs a namespace (or *) and at least one value"
                ));
            }
            if rules.insert(namespace.to_owned(), values).is_some() {
                return Err(format!("namespace {namespace:?} is named twice"));
            }
        }
        Ok(Self(rules))
    }

    /// The values `namespace` may choose from, or `None` when it may choose anything.
    fn for_namespace(&self, namespace: &str) -> Option<&[String]> {
        self.0
            .get(namespace)
            .or_else(|| self.0.get("*"))
            .map(Vec::as_slice)
    }
}

/// Whether `image` lies under `prefix`: the prefix itself, or the prefix followed by a
/// path, tag or digest separator (so `registry.example.com` does not admit
/// `registry.example.com.evil.io/x`).
fn image_under(image: &str, prefix: &str) -> bool {
    match image.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => prefix.ends_with(['/', ':', '@']) || rest.starts_with(['/', ':', '@']),
        None => false,
    }
}

/// The operator's tenancy settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantPolicy {
    /// Image prefixes per namespace.
    pub images: NamespaceRules,
    /// Gateway Service types per namespace.
    pub service_types: NamespaceRules,
}

impl TenantPolicy {
    fn check_image(&self, namespace: &str, field: &str, image: &str) -> Result<(), BuildError> {
        match self.images.for_namespace(namespace) {
            Some(prefixes) if !prefixes.iter().any(|p| image_under(image, p)) => {
                Err(BuildError::Invalid(format!(
                    "{field}: image {image:?} is not allowed in namespace {namespace:?}; the \
                     operator's image allow-list admits images under {prefixes:?}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// A Gateway's image and Service type.
    pub fn admits_gateway(&self, gateway: &Gateway) -> Result<(), BuildError> {
        let namespace = gateway.namespace().unwrap_or_default();
        if let Some(image) = &gateway.spec.image {
            self.check_image(&namespace, "spec.image", image)?;
        }
        self.check_service_type(&namespace, gateway.spec.service.type_.as_str())
    }

    /// A Worker's runtime image and its custom container's image.
    pub fn admits_worker(&self, worker: &Worker) -> Result<(), BuildError> {
        let namespace = worker.namespace().unwrap_or_default();
        if let Some(image) = &worker.spec.image {
            self.check_image(&namespace, "spec.image", image)?;
        }
        if let Some(container) = &worker.spec.container {
            self.check_image(&namespace, "spec.container.image", &container.image)?;
        }
        Ok(())
    }

    /// An ApplicationApi's image and Service type.
    pub fn admits_api(&self, api: &crate::crd::ApplicationApi) -> Result<(), BuildError> {
        let namespace = api.namespace().unwrap_or_default();
        if let Some(image) = &api.spec.image {
            self.check_image(&namespace, "spec.image", image)?;
        }
        self.check_service_type(&namespace, api.spec.service.type_.as_str())
    }

    fn check_service_type(&self, namespace: &str, service_type: &str) -> Result<(), BuildError> {
        match self.service_types.for_namespace(namespace) {
            Some(types) if !types.iter().any(|t| t == service_type) => {
                Err(BuildError::Invalid(format!(
                    "spec.service.type: {service_type} is not allowed in namespace \
                     {namespace:?}; the operator admits {types:?}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// A managed broker's image.
    pub fn admits_queue(&self, queue: &Queue) -> Result<(), BuildError> {
        let namespace = queue.namespace().unwrap_or_default();
        match queue
            .spec
            .broker
            .managed
            .as_ref()
            .and_then(|m| m.image.as_ref())
        {
            Some(image) => self.check_image(&namespace, "spec.broker.managed.image", image),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::load;
    use crate::crd::gateway::ServiceType;

    fn policy(images: &str, service_types: &str) -> TenantPolicy {
        TenantPolicy {
            images: NamespaceRules::parse(images).expect("images"),
            service_types: NamespaceRules::parse(service_types).expect("types"),
        }
    }

    #[test]
    fn rules_parse_and_bad_rules_are_refused() {
        let rules = NamespaceRules::parse(" factory=a/, b/ ; *=c/ ").expect("parses");
        assert_eq!(
            rules.for_namespace("factory"),
            Some(&["a/".to_owned(), "b/".to_owned()][..])
        );
        assert_eq!(rules.for_namespace("other"), Some(&["c/".to_owned()][..]));
        assert_eq!(
            NamespaceRules::parse("").expect("empty").for_namespace("x"),
            None
        );
        for bad in ["factory", "=a/", "factory=", "a=x;a=y"] {
            assert!(NamespaceRules::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn images_must_lie_under_an_allowed_prefix_at_a_separator() {
        assert!(image_under(
            "registry.example.com/team/app:1",
            "registry.example.com/team/"
        ));
        assert!(image_under(
            "registry.example.com/team/app:1",
            "registry.example.com"
        ));
        assert!(image_under("rabbitmq:3-management", "rabbitmq"));
        assert!(!image_under(
            "registry.example.com.evil.io/app",
            "registry.example.com"
        ));
        assert!(!image_under(
            "registry.example.com/teamx/app",
            "registry.example.com/team"
        ));
        assert!(!image_under(
            "docker.io/library/busybox",
            "registry.example.com/"
        ));
    }

    #[test]
    fn a_workers_custom_image_outside_the_allow_list_is_invalid() {
        let worker: Worker = load("worker-container.yaml");
        let image = &worker.spec.container.as_ref().expect("container").image;
        let refused = policy("factory=registry.example.com/", "");
        let error = refused.admits_worker(&worker).expect_err("refused");
        assert!(
            error.to_string().contains("spec.container.image")
                && error.to_string().contains(image.as_str()),
            "{error}"
        );
        let (registry, _) = image.split_once('/').unwrap_or((image.as_str(), ""));
        assert_eq!(
            policy(&format!("*={registry}"), "").admits_worker(&worker),
            Ok(())
        );
        // Rules for other namespaces only: this one may choose anything.
        assert_eq!(
            policy("tenant-b=registry.example.com/", "").admits_worker(&worker),
            Ok(())
        );
        assert_eq!(TenantPolicy::default().admits_worker(&worker), Ok(()));
    }

    #[test]
    fn a_gateway_service_type_outside_the_allow_list_is_invalid() {
        let mut gateway: Gateway = load("gateway.yaml");
        gateway.spec.service.type_ = ServiceType::LoadBalancer;
        let only_internal = policy("", "*=ClusterIP,NodePort");
        let error = only_internal.admits_gateway(&gateway).expect_err("refused");
        assert!(error.to_string().contains("LoadBalancer"), "{error}");
        let edge = policy("", "factory=LoadBalancer;*=ClusterIP");
        assert_eq!(edge.admits_gateway(&gateway), Ok(()));
        gateway.spec.image = Some("docker.io/someone/gateway:latest".into());
        let images = policy("*=tributary/", "");
        assert!(images.admits_gateway(&gateway).is_err());
    }

    #[test]
    fn a_managed_brokers_image_is_checked_too() {
        let mut queue: Queue = load("queue-managed.yaml");
        if let Some(managed) = queue.spec.broker.managed.as_mut() {
            managed.image = Some("docker.io/someone/rabbitmq:latest".into());
        }
        assert!(policy("*=rabbitmq", "").admits_queue(&queue).is_err());
        assert_eq!(
            policy("*=docker.io/someone/", "").admits_queue(&queue),
            Ok(())
        );
    }
}
