//! KSPP (Kernel Self Protection Project) hardening: the recommendations as data
//! ([`data`], kept in the API crate), a kernel configuration reader ([`config`]), a pure checker
//! ([`check`]), the boot parameters and sysctls `apply` adds ([`apply`]) and the build's step
//! for `spec.hardening` ([`image`]: find the config in the kernel image, check, additions).

pub mod apply;
pub mod check;
pub mod config;
pub mod data;
pub mod image;

pub use apply::{SYSCTL_PATH, boot_params, sysctl_conf, sysctl_params};
pub use check::{Excepted, Exception, Report, Unmet, check, validate_exceptions};
pub use config::{KernelConfig, Value, from_kernel_image, parse};
pub use data::{
    Arch, BOOT_PARAMS, BootParam, Expected, RENAMED, SETTINGS, SOURCE_VERSION, SYSCTLS, Setting,
    Source, Sysctl,
};
pub use image::{KsppOutcome, evaluate, find_config};

/// Result alias of the KSPP module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading a kernel config or checking it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `.config` line is neither a comment nor `CONFIG_X=value`.
    #[error("kernel config line {line}: {reason}")]
    ConfigLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The kernel binary holds no `IKCFG_ST`…`IKCFG_ED` blob.
    #[error(
        "kernel image: no IKCONFIG blob (IKCFG_ST/IKCFG_ED markers); built without CONFIG_IKCONFIG?"
    )]
    NoIkconfig,
    /// The kernel is a bzImage: its IKCONFIG blob, if any, is inside the compressed payload.
    #[error(
        "kernel image: bzImage with a compressed payload; its IKCONFIG blob cannot be read (unsupported): ship the kernel's config file"
    )]
    CompressedKernel,
    /// The blob between the markers is not a readable gzip stream of text.
    #[error("kernel image: IKCONFIG blob: {reason}")]
    Ikconfig {
        /// Why it could not be read.
        reason: String,
    },
    /// An exception names no known recommendation.
    #[error(
        "exceptions[{index}].setting: {setting:?} is not a KSPP recommendation (a CONFIG_ setting, sysctl key or boot parameter name)"
    )]
    UnknownException {
        /// Index in the exception list.
        index: usize,
        /// The name given.
        setting: String,
    },
    /// An exception has no reason.
    #[error("exceptions[{index}].reason: empty (every exception to {setting} needs a reason)")]
    EmptyReason {
        /// Index in the exception list.
        index: usize,
        /// The setting it excepts.
        setting: String,
    },
}
