//! The Tributary operator: CRD types, pure builders of the desired children, and the
//! controllers that reconcile Queue, Gateway, Worker and Sink resources.
//!
//! Layers, each using only those below it: `run` wires `controller` and `autoscaler`
//! together; both use `broker` (RabbitMQ), `scaling` (the replica field they share),
//! `conditions` (status conditions), `build`, `crd` and `metrics`, and neither imports the
//! other; `broker` uses `build` and `crd` only.
#![forbid(unsafe_code)]

pub mod autoscaler;
pub mod broker;
pub mod build;
pub mod caches;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod fleet;
pub mod leader;
pub mod metrics;
pub mod pod_http;
pub mod reads;
pub mod reference;
pub mod registry;
pub mod run;
pub mod scaling;
