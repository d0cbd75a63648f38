//! kitfleet-sandbox: compiles SecurityPolicies into Landlock rulesets and seccomp filters, and
//! the launcher that applies them to itself before it execs the workload.

pub mod seccomp;
