//! Sink controller: validates the spec, checks the referenced Secret keys (and target
//! Queue), and reports Ready. Sinks have no children: Workers render them.

use super::conditions::reason;
use super::{
    patch_status, ready_condition, resolve_queue, secret_data, Context, Error, Outcome, RESYNC,
};
use crate::build::sink as build;
use crate::build::BuildError;
use crate::crd::{Sink, SinkStatus};
use kube::runtime::controller::Action;
use kube::ResourceExt;
use std::sync::Arc;
use tracing::Instrument;

/// One reconcile of a Sink.
pub async fn reconcile(sink: Arc<Sink>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile("Sink");
    let span = tracing::info_span!("reconcile", kind = "Sink", name = %sink.name_any(), namespace = ?sink.namespace());
    let current = sink.status.clone().unwrap_or_default();
    let mut status = SinkStatus::default();
    let outcome = run(&sink, &ctx, &mut status).instrument(span).await?;
    status.conditions =
        ready_condition(&ctx, sink.as_ref(), &current.conditions, &outcome.ready).await;
    status.observed_generation = sink.metadata.generation;
    patch_status(&ctx.client, sink.as_ref(), sink.status.as_ref(), &status).await?;
    Ok(outcome.action)
}

async fn run(sink: &Sink, ctx: &Context, status: &mut SinkStatus) -> Result<Outcome, Error> {
    let kind = match build::validate(sink) {
        Ok(kind) => kind,
        Err(BuildError::Invalid(message)) => return Ok(Outcome::invalid(message)),
        Err(other) => return Err(other.into()),
    };
    status.sink_type = Some(kind.as_str().to_owned());
    let namespace = sink.namespace().unwrap_or_default();
    for reference in build::referenced_secrets(sink) {
        let data = secret_data(&ctx.client, &namespace, &reference.name).await?;
        if !data.is_some_and(|d| d.contains_key(&reference.key)) {
            return Ok(Outcome::waiting(
                reason::WAITING_FOR_SECRET,
                format!(
                    "Secret {:?} with key {:?} does not exist",
                    reference.name, reference.key
                ),
                RESYNC,
            ));
        }
    }
    if let Some(target) = build::target_queue(sink) {
        if let Err(outcome) = resolve_queue(&ctx.client, &namespace, target).await? {
            return Ok(outcome);
        }
    }
    Ok(Outcome::ready(format!("{} sink is valid", kind.as_str())))
}
