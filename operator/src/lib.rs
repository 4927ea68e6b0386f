//! The Tributary operator: CRD types, pure builders of the desired children, and the
//! controllers that reconcile Queue, Gateway, Worker and Sink resources.
#![forbid(unsafe_code)]

pub mod autoscaler;
pub mod build;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod reference;
pub mod run;
