//! kitfleet-builder: a LinuxKit-compatible, reproducible image builder that needs no Docker.
//!
//! Layers, bottom up: [`mod@reference`] and [`source`] resolve images to digests and fetch verified
//! blobs through the [`cache`]; [`tree`] flattens untrusted layers; [`cpio`] and [`tarout`] write
//! deterministic archives; [`oci_config`] encodes LinuxKit's `ConfigToOCI`; [`assemble`] plans the
//! LinuxKit layout; [`build`] resolves, computes the build key and writes the outputs; [`push`]
//! publishes and pulls the OCI artifact; [`cli`] is `kitfleet-build`; [`disk`] writes the EFI disk
//! formats; [`fixtures`] supports tests, the benchmark and the demo.
#![forbid(unsafe_code)]

pub mod assemble;
pub mod auth;
pub mod build;
pub mod cache;
pub mod cli;
pub mod cpio;
pub mod digest;
pub mod disk;
pub mod error;
pub mod fetch;
pub mod fixtures;
pub mod input;
pub mod kspp;
pub mod oci;
pub mod oci_config;
pub mod progress;
pub mod push;
pub mod reference;
pub mod runtime_spec;
pub mod source;
pub mod tarout;
pub mod tree;

pub use error::{Error, Result};

/// The builder's version, part of every build key.
pub const BUILDER_VERSION: &str = concat!("kitfleet-builder/", env!("CARGO_PKG_VERSION"));
