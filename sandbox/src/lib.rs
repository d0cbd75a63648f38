//! kitfleet-sandbox: compiles SecurityPolicies into Landlock rulesets and seccomp filters, and
//! the launcher that applies them to itself before it execs the workload.

pub mod base;
pub mod check;
pub mod cli;
pub mod compile;
pub mod landlock;
pub mod launcher;
pub mod oci;
pub mod policy;
pub mod report;
pub mod seccomp;
