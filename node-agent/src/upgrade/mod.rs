//! The upgrade executor: which image is booted ([`booted`]), and the A/B boot path through the firmware's
//! boot variables: the EFI load-option encoders ([`efi`]), the ESP's GPT partition ([`gpt`]) and efivarfs
//! ([`efivars`]), driven by [`firmware::Firmware`] behind the [`Executor`] trait (stage, activate, commit,
//! report). The upgrade agent ([`agent`], [`agent_run`]) drives a [`node_exec::NodeExecutor`] (firmware, or the
//! [`kind`] simulation) from the build key the operator asks the Node to run. See the crate README, "Upgrade executor".

pub mod agent;
pub mod agent_cli;
pub mod agent_run;
pub mod artifact;
pub mod booted;
pub mod cli;
pub mod efi;
pub mod efivars;
pub mod esp_image;
pub mod firmware;
pub mod gpt;
pub mod kexec;
pub mod kind;
pub mod node_exec;

use std::path::PathBuf;

/// Errors of the upgrade executor.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The UKI's content does not have the digest it was asked for.
    #[error("{what}: expected digest sha256:{expected}, got sha256:{actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// The ESP has no room for the new UKI.
    #[error("ESP {esp}: the UKI needs {needed} bytes but only {free} bytes are free")]
    EspFull {
        esp: PathBuf,
        needed: u64,
        free: u64,
    },
    /// An EFI variable holds something that is not what its name says.
    #[error("EFI variable {name}: {reason}")]
    BadVariable { name: String, reason: String },
    /// Every `Boot####` number is taken.
    #[error("no free Boot#### number")]
    NoFreeBootNumber,
    /// The ESP's partition could not be found or read.
    #[error("ESP partition: {reason}")]
    Partition { reason: String },
    /// A bad argument (names the field).
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// Nothing was staged to activate or commit.
    #[error("nothing staged: {reason}")]
    NotStaged { reason: String },
}

/// `Result` of this module.
pub type Result<T, E = UpgradeError> = std::result::Result<T, E>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> UpgradeError {
    let path = path.into();
    move |source| UpgradeError::Io { path, source }
}

/// What was staged: enough to activate and later commit it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// The build key (hex) of the staged image.
    pub build_key: String,
    /// sha256 (hex) of the staged UKI.
    pub uki_sha256: String,
    /// The `Boot####` number of its load option (firmware), if any.
    pub boot_number: Option<u16>,
}

/// One way of moving a node to a new image.
pub trait Executor {
    /// Puts the image on the node (ESP file, load option…) without changing what boots next.
    fn stage(&mut self, build_key: &str, uki: &std::path::Path) -> Result<Staged>;
    /// Arranges for the staged image to boot once (BootNext), then reboots when `reboot` is set.
    fn activate(&mut self, staged: &Staged, reboot: bool) -> Result<()>;
    /// After a healthy boot of the staged image: make it the permanent choice (BootOrder).
    fn commit(&mut self, staged: &Staged) -> Result<()>;
    /// The build key the running system reports it booted.
    fn report(&self) -> Option<String>;
}
