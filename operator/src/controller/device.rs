//! Device controller: validates the Device, issues the credentials the operator owes it
//! (a generated secret, rotated on request with a grace period; a client certificate,
//! renewed before it expires), records in its status how gateways check them, and checks
//! that what it references exists. The Gateways it names are woken by the change and
//! hand their pods the new table; the gateways' reports fill the activity fields
//! ([`crate::registry::collector`]).

use super::{
    apply, being_deleted, checked, patch_status, ready_condition, Context, Error, Outcome, Step,
    RESYNC,
};
use crate::broker::endpoint::random_token;
use crate::build::device::{self as build, certificate_secret_name, credentials_secret_name};
use crate::conditions::reason;
use crate::crd::device::{Device, DeviceStatus, GeneratedStatus};
use crate::crd::Gateway;
use crate::registry::credentials::{self, rfc3339, Generated, Issued};
use crate::registry::keys::NamespaceKeys;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// One reconcile of a Device.
pub async fn reconcile(device: Arc<Device>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile("Device");
    if being_deleted(&device.metadata) {
        // Its credential Secrets go with it (garbage collection); its Gateways drop it.
        return Ok(Action::await_change());
    }
    let span = tracing::info_span!("reconcile", kind = "Device", name = %device.name_any(), namespace = ?device.namespace());
    let current = device.status.clone().unwrap_or_default();
    let mut status = DeviceStatus {
        device_id: Some(device.device_id()),
        ..DeviceStatus::default()
    };
    let outcome = steps(&device, &ctx, &mut status).instrument(span).await?;
    status.conditions =
        ready_condition(&ctx, device.as_ref(), &current.conditions, &outcome.ready).await;
    status.observed_generation = device.metadata.generation;
    // The activity fields belong to the collector: never written (nor compared) here.
    patch_status(
        &ctx.client,
        device.as_ref(),
        Some(&without_activity(current)),
        &status,
    )
    .await?;
    Ok(outcome.action)
}

/// The status without what the gateways report.
pub fn without_activity(status: DeviceStatus) -> DeviceStatus {
    DeviceStatus {
        connected: None,
        connections: None,
        last_seen: None,
        messages_accepted: None,
        messages_rejected: None,
        commands_expired: None,
        ..status
    }
}

async fn steps(
    device: &Device,
    ctx: &Context,
    status: &mut DeviceStatus,
) -> Result<Outcome, Error> {
    if let Err(outcome) = checked(build::validate(device))? {
        return Ok(outcome);
    }
    let namespace = device.namespace().unwrap_or_default();
    let keys = ctx.registry.keys.get(&ctx.client, &namespace).await?;
    let now = Timestamp::now().as_second();
    let mut next_check = RESYNC;
    let credentials = &device.spec.credentials;
    if let Some(spec) = &credentials.generated {
        match ensure_generated(ctx, device, &keys, spec, now).await? {
            Ok(generated) => {
                let until = generated
                    .previous_valid_until
                    .as_deref()
                    .and_then(|t| t.parse::<Timestamp>().ok());
                if let Some(until) = until {
                    next_check = next_check.min(seconds_until(until.as_second(), now));
                    status.credential_expiry = generated.previous_valid_until.clone();
                }
                status.credentials_secret = Some(credentials_secret_name(&device.name_any()));
                status.generated = Some(generated);
            }
            Err(outcome) => return Ok(outcome),
        }
    }
    if let Some(spec) = &credentials.certificate {
        match ensure_certificate(ctx, device, &keys, spec, now).await? {
            Ok(issued) => {
                next_check = next_check.min(seconds_until(issued.renew_at(), now));
                let expiry = rfc3339(issued.not_after);
                status.credential_expiry = Some(match status.credential_expiry.take() {
                    Some(other) if other < expiry => other,
                    _ => expiry,
                });
                status.certificate_secret = Some(certificate_secret_name(&device.name_any()));
            }
            Err(outcome) => return Ok(outcome),
        }
    }
    if let Some(reference) = &credentials.password_hash {
        if let Err(mut outcome) = check_hash(ctx, &namespace, reference).await? {
            // Issued credentials still expire and renew on time.
            if outcome.ready.reason != reason::INVALID_SPEC {
                outcome.action = Action::requeue(next_check);
            }
            return Ok(outcome);
        }
    }
    if let Err(mut outcome) = check_gateways(ctx, &namespace, &device.spec.gateways).await? {
        outcome.action = Action::requeue(next_check);
        return Ok(outcome);
    }
    let mut outcome = Outcome::ready(format!(
        "credentials issued; accepted by Gateway {}",
        device.spec.gateways.join(", ")
    ));
    outcome.action = Action::requeue(next_check);
    Ok(outcome)
}

fn seconds_until(at: i64, now: i64) -> Duration {
    Duration::from_secs(u64::try_from(at.saturating_sub(now)).unwrap_or(0).max(1))
}

fn generated_status(keys: &NamespaceKeys, generated: &Generated) -> GeneratedStatus {
    GeneratedStatus {
        rotation: generated.rotation,
        key_id: keys.key_id(),
        verifier: keys.verifier(generated.password.as_bytes()),
        previous_verifier: generated
            .previous
            .as_ref()
            .map(|(password, _)| keys.verifier(password.as_bytes())),
        previous_valid_until: generated
            .previous
            .as_ref()
            .map(|(_, until)| rfc3339(*until)),
    }
}

/// A Secret of this namespace, if it exists: data and annotations, and whether this
/// Device owns it.
async fn read_secret(
    ctx: &Context,
    device: &Device,
    name: &str,
) -> Result<Option<(BTreeMap<String, Vec<u8>>, BTreeMap<String, String>, bool)>, Error> {
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &device.namespace().unwrap_or_default());
    let Some(secret) = api.get_opt(name).await? else {
        return Ok(None);
    };
    let uid = device.meta().uid.clone().unwrap_or_default();
    let owned = secret
        .owner_references()
        .iter()
        .any(|owner| owner.uid == uid && owner.controller == Some(true));
    let data = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    Ok(Some((data, secret.annotations().clone(), owned)))
}

fn not_ours(name: &str) -> Outcome {
    Outcome::invalid(format!(
        "Secret {name:?} exists and does not belong to this Device; delete or rename it"
    ))
}

/// Whether the current status already describes the generated secret the spec asks for:
/// made for this rotation with the namespace's current key, its Secret still there (by
/// the metadata cache) with the same rotation, and no previous secret past its grace.
fn generated_is_current(
    ctx: &Context,
    device: &Device,
    keys: &NamespaceKeys,
    spec: &crate::crd::device::GeneratedCredential,
    now: i64,
) -> Option<GeneratedStatus> {
    let current = device.status.as_ref()?.generated.clone()?;
    let namespace = device.namespace()?;
    let secret = ctx
        .registry
        .device_secret(&namespace, &credentials_secret_name(&device.name_any()))?;
    let rotation = secret
        .annotations()
        .get(credentials::ROTATION_ANNOTATION)?
        .parse::<i64>()
        .ok()?;
    let expired = current
        .previous_valid_until
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .is_some_and(|until| until.as_second() <= now);
    (rotation == spec.rotation
        && current.rotation == spec.rotation
        && current.key_id == keys.key_id()
        && !expired)
        .then_some(current)
}

/// The generated secret, made or rotated when due; without a change, read from the
/// caches only.
async fn ensure_generated(
    ctx: &Context,
    device: &Device,
    keys: &NamespaceKeys,
    spec: &crate::crd::device::GeneratedCredential,
    now: i64,
) -> Step<GeneratedStatus> {
    if let Some(current) = generated_is_current(ctx, device, keys, spec, now) {
        return Ok(Ok(current));
    }
    let name = credentials_secret_name(&device.name_any());
    let existing = match read_secret(ctx, device, &name).await? {
        None => None,
        Some((_, _, false)) => return Ok(Err(not_ours(&name))),
        Some((data, annotations, true)) => Generated::from_secret(&data, &annotations),
    };
    let planned = credentials::plan_generated(existing.as_ref(), spec, now, || random_token(32));
    let new = match checked(planned)? {
        Ok(Some(new)) => new,
        Ok(None) => match existing {
            Some(existing) => return Ok(Ok(generated_status(keys, &existing))),
            None => unreachable!("a missing secret is always planned"),
        },
        Err(outcome) => return Ok(Err(outcome)),
    };
    match checked(build::credentials_secret(device, &new))? {
        Ok(secret) => {
            apply(&ctx.client, &secret).await?;
            Ok(Ok(generated_status(keys, &new)))
        }
        Err(outcome) => Ok(Err(outcome)),
    }
}

/// The client certificate, issued when missing, stale or due for renewal.
async fn ensure_certificate(
    ctx: &Context,
    device: &Device,
    keys: &NamespaceKeys,
    spec: &crate::crd::device::CertificateCredential,
    now: i64,
) -> Step<Issued> {
    let name = certificate_secret_name(&device.name_any());
    let id = device.device_id();
    let namespace = device.namespace().unwrap_or_default();
    let cached = ctx
        .registry
        .device_secret(&namespace, &name)
        .and_then(|meta| Issued::from_annotations(meta.annotations()));
    if let Some(issued) = cached
        .filter(|issued| !credentials::needs_certificate(Some(issued), &id, &keys.key_id(), now))
    {
        return Ok(Ok(issued));
    }
    let existing = match read_secret(ctx, device, &name).await? {
        None => None,
        Some((_, _, false)) => return Ok(Err(not_ours(&name))),
        Some((_, annotations, true)) => Issued::from_annotations(&annotations),
    };
    if !credentials::needs_certificate(existing.as_ref(), &id, &keys.key_id(), now) {
        return Ok(Ok(
            existing.unwrap_or_else(|| unreachable!("kept only when it exists"))
        ));
    }
    let issued = match checked(credentials::issue_certificate(keys, &id, spec, now))? {
        Ok(issued) => issued,
        Err(outcome) => return Ok(Err(outcome)),
    };
    match checked(build::certificate_secret(
        device,
        &issued,
        &keys.ca_cert_pem,
    ))? {
        Ok(secret) => {
            apply(&ctx.client, &secret).await?;
            Ok(Ok(issued.issued))
        }
        Err(outcome) => Ok(Err(outcome)),
    }
}

/// The referenced argon2 hash exists.
async fn check_hash(
    ctx: &Context,
    namespace: &str,
    reference: &crate::crd::SecretKeyRef,
) -> Step<()> {
    let data = ctx.reads.secret_data(namespace, &reference.name).await?;
    let hash = data
        .as_ref()
        .and_then(|data| data.get(&reference.key))
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .map(str::trim);
    match hash {
        Some(hash) if hash.starts_with("$argon2") => Ok(Ok(())),
        Some(_) => Ok(Err(Outcome::invalid(format!(
            "spec.credentials.passwordHash: key {:?} of Secret {:?} is not an argon2 hash",
            reference.key, reference.name
        )))),
        None => Ok(Err(Outcome::waiting(
            reason::WAITING_FOR_SECRET,
            format!(
                "Secret {:?} with key {:?} does not exist",
                reference.name, reference.key
            ),
            RESYNC,
        ))),
    }
}

/// Every named Gateway exists (a Device may be created before its Gateway).
async fn check_gateways(ctx: &Context, namespace: &str, gateways: &[String]) -> Step<()> {
    let api: Api<Gateway> = Api::namespaced(ctx.client.clone(), namespace);
    for name in gateways {
        let exists = match ctx.registry.gateway_cached(namespace, name).await {
            Some(cached) => cached,
            None => api.get_metadata_opt(name).await?.is_some(),
        };
        if !exists {
            return Ok(Err(Outcome::waiting(
                reason::WAITING_FOR_GATEWAY,
                format!("Gateway {name:?} does not exist"),
                RESYNC,
            )));
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
