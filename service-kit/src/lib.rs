//! Plumbing every Tributary process writes the same way: opening an AMQP connection with an
//! optional private CA ([`amqp`]), the shutdown signal
//! ([`shutdown`]), the Prometheus text of `/metrics` ([`metrics`]), the `/healthz` and
//! readiness answers ([`health`]) and serving an operations router until stopped
//! ([`serve`]). It knows no Kubernetes and no data-plane types, so the operator and the
//! data-plane binaries can all use it.
#![forbid(unsafe_code)]

pub mod amqp;
pub mod health;
pub mod metrics;
pub mod serve;
pub mod shutdown;
