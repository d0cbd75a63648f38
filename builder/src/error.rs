//! The builder's error type: every variant names the input it is about.

use std::path::PathBuf;

/// Result alias of the builder library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while resolving, building or pushing an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An image reference that cannot be parsed.
    #[error("{location}: invalid image reference {reference:?}: {reason}")]
    BadReference {
        location: String,
        reference: String,
        reason: String,
    },
    /// A registry request failed.
    #[error("{reference}: registry error: {message}")]
    Registry { reference: String, message: String },
    /// A manifest or blob longer than its limit (a manifest cap, or the size its descriptor
    /// declares): the download stops at the first byte over the limit.
    #[error("{reference}: {what} is longer than {limit} bytes")]
    TooLarge {
        reference: String,
        what: String,
        limit: u64,
    },
    /// A local OCI layout is missing or malformed.
    #[error("{path}: OCI layout: {reason}")]
    Layout { path: PathBuf, reason: String },
    /// No manifest in an index matches the wanted platform.
    #[error("{reference}: no manifest for platform linux/{arch} (index offers: {offered})")]
    NoPlatform {
        reference: String,
        arch: String,
        offered: String,
    },
    /// A manifest, index or config document is malformed.
    #[error("{reference}: malformed {what}: {reason}")]
    Malformed {
        reference: String,
        what: &'static str,
        reason: String,
    },
    /// A blob's content does not match its digest.
    #[error("{reference}: blob {digest} has content digest {actual}")]
    DigestMismatch {
        reference: String,
        digest: String,
        actual: String,
    },
    /// A layer entry rejected as hostile or unsupported.
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    HostileEntry {
        layer: String,
        entry: String,
        reason: String,
    },
    /// A layer that is not a readable tar stream.
    #[error("layer {layer}: {reason}")]
    BadLayer { layer: String, reason: String },
    /// Input that LinuxKit's rules reject (ConfigToOCI, files, kernel layout).
    #[error("{location}: {reason}")]
    Config { location: String, reason: String },
    /// The newc format cannot represent the content.
    #[error("initrd: {reason}")]
    Cpio { reason: String },
    /// A filesystem operation on the cache or the output directory failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A requested output format is unknown or not built by this binary.
    #[error("--format: unknown format {0:?} (known: {1})")]
    UnknownFormat(String, String),
    /// An image reference could not be resolved (offline plan or unreachable registry).
    #[error("{location}: {reference} could not be resolved: {reason}")]
    Unresolved {
        location: String,
        reference: String,
        reason: String,
    },
    /// The input file is neither a LinuxKit YAML file nor a NodeImage manifest.
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The CLI exit code for this error (see README "Exit codes").
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::BadReference { .. }
            | Error::Config { .. }
            | Error::UnknownFormat(..)
            | Error::Input { .. } => 2,
            Error::Registry { .. }
            | Error::TooLarge { .. }
            | Error::Layout { .. }
            | Error::NoPlatform { .. }
            | Error::Unresolved { .. } => 3,
            Error::Malformed { .. }
            | Error::DigestMismatch { .. }
            | Error::HostileEntry { .. }
            | Error::BadLayer { .. } => 4,
            Error::Cpio { .. } => 5,
            Error::Io { .. } => 6,
        }
    }
}
