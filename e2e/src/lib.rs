//! Kitfleet's end-to-end suites. `tests/chart.rs` renders and checks the Helm chart with the real `helm` binary and
//! Kubernetes' own schemas; it runs everywhere. The kind suite (`tests/kind.rs`, later) needs Docker and kind.
#![forbid(unsafe_code)]
