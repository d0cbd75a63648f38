//! Kitfleet's end-to-end suites and the fixtures they share.
//!
//! - [`apiserver`]: a real etcd + kube-apiserver for tests (this crate's and, as a dev-dependency, other crates'),
//!   with Kitfleet's CRDs installed from the chart.
//! - [`kind`]: what the kind suites (`tests/kind*.rs`) share — the test command's cluster, podman's kind state,
//!   running commands, polling.
//! - `tests/chart.rs` renders and checks the Helm chart with the real `helm` binary and Kubernetes' own schemas.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod apiserver;
pub mod kind;
