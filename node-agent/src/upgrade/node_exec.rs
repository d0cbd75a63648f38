//! What the upgrade agent ([`super::agent`]) asks of a node: stage a build key's artifact, switch to it, say what
//! runs, make it permanent. Two implementations: [`FirmwareNode`] (ESP + `Boot####` + `BootNext` or kexec, on real
//! nodes) and [`super::kind::KindNode`] (the kind simulation).

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Node;

use super::firmware::{Firmware, FirmwareConfig};
use super::{Executor, UpgradeError, artifact, booted, gpt, io};

/// How the node switches images (`operator.kitfleet.dev/upgrade-method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchMethod {
    /// `BootNext` + reboot(2).
    Reboot,
    /// `kexec_file_load` + reboot(2) with `LINUX_REBOOT_CMD_KEXEC`.
    Kexec,
}

impl SwitchMethod {
    /// Parses the annotation's value; absent means `reboot` (the CRD's default).
    pub fn parse(v: Option<&str>) -> Result<Self, String> {
        match v {
            None | Some("reboot") => Ok(Self::Reboot),
            Some("kexec") => Ok(Self::Kexec),
            Some(o) => Err(format!("{o:?} is neither reboot nor kexec")),
        }
    }
}

/// An executor's failure: retried later, or final for this build key (reported on the Node).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// May work on a later attempt (registry unreachable, a systemd unit still starting, I/O).
    #[error("{0}")]
    Transient(String),
    /// Will not work for this build key (digest mismatch, full ESP, wrong build key, failed boot).
    #[error("{0}")]
    Terminal(String),
}

impl ExecError {
    /// Sorts an [`UpgradeError`]: content and capacity problems are terminal; I/O and a failed pull are retried.
    pub fn classify(e: UpgradeError) -> Self {
        match &e {
            UpgradeError::Io { .. } => Self::Transient(e.to_string()),
            UpgradeError::Invalid { field, reason }
                if *field == "artifact" && reason.contains("kitfleet-build pull failed") =>
            {
                Self::Transient(e.to_string())
            }
            _ => Self::Terminal(e.to_string()),
        }
    }
}

/// One node's way of moving to a new image, as the agent loop drives it. Every method is idempotent: the agent may
/// be restarted between any two calls and calls them again.
pub trait NodeExecutor {
    /// Pulls the artifact of `key` (every blob's digest checked) and puts it where the switch needs it.
    fn stage(&mut self, key: &str, artifact: &str) -> Result<(), ExecError>;
    /// Switches to the staged `key`. Real nodes do not come back from a successful call (reboot/kexec); the kind
    /// simulation returns once its restart finished. A switch already under way is resumed, not started twice.
    fn activate(
        &mut self,
        key: &str,
        artifact: &str,
        method: SwitchMethod,
    ) -> Result<(), ExecError>;
    /// The build key the node runs now (`node`: the Node object as last seen).
    fn booted(&mut self, node: &Node) -> Option<String>;
    /// After a healthy boot of `key`: make it the permanent choice.
    fn commit(&mut self, key: &str) -> Result<(), ExecError>;
}

/// Where the firmware executor finds things on a real node.
#[derive(Debug, Clone)]
pub struct FirmwareNodeConfig {
    pub esp: PathBuf,
    pub efivars: PathBuf,
    /// The disk holding the ESP and its partition number (default: found from the ESP's mount).
    pub esp_disk: Option<(PathBuf, u32)>,
    pub proc_cmdline: PathBuf,
    /// Working directory (pulled artifacts).
    pub work: PathBuf,
    pub builder: PathBuf,
    pub insecure: Vec<String>,
}

/// The firmware executor behind the agent: `kitfleet-build pull`, the UKI to the ESP with its `Boot####`, then
/// `BootNext` + reboot (or kexec); commit puts the entry first in `BootOrder`.
#[derive(Debug)]
pub struct FirmwareNode {
    cfg: FirmwareNodeConfig,
}

impl FirmwareNode {
    pub fn new(cfg: FirmwareNodeConfig) -> Self {
        FirmwareNode { cfg }
    }

    fn uki(&self, key: &str) -> PathBuf {
        self.cfg.work.join(key).join("uki.efi")
    }

    fn firmware(&self) -> Result<Firmware, UpgradeError> {
        let (disk, number) = match &self.cfg.esp_disk {
            Some((d, n)) => (d.clone(), *n),
            None => gpt::locate(&self.cfg.esp)?,
        };
        let mut f = std::fs::File::open(&disk).map_err(io(&disk))?;
        let partition = gpt::read_partition(&mut f, number)?;
        Ok(Firmware::new(FirmwareConfig {
            esp: self.cfg.esp.clone(),
            efivars: self.cfg.efivars.clone(),
            partition,
            proc_cmdline: self.cfg.proc_cmdline.clone(),
        }))
    }

    fn stage_inner(&mut self, key: &str, reference: &str) -> Result<(), UpgradeError> {
        let dir = self.cfg.work.join(key);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let pulled = artifact::pull(
            &self.cfg.builder,
            reference,
            &dir.join("artifact"),
            &self.cfg.insecure,
        )?;
        check_pulled_key(reference, &pulled.build_key, key)?;
        let uki = self.uki(key);
        artifact::uki_from(&pulled, &uki)?;
        self.firmware()?.stage(key, &uki)?;
        Ok(())
    }
}

/// Refuses an artifact whose config names another build key than the one the Node asks for.
pub fn check_pulled_key(reference: &str, got: &str, want: &str) -> Result<(), UpgradeError> {
    if got != want {
        return Err(UpgradeError::Invalid {
            field: "operator.kitfleet.dev/desired-artifact",
            reason: format!("{reference} has build key {got}, not the desired {want}"),
        });
    }
    Ok(())
}

impl NodeExecutor for FirmwareNode {
    fn stage(&mut self, key: &str, artifact: &str) -> Result<(), ExecError> {
        self.stage_inner(key, artifact).map_err(ExecError::classify)
    }

    fn activate(
        &mut self,
        key: &str,
        artifact: &str,
        method: SwitchMethod,
    ) -> Result<(), ExecError> {
        let uki = self.uki(key);
        if !uki.exists() {
            // The work directory went away (a new pod without its hostPath): stage again.
            self.stage_inner(key, artifact)
                .map_err(ExecError::classify)?;
        }
        match method {
            SwitchMethod::Reboot => {
                let mut fw = self.firmware().map_err(ExecError::classify)?;
                let staged = fw.stage(key, &uki).map_err(ExecError::classify)?;
                fw.activate(&staged, true).map_err(ExecError::classify)
            }
            SwitchMethod::Kexec => {
                super::kexec::load_and_exec(&uki, &self.cfg.work.join(key), true)
                    .map_err(ExecError::classify)
            }
        }
    }

    fn booted(&mut self, _node: &Node) -> Option<String> {
        booted::booted_build_key(&self.cfg.proc_cmdline)
    }

    fn commit(&mut self, key: &str) -> Result<(), ExecError> {
        let uki = self.uki(key);
        if !uki.exists() || !self.cfg.efivars.is_dir() {
            // kexec'd, or no firmware variables: nothing to make permanent.
            return Ok(());
        }
        let mut fw = self.firmware().map_err(ExecError::classify)?;
        let staged = fw.stage(key, &uki).map_err(ExecError::classify)?;
        fw.commit(&staged).map_err(ExecError::classify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_and_errors_sort() {
        assert_eq!(SwitchMethod::parse(None), Ok(SwitchMethod::Reboot));
        assert_eq!(SwitchMethod::parse(Some("kexec")), Ok(SwitchMethod::Kexec));
        assert!(
            SwitchMethod::parse(Some("warp"))
                .unwrap_err()
                .contains("warp")
        );
        let mismatch = UpgradeError::DigestMismatch {
            what: "f".into(),
            expected: "a".into(),
            actual: "b".into(),
        };
        assert!(
            matches!(ExecError::classify(mismatch), ExecError::Terminal(m) if m.contains("sha256:a") && m.contains("sha256:b"))
        );
        let full = UpgradeError::EspFull {
            esp: "/boot/efi".into(),
            needed: 10,
            free: 3,
        };
        assert!(
            matches!(ExecError::classify(full), ExecError::Terminal(m) if m.contains("10 bytes") && m.contains("3 bytes"))
        );
        let pull = UpgradeError::Invalid {
            field: "artifact",
            reason: "r: kitfleet-build pull failed: connection refused".into(),
        };
        assert!(matches!(ExecError::classify(pull), ExecError::Transient(_)));
        let io = UpgradeError::Io {
            path: "/x".into(),
            source: std::io::Error::other("busy"),
        };
        assert!(matches!(ExecError::classify(io), ExecError::Transient(_)));
        let e = check_pulled_key("r@sha256:1", "aa", "bb").unwrap_err();
        assert!(
            matches!(ExecError::classify(e), ExecError::Terminal(m) if m.contains("desired-artifact") && m.contains("aa") && m.contains("bb"))
        );
    }
}
