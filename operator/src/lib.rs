//! The Tributary operator: CRD types, pure builders of the desired children, and the
//! controllers that reconcile Queue, Gateway, Worker and Sink resources.
//!
//! Layers, each using only those below it: `run` wires `controller` and `autoscaler`
//! together; both use `broker` (RabbitMQ), `scaling` (the replica field they share),
//! `build`, `crd` and `metrics` (the autoscaler also the condition helpers of
//! `controller::conditions`); `broker` uses `build` and `crd` only.
#![forbid(unsafe_code)]

pub mod autoscaler;
pub mod broker;
pub mod build;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod reference;
pub mod run;
pub mod scaling;
