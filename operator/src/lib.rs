//! kitfleet-operator: the NodeImage build controller ([`build`]), plus the process around it: configuration,
//! leader election, health, metrics.
#![forbid(unsafe_code)]

pub mod build;
pub mod config;
pub mod crds_apply;
pub mod hardening;
pub mod leader;
pub mod metrics;
pub mod policy;
pub mod rbac;
pub mod rollout;
pub mod run;
pub mod server;
pub mod wake;
pub mod webhook;

/// Server-side apply field manager (and Lease field manager) of the operator.
pub const FIELD_MANAGER: &str = kitfleet_api::constants::OPERATOR_FIELD_MANAGER;
