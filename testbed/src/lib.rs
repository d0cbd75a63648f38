//! kitfleet-testbed: test scaffolding shared by Kitfleet's namespace tests and benchmarks, kept out of
//! the libraries users link. Every crate takes it as a **dev-dependency** only (`publish = false`).
//!
//! - [`netns`]: throwaway network namespaces (one [`netns::Netns`] or a whole multi-node
//!   [`netns::Testbed`]), `ip`/command runners, a thread inside a namespace, the privilege check
//!   that fails under `CI=true`, and a child process stopped on drop.
//! - [`forge`]: forged WireGuard handshake initiations (valid mac1, any claimed key) for the data
//!   plane's admission tests and the handshake-flood benchmark.

pub mod forge;
pub mod netns;
