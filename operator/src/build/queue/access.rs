//! Least privilege on a managed broker: the RabbitMQ user of each Gateway and Worker, the
//! permission regexes it gets on the broker's vhost, and the Secret its pods mount instead
//! of the broker's administrator credentials.
//!
//! What the images do over AMQP (read from their sources): the gateway only publishes, to
//! the default exchange with the queue's name as routing key, and declares nothing; the
//! worker consumes its queue and publishes to the default exchange (dead letters to the
//! DLQ, redelivery counting back onto its own queue, `queue` sinks to the target queue),
//! and declares nothing under the operator (`declare: false`). RabbitMQ checks a publish
//! to the default exchange as a write on the exchange `amq.default`, whatever the routing
//! key: write permissions cannot narrow it to some queues, and topic permissions apply
//! only to topic exchanges, so a workload that may write `amq.default` can publish to
//! every queue of the vhost. A managed broker holds one Queue (and its DLQ), which bounds
//! that.

use super::{ManagedNames, AMQP_PORT, KEY_PASSWORD, KEY_URI, KEY_USERNAME};
use crate::build::{child_meta, hash_parts, BuildError};
use crate::crd::SecretKeyRef;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::Resource;
use std::collections::BTreeMap;
use tributary_contract::command;

/// `app.kubernetes.io/name` of the per-workload broker credentials Secrets.
pub const COMPONENT: &str = "broker-user";
/// Annotation naming the Queue (resource) whose broker holds the Secret's user.
pub const QUEUE_ANNOTATION: &str = "tributary.dev/broker-queue";
/// The default exchange, as RabbitMQ names it in permission checks.
pub const DEFAULT_EXCHANGE: &str = "amq.default";
/// The vhost of a managed broker.
pub const MANAGED_VHOST: &str = "/";
/// Longest broker user name the operator derives.
pub const MAX_USER_NAME: usize = 64;
/// Length of a generated broker password (alphanumeric: about 5.95 bits each, 190 in all).
pub const PASSWORD_LENGTH: usize = 32;

/// Whose credentials a Queue's connection Secret, as a workload is given it, holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BrokerCredentials {
    /// The user's own, for an external broker (the operator is not its administrator).
    #[default]
    Supplied,
    /// A managed broker's administrator: the operator's alone, never mounted by a pod.
    Administrator,
    /// The workload's own user on a managed broker.
    Workload,
}

/// The Secret key a workload's pods may mount for a broker: `uri`, unless it holds a
/// managed broker's administrator credentials.
pub fn mountable(
    uri: &SecretKeyRef,
    credentials: BrokerCredentials,
) -> Result<&SecretKeyRef, BuildError> {
    match credentials {
        BrokerCredentials::Administrator => Err(BuildError::AdministratorSecret(uri.name.clone())),
        BrokerCredentials::Supplied | BrokerCredentials::Workload => Ok(uri),
    }
}

/// A regex matching nothing but the empty name, which no resource has: grants nothing.
pub const NOTHING: &str = "^$";

/// RabbitMQ permissions on one vhost: regexes over resource names.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Permissions {
    /// Declare and delete queues and exchanges.
    pub configure: String,
    /// Publish to exchanges, bind queues to them.
    pub write: String,
    /// Consume and get from queues.
    pub read: String,
}

impl Permissions {
    /// These permissions and those of a command sender: publish to `namespace`'s command
    /// exchange (the gateways declare it; a sender only looks it up, which needs no right),
    /// nothing else of the commands' names.
    pub fn with_command_sender(mut self, namespace: &str) -> Self {
        let exchange = exactly(&[&command::exchange(namespace)]);
        self.write = either(&self.write, &exchange);
        self
    }

    /// The same, and publish to the namespace's live exchange (a Worker with a `live`
    /// sink; the exchange is looked up passively, which needs no permission).
    pub fn with_live_publisher(mut self, namespace: &str) -> Self {
        let exchange = exactly(&[&crate::build::api::live_exchange(namespace)]);
        self.write = either(&self.write, &exchange);
        self
    }
}

/// A regex matching what `a` or `b` matches.
fn either(a: &str, b: &str) -> String {
    match (a, b) {
        (NOTHING, other) | (other, NOTHING) => other.to_owned(),
        _ => format!("{a}|{b}"),
    }
}

/// A regex matching exactly one of `names`, each escaped; [`NOTHING`] for none.
pub fn exactly(names: &[&str]) -> String {
    if names.is_empty() {
        return NOTHING.to_owned();
    }
    let escaped: Vec<String> = names.iter().map(|name| regex_escape(name)).collect();
    format!("^({})$", escaped.join("|"))
}

/// `name` with every regex metacharacter escaped (RabbitMQ uses PCRE-compatible regexes).
pub fn regex_escape(name: &str) -> String {
    let mut escaped = String::with_capacity(name.len());
    for c in name.chars() {
        if "\\.+*?()|[]{}^$#&-~ ".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// A regex matching the command exchange of `namespace`'s tenant and every name under it
/// (its device queues, its expired-commands exchange and queue). Namespaces hold no dots,
/// so no other tenant's names match.
pub fn command_names(namespace: &str) -> String {
    format!(r"^{}(\..+)?$", regex_escape(&command::exchange(namespace)))
}

/// What a Gateway's user may do: publish to the default exchange (devices' messages, and
/// responses to commands through direct reply-to); with commands enabled, also declare,
/// bind, consume and delete its tenant's command exchange and queues ([`command_names`]).
pub fn gateway_permissions(namespace: &str, commands: bool) -> Permissions {
    if !commands {
        return Permissions {
            configure: NOTHING.to_owned(),
            write: exactly(&[DEFAULT_EXCHANGE]),
            read: NOTHING.to_owned(),
        };
    }
    let names = command_names(namespace);
    Permissions {
        configure: names.clone(),
        write: format!("{}|{names}", exactly(&[DEFAULT_EXCHANGE])),
        read: names,
    }
}

/// What a Worker's user may do on one broker: consume `consumed` (its queue, when on this
/// broker), publish to the default exchange (dead letters, redelivery counting, `queue`
/// sinks); declare nothing.
pub fn worker_permissions(consumed: &[&str]) -> Permissions {
    Permissions {
        configure: NOTHING.to_owned(),
        write: exactly(&[DEFAULT_EXCHANGE]),
        read: exactly(consumed),
    }
}

/// Server-named queues (`amq.gen-…`): RabbitMQ names a queue declared without a name so,
/// and checks the declaring user's rights on that name.
pub const SERVER_NAMED_QUEUES: &str = r"^amq\.gen-.*$";

/// What an ApplicationApi's user may do on one broker (read from `api-image`'s `live` and
/// `commands/broker` modules):
///
/// - `live_exchange`: declare its own exclusive, auto-deleted, server-named queue
///   (configure on `amq.gen-…`), bind it to the live exchange (write on the queue, read on
///   the exchange) and consume it (read on the queue). The operator declares the exchange,
///   so the API only binds to it.
/// - `command_exchange`: declare the command exchange as the gateways do (a non-passive
///   declaration of an existing exchange is still checked as configure, on that exchange
///   only) and publish to it (write). Answers come through RabbitMQ's direct reply-to:
///   consuming the pseudo-queue `amq.rabbitmq.reply-to` is not a queue access RabbitMQ
///   checks, and the device's answer is the gateway's publish (its own write on the
///   default exchange), so it needs no grant here.
///
/// Nothing else: no default exchange, no other queue.
pub fn api_permissions(live_exchange: Option<&str>, command_exchange: Option<&str>) -> Permissions {
    let mut permissions = Permissions {
        configure: NOTHING.to_owned(),
        write: NOTHING.to_owned(),
        read: NOTHING.to_owned(),
    };
    if let Some(exchange) = live_exchange {
        permissions.configure = SERVER_NAMED_QUEUES.to_owned();
        permissions.write = SERVER_NAMED_QUEUES.to_owned();
        permissions.read = either(SERVER_NAMED_QUEUES, &exactly(&[exchange]));
    }
    if let Some(exchange) = command_exchange {
        let exchange = exactly(&[exchange]);
        permissions.configure = either(&permissions.configure, &exchange);
        permissions.write = either(&permissions.write, &exchange);
    }
    permissions
}

/// The broker user of a workload: `<kind>.<namespace>.<name>`; past [`MAX_USER_NAME`]
/// cut and suffixed with a hash of the whole, so it stays stable and distinct.
pub fn user_name(kind: &str, namespace: &str, name: &str) -> String {
    let full = format!("{kind}.{namespace}.{name}");
    if full.len() <= MAX_USER_NAME {
        return full;
    }
    let hash = hash_parts([("user", full.as_bytes())]);
    // Names are ASCII (DNS labels and subdomains), so any byte is a char boundary.
    let keep = MAX_USER_NAME - 17;
    format!("{}-{}", &full[..keep], &hash[..16])
}

/// Name of the Secret holding a workload's user on the broker of Queue `queue`.
pub fn secret_name(child: &str, queue: &str) -> String {
    format!("{child}-amqp-{queue}")
}

/// The AMQP URI of `user` on the managed broker of Queue `queue` in `namespace`: the same
/// host, port and vhost as the administrator's URI in the Queue's credentials Secret.
pub fn managed_uri(queue: &str, namespace: &str, user: &str, password: &str) -> String {
    let host = ManagedNames::for_queue(queue).host(namespace);
    format!("amqp://{user}:{password}@{host}:{AMQP_PORT}/%2f")
}

/// The Secret of a workload's broker user, owned by the workload (same `uri` key as the
/// Queue's credentials Secret, so the pods need no other change).
pub fn user_secret<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: &str,
    queue: &str,
    user: &str,
    password: &str,
) -> Result<Secret, BuildError> {
    let mut meta = child_meta(owner, name, COMPONENT)?;
    let namespace = meta
        .namespace
        .clone()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    meta.annotations = Some(BTreeMap::from([(
        QUEUE_ANNOTATION.to_owned(),
        queue.to_owned(),
    )]));
    let data = [
        (KEY_USERNAME, user.to_owned()),
        (KEY_PASSWORD, password.to_owned()),
        (KEY_URI, managed_uri(queue, &namespace, user, password)),
    ];
    Ok(Secret {
        metadata: meta,
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
                .collect(),
        ),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_dots_are_escaped_so_they_match_only_themselves() {
        assert_eq!(exactly(&["factory.telemetry"]), r"^(factory\.telemetry)$");
        assert_eq!(
            exactly(&["a.b", "a+b"]),
            r"^(a\.b|a\+b)$",
            "alternatives, each escaped"
        );
        assert_eq!(exactly(&[]), NOTHING);
        assert_eq!(regex_escape(r"x(1)|[y]*$^\"), r"x\(1\)\|\[y\]\*\$\^\\");
    }

    #[test]
    fn a_gateway_without_commands_may_only_publish_to_the_default_exchange() {
        let permissions = gateway_permissions("factory", false);
        assert_eq!(permissions.configure, "^$");
        assert_eq!(permissions.write, r"^(amq\.default)$");
        assert_eq!(permissions.read, "^$");
    }

    #[test]
    fn a_gateway_with_commands_may_use_its_tenants_command_names_only() {
        let permissions = gateway_permissions("factory", true);
        let names = r"^tributary\.commands\.factory(\..+)?$";
        assert_eq!(permissions.configure, names);
        assert_eq!(permissions.read, names);
        assert_eq!(permissions.write, format!(r"^(amq\.default)$|{names}"));
        let matches = |name: &str| regex::Regex::new(names).expect("regex").is_match(name);
        assert!(matches("tributary.commands.factory"));
        assert!(matches("tributary.commands.factory.device.m-1"));
        assert!(matches("tributary.commands.factory.expired"));
        assert!(!matches("tributary.commands.factory2.device.m-1"));
        assert!(!matches("tributary.commands.factoryXdevice"));
        assert!(!matches("factory.telemetry"));
    }

    #[test]
    fn a_worker_may_read_only_its_queue_and_publish_to_the_default_exchange() {
        let permissions = worker_permissions(&["factory.telemetry"]);
        assert_eq!(permissions.read, r"^(factory\.telemetry)$");
        assert_eq!(permissions.write, r"^(amq\.default)$");
        assert_eq!(permissions.configure, "^$");
        // On a `queue` sink's target broker it only publishes.
        assert_eq!(worker_permissions(&[]).read, "^$");
    }

    #[test]
    fn a_worker_with_a_command_sink_may_also_publish_to_the_command_exchange() {
        let permissions = worker_permissions(&["factory.telemetry"]).with_command_sender("factory");
        assert_eq!(permissions.configure, NOTHING);
        assert_eq!(
            permissions.write,
            r"^(amq\.default)$|^(tributary\.commands\.factory)$"
        );
        assert_eq!(permissions.read, r"^(factory\.telemetry)$");
    }

    #[test]
    fn a_live_publisher_may_write_to_its_namespaces_live_exchange_only() {
        let matches =
            |pattern: &str, name: &str| regex::Regex::new(pattern).expect("regex").is_match(name);
        let permissions = worker_permissions(&["factory.telemetry"]).with_live_publisher("factory");
        assert_eq!(permissions.configure, NOTHING);
        assert!(matches(&permissions.write, "tributary.live.factory"));
        assert!(!matches(&permissions.write, "tributary.live.factory2"));
        assert!(!matches(&permissions.write, "tributary.live.other"));
        assert!(!matches(&permissions.read, "tributary.live.factory"));
    }

    #[test]
    fn an_api_may_only_bind_its_own_queue_to_the_live_exchange_and_publish_commands() {
        let matches =
            |pattern: &str, name: &str| regex::Regex::new(pattern).expect("regex").is_match(name);
        let live = api_permissions(Some("tributary.live.factory"), None);
        assert!(matches(&live.configure, "amq.gen-Jzq3B0xWn1"));
        assert!(!matches(&live.configure, "factory.telemetry"));
        assert!(matches(&live.read, "tributary.live.factory"));
        assert!(matches(&live.read, "amq.gen-Jzq3B0xWn1"));
        assert!(!matches(&live.read, "tributary.live.factory2"));
        assert!(!matches(&live.read, "factory.telemetry"));
        assert!(!matches(&live.write, "amq.default"));
        assert!(
            !matches(&live.write, "tributary.live.factory"),
            "it never publishes there"
        );

        let commands = api_permissions(None, Some("tributary.commands.factory"));
        assert_eq!(commands.configure, r"^(tributary\.commands\.factory)$");
        assert_eq!(commands.write, r"^(tributary\.commands\.factory)$");
        assert_eq!(
            commands.read, NOTHING,
            "direct reply-to needs no read right"
        );
        assert!(!matches(
            &commands.write,
            "tributary.commands.factory.device.m-1"
        ));

        let both = api_permissions(
            Some("tributary.live.factory"),
            Some("tributary.commands.factory"),
        );
        assert!(matches(&both.write, "tributary.commands.factory"));
        assert!(matches(&both.write, "amq.gen-x"));
        assert!(matches(&both.configure, "tributary.commands.factory"));
        assert_eq!(api_permissions(None, None).write, NOTHING);
    }

    #[test]
    fn user_names_are_stable_bounded_and_distinct() {
        assert_eq!(
            user_name("gateway", "factory", "line-1"),
            "gateway.factory.line-1"
        );
        let long = "n".repeat(200);
        let a = user_name("worker", "factory", &long);
        assert_eq!(a.len(), MAX_USER_NAME);
        assert_eq!(a, user_name("worker", "factory", &long), "stable");
        let other = format!("{long}x");
        assert_ne!(a, user_name("worker", "factory", &other), "distinct");
    }

    #[test]
    fn the_user_secret_has_the_queue_secrets_uri_layout_with_the_users_credentials() {
        let gateway: crate::crd::Gateway = crate::build::fixtures::load("gateway.yaml");
        let secret = user_secret(
            &gateway,
            "line-1-gateway-amqp-telemetry",
            "telemetry",
            "gw",
            "pw",
        )
        .expect("builds");
        let data = secret.data.expect("data");
        let uri = String::from_utf8(data[KEY_URI].0.clone()).expect("utf-8");
        assert_eq!(uri, "amqp://gw:pw@telemetry-rabbitmq.factory.svc:5672/%2f");
        assert_eq!(
            secret.metadata.annotations.expect("annotated")[QUEUE_ANNOTATION],
            "telemetry"
        );
        let owners = secret.metadata.owner_references.expect("owned");
        assert_eq!(owners[0].kind, "Gateway");
    }
}
