//! The checks behind Kitfleet's fuzz targets, one module per owning crate. Each function takes
//! arbitrary bytes and panics on a finding. `fuzz_targets/*.rs` call them under libFuzzer; the owning
//! crates' `tests/fuzz_corpus.rs` include the same files with `#[path]` and replay the corpus on
//! stable (see README.md). One cargo feature per owning crate, so a target builds only what it links.

#[cfg(feature = "builder")]
pub mod builder;
#[cfg(feature = "cni")]
pub mod cni;
#[cfg(feature = "api")]
pub mod crds;
#[cfg(feature = "dataplane")]
pub mod dataplane;
#[cfg(feature = "netlink")]
pub mod netlink;
pub mod replay;
#[cfg(feature = "sandbox")]
pub mod sandbox;

/// A fuzz target: its name and its check.
pub type Target = (&'static str, fn(&[u8]));

/// Every target this build has (the lists of the enabled features).
pub fn targets() -> Vec<Target> {
    let mut all: Vec<Target> = Vec::new();
    #[cfg(feature = "api")]
    all.extend_from_slice(crds::TARGETS);
    #[cfg(feature = "cni")]
    all.extend_from_slice(cni::TARGETS);
    #[cfg(feature = "builder")]
    all.extend_from_slice(builder::TARGETS);
    #[cfg(feature = "sandbox")]
    all.extend_from_slice(sandbox::TARGETS);
    #[cfg(feature = "dataplane")]
    all.extend_from_slice(dataplane::TARGETS);
    #[cfg(feature = "netlink")]
    all.extend_from_slice(netlink::TARGETS);
    all
}
