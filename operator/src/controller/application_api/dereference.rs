//! The dereference step of an ApplicationApi: its Sinks (Ready, of the right type), the
//! brokers of its live Queue and its Gateway's Queues (the live exchange declared there,
//! its own user on managed ones), its keys Secret (kept or issued) and the Secrets its pods
//! mount. Each missing or unusable reference ends the reconcile with a condition.

use crate::broker::endpoint::{self, Unreachable};
use crate::build::api::{self as build, keys, sources, ApiInputs};
use crate::build::queue::access::{self, BrokerCredentials};
use crate::build::sink::ResolvedTarget;
use crate::build::worker::ResolvedQueue;
use crate::conditions::{self, reason};
use crate::controller::{
    broker_user, resolve_queue, resolve_secrets, Context, Outcome, Step, RESYNC, RETRY,
};
use crate::crd::{ApplicationApi, Sink};
use crate::reads::Reads;
use kube::ResourceExt;

/// Everything the build needs, or the outcome saying what is missing.
pub async fn dereference(ctx: &Context, api: &ApplicationApi) -> Step<ApiInputs> {
    let reads = &*ctx.reads;
    let namespace = api.namespace().unwrap_or_default();
    let spec = &api.spec;
    let history = match ready_sink(reads, &namespace, &spec.history.sink).await? {
        Ok(sink) => sink,
        Err(outcome) => return Ok(Err(outcome)),
    };
    if let Err(unusable) = sources::postgres_source(&spec.history, &history)? {
        return Ok(Err(invalid_reference(unusable.0)));
    }
    let latest = match &spec.latest {
        None => None,
        Some(latest) => match ready_sink(reads, &namespace, &latest.sink).await? {
            Ok(sink) => match sources::redis_source(&sink)? {
                Ok(_) => Some(sink),
                Err(unusable) => return Ok(Err(invalid_reference(unusable.0))),
            },
            Err(outcome) => return Ok(Err(outcome)),
        },
    };
    let (live, commands) = match brokers(ctx, api).await? {
        Ok(brokers) => brokers,
        Err(outcome) => return Ok(Err(outcome)),
    };
    let issued = match issued_keys(reads, api).await? {
        Ok(issued) => issued,
        Err(outcome) => return Ok(Err(outcome)),
    };
    let mut inputs = ApiInputs {
        history,
        latest,
        live,
        commands,
        keys: keys::plan(&spec.api_keys, &issued, &mut keys::generate)?,
        secrets: Default::default(),
        image: ctx.images.api.clone(),
    };
    inputs.secrets =
        match resolve_secrets(reads, &namespace, build::mounted_secrets(&inputs)).await? {
            Ok(secrets) => secrets,
            Err(outcome) => return Ok(Err(outcome)),
        };
    Ok(Ok(inputs))
}

/// Not Ready until the reference (or the referenced resource) is fixed; watches on Sinks,
/// Queues and Gateways wake it sooner than the resync.
fn invalid_reference(message: String) -> Outcome {
    Outcome::waiting(reason::INVALID_REFERENCE, message, RESYNC)
}

/// A Sink of the namespace that exists and is Ready.
async fn ready_sink(reads: &Reads, namespace: &str, name: &str) -> Step<Sink> {
    let waiting = |message: String| {
        Ok(Err(Outcome::waiting(
            reason::WAITING_FOR_SINK,
            message,
            RESYNC,
        )))
    };
    let Some(sink) = reads.sink(namespace, name).await? else {
        return waiting(format!("Sink {name:?} does not exist"));
    };
    let ready = sink
        .status
        .as_ref()
        .is_some_and(|s| conditions::is_ready(&s.conditions));
    if !ready {
        return waiting(format!("Sink {name:?} is not ready yet"));
    }
    Ok(Ok(sink))
}

fn target(queue: ResolvedQueue) -> ResolvedTarget {
    ResolvedTarget {
        broker_queue: queue.broker_queue,
        uri: queue.uri,
        credentials: queue.credentials,
        ca: queue.ca,
    }
}

type Brokers = (Option<ResolvedTarget>, Option<ResolvedTarget>);

/// The live Queue's broker (its exchange declared) and the Gateway's Queues' broker, each
/// with the API's own user on a managed broker.
async fn brokers(ctx: &Context, api: &ApplicationApi) -> Step<Brokers> {
    let reads = &*ctx.reads;
    let namespace = api.namespace().unwrap_or_default();
    let mut live = None;
    if let Some(spec) = &api.spec.live {
        match resolve_queue(reads, &namespace, &spec.queue).await? {
            Ok(queue) => live = Some((spec.queue.clone(), target(queue))),
            Err(outcome) => return Ok(Err(outcome)),
        }
        if let Err(outcome) = declare_live_exchange(ctx, &namespace, &spec.queue).await? {
            return Ok(Err(outcome));
        }
    }
    let mut commands = None;
    if let Some(spec) = &api.spec.commands {
        let queue = match gateway_queue(reads, &namespace, &spec.gateway).await? {
            Ok(queue) => queue,
            Err(outcome) => return Ok(Err(outcome)),
        };
        match resolve_queue(reads, &namespace, &queue).await? {
            Ok(resolved) => commands = Some((queue, target(resolved))),
            Err(outcome) => return Ok(Err(outcome)),
        }
    }
    let grants = grants(&namespace, live.as_ref(), commands.as_ref());
    let users = match broker_user::ensure(ctx, api, &grants).await? {
        Ok(users) => users,
        Err(outcome) => return Ok(Err(outcome)),
    };
    let own = |entry: Option<(String, ResolvedTarget)>| {
        entry.map(|(queue, mut target)| {
            broker_user::substitute(&mut target.uri, &mut target.credentials, users.get(&queue));
            target
        })
    };
    Ok(Ok((own(live), own(commands))))
}

/// What the API needs on each managed broker (by Queue name): bind its own queue to the
/// live exchange, publish commands; both on one user when both are on the same broker.
fn grants(
    namespace: &str,
    live: Option<&(String, ResolvedTarget)>,
    commands: Option<&(String, ResolvedTarget)>,
) -> broker_user::Grants {
    let live_exchange = build::live_exchange(namespace);
    let command_exchange = build::command_exchange(namespace);
    let managed = |entry: Option<&(String, ResolvedTarget)>| {
        entry
            .filter(|(_, t)| t.credentials == BrokerCredentials::Administrator)
            .map(|(queue, _)| queue.clone())
    };
    let (live, commands) = (managed(live), managed(commands));
    let mut grants = broker_user::Grants::new();
    for queue in live.iter().chain(&commands) {
        let permissions = access::api_permissions(
            (live.as_ref() == Some(queue)).then_some(live_exchange.as_str()),
            (commands.as_ref() == Some(queue)).then_some(command_exchange.as_str()),
        );
        grants.insert(queue.clone(), permissions);
    }
    grants
}

/// The Queue a Gateway routes to (all its routed Queues share one broker), once the Gateway
/// exists with commands enabled.
async fn gateway_queue(reads: &Reads, namespace: &str, name: &str) -> Step<String> {
    let Some(gateway) = reads.gateway_for_commands(namespace, name).await? else {
        return Ok(Err(Outcome::waiting(
            reason::WAITING_FOR_GATEWAY,
            format!("Gateway {name:?} does not exist"),
            RESYNC,
        )));
    };
    if !gateway.spec.commands.enabled {
        return Ok(Err(invalid_reference(format!(
            "spec.commands.gateway: Gateway {name:?} has commands disabled"
        ))));
    }
    match gateway.spec.routes.first() {
        Some(route) => Ok(Ok(route.queue.clone())),
        None => Ok(Err(invalid_reference(format!(
            "spec.commands.gateway: Gateway {name:?} routes to no Queue"
        )))),
    }
}

/// Declares `tributary.live.<namespace>` on the broker of Queue `queue`, as the operator
/// reaches it (administrator of a managed broker, the user's URI of an external one), so the
/// API can bind to it and Workers can publish to it.
async fn declare_live_exchange(ctx: &Context, namespace: &str, queue: &str) -> Step<()> {
    let unavailable = |message: String| {
        Ok(Err(Outcome::waiting(
            reason::BROKER_UNAVAILABLE,
            message,
            RETRY,
        )))
    };
    let Some(queue_object) = ctx.reads.queue(namespace, queue).await? else {
        return unavailable(format!("Queue {queue:?} does not exist"));
    };
    let endpoint = match endpoint::lookup(&ctx.reads, &queue_object).await {
        Ok(Ok(endpoint)) => endpoint,
        Ok(Err(Unreachable::NoAddress)) | Ok(Err(_)) => {
            return unavailable(format!(
                "the broker of Queue {queue:?} cannot be reached yet"
            ))
        }
        Err(endpoint::LookupError::Kube(error)) => return Err(error.into()),
        Err(endpoint::LookupError::Build(error)) => return Err(error.into()),
    };
    let exchange = build::live_exchange(namespace);
    if let Err(error) = ctx
        .broker
        .declare_topic_exchange(endpoint.amqp(), &exchange)
        .await
    {
        return unavailable(format!(
            "cannot declare the live exchange {exchange} on the broker of Queue {queue:?}: {error}"
        ));
    }
    Ok(Ok(()))
}

/// The keys already issued, from the keys Secret when this ApplicationApi owns it; a Secret
/// of that name owned by anything else is never touched.
async fn issued_keys(reads: &Reads, api: &ApplicationApi) -> Step<keys::IssuedKeys> {
    let namespace = api.namespace().unwrap_or_default();
    let name = keys::secret_name(&api.name_any());
    let Some(secret) = reads.secret(&namespace, &name).await? else {
        return Ok(Ok(keys::IssuedKeys::default()));
    };
    let uid = api.metadata.uid.as_deref();
    let ours = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|owner| Some(owner.uid.as_str()) == uid);
    if !ours {
        return Ok(Err(Outcome::waiting(
            reason::NAME_CONFLICT,
            format!(
                "Secret {name:?} exists and is not this ApplicationApi's; the operator leaves it \
                 alone (delete or rename it to have the keys issued)"
            ),
            RESYNC,
        )));
    }
    Ok(Ok(keys::IssuedKeys::from_secret(&secret)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SecretKeyRef;

    fn broker(credentials: BrokerCredentials) -> ResolvedTarget {
        ResolvedTarget {
            broker_queue: "factory.telemetry".into(),
            uri: SecretKeyRef {
                name: "telemetry-rabbitmq-credentials".into(),
                key: "uri".into(),
            },
            credentials,
            ca: None,
        }
    }

    #[test]
    fn one_user_per_managed_broker_with_the_rights_used_there() {
        let managed = (
            "telemetry".to_owned(),
            broker(BrokerCredentials::Administrator),
        );
        let same = grants("factory", Some(&managed), Some(&managed));
        assert_eq!(same.len(), 1);
        let both = &same["telemetry"];
        assert!(both.read.contains(r"tributary\.live\.factory"));
        assert!(both.write.contains(r"tributary\.commands\.factory"));

        let other = (
            "commands".to_owned(),
            broker(BrokerCredentials::Administrator),
        );
        let split = grants("factory", Some(&managed), Some(&other));
        assert!(!split["telemetry"].write.contains("commands"));
        assert!(!split["commands"].read.contains("live"));

        let external = ("telemetry".to_owned(), broker(BrokerCredentials::Supplied));
        assert!(grants("factory", Some(&external), None).is_empty());
    }
}
