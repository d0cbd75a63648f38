//! kitfleet-operator: the NodeImage build controller (decisions in [`decide`], Jobs in [`job`], the registry edge in
//! [`registry`], execution in [`controller`]), plus the process around it: configuration, leader election, health,
//! metrics.
#![forbid(unsafe_code)]

pub mod conditions;
pub mod config;
pub mod controller;
pub mod decide;
pub mod job;
pub mod metrics;
pub mod observe;
pub mod registry;
pub mod run;
pub mod server;

/// Server-side apply field manager (and Lease field manager) of the operator.
pub const FIELD_MANAGER: &str = kitfleet_api::constants::OPERATOR_FIELD_MANAGER;
