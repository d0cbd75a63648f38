//! kitfleet-sandbox: compiles SecurityPolicies into Landlock rulesets and seccomp filters, and
//! the launcher that applies them to itself before it execs the workload.

pub mod seccomp;
pub mod landlock;
pub mod policy;
pub mod launcher;
pub mod report;
pub mod base;
pub mod compile;
pub mod oci;
pub mod check;
pub mod cli;
