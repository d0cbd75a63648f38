//! The KSPP step of a build (`spec.hardening`): find the kernel image's configuration (a
//! `config`/`config-*` file, else the IKCONFIG blob of the kernel binary), check it, and for
//! `apply`/`enforce` compute what the image gains (boot parameters, `sysctl.*` parameters and the
//! sysctl file). Pure: the build driver reads the image and writes the outputs.

use kitfleet_api::nodeimage::{HardeningSpec, KsppMode};
use serde::{Deserialize, Serialize};

use super::Result;
use super::apply::{boot_params, sysctl_conf, sysctl_params};
use super::check::{Exception, Report, check};
use super::config::{KernelConfig, Value, from_kernel_image, parse};
use super::data::{Arch, SOURCE_VERSION};
use crate::tree::{Kind, Tree};

/// A kernel configuration and where in the kernel image it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `boot/config-6.1.0-…`, or `<binary> (IKCONFIG)`.
    pub source: String,
    /// The parsed configuration.
    pub config: KernelConfig,
}

/// Finds the configuration in a flattened kernel image: the first (by path) file named `config`
/// or `config-*` at the root or under `boot/`, else the IKCONFIG blob of `binary`. `Err` says why
/// none could be read (the check is then `unknown`).
pub fn find_config(tree: &Tree, binary: &str) -> std::result::Result<Found, String> {
    let file = |path: &str| match tree.get(path).map(|e| &e.kind) {
        Some(Kind::File(b)) => Some(b.to_vec()),
        _ => None,
    };
    let is_config = |path: &str| {
        let name = path.strip_prefix("boot/").unwrap_or(path);
        !name.contains('/') && (name == "config" || name.starts_with("config-"))
    };
    let mut candidates: Vec<&str> = tree
        .entries()
        .filter(|e| matches!(e.kind, Kind::File(_)) && is_config(&e.path))
        .map(|e| e.path.as_str())
        .collect();
    candidates.sort_unstable();
    if let Some(path) = candidates.first() {
        let bytes = file(path).unwrap_or_default();
        let text = String::from_utf8(bytes).map_err(|_| format!("{path}: not UTF-8 text"))?;
        let config = parse(&text).map_err(|e| format!("{path}: {e}"))?;
        return Ok(Found {
            source: (*path).to_owned(),
            config,
        });
    }
    let binary = binary.trim_start_matches('/');
    let kernel = file(binary).ok_or_else(|| format!("no kernel file {binary:?}"))?;
    match from_kernel_image(&kernel) {
        Ok(config) => Ok(Found {
            source: format!("{binary} (IKCONFIG)"),
            config,
        }),
        Err(e) => Err(format!(
            "no config file (config, config-*, boot/config-*) in the kernel image, and {binary}: {e}"
        )),
    }
}

/// The architecture a kernel is built for: the image's `architecture`, else the config's
/// `CONFIG_X86_64`/`CONFIG_ARM64`, else x86-64.
pub fn kernel_arch(image_arch: &str, config: Option<&KernelConfig>) -> Arch {
    match image_arch {
        "amd64" | "x86_64" => return Arch::X86_64,
        "arm64" | "aarch64" => return Arch::Arm64,
        _ => {}
    }
    match config {
        Some(c) if c.get("CONFIG_ARM64") == Some(&Value::Yes) => Arch::Arm64,
        _ => Arch::X86_64,
    }
}

/// A recommendation the kernel does not meet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmetSetting {
    /// The `CONFIG_` setting.
    pub setting: String,
    /// What KSPP recommends.
    pub expected: String,
    /// What the config has (`absent` when it does not mention it).
    pub found: String,
}

/// A recommendation skipped by an exception.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptedSetting {
    /// The setting.
    pub setting: String,
    /// The exception's reason.
    pub reason: String,
    /// Whether the config meets it anyway (always false when the config is unknown).
    pub met: bool,
}

/// The KSPP outcome of a build, as the build's JSON output and the artifact's config blob record
/// it. Deterministic (no timings), so equal inputs give byte-equal artifacts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KsppOutcome {
    /// `audit`, `apply` or `enforce`.
    pub mode: String,
    /// The KSPP sources the recommendations follow.
    pub source: String,
    /// The kernel image (`reference@digest`).
    pub kernel: String,
    /// Where the configuration was read (unset when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Why no configuration could be read: every setting is then unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
    /// Settings met.
    #[serde(default)]
    pub met: Vec<String>,
    /// Settings not met.
    #[serde(default)]
    pub unmet: Vec<UnmetSetting>,
    /// Settings skipped by an exception.
    #[serde(default)]
    pub excepted: Vec<ExceptedSetting>,
    /// Parameters added to the kernel command line (`apply`, `enforce`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_params: Vec<String>,
    /// The sysctl file added to the image (`apply`, `enforce`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sysctl_file: Option<String>,
}

impl KsppOutcome {
    /// Why `enforce` fails the build, if it does: every unmet setting, or the unknown kernel.
    pub fn enforce_failure(&self) -> Option<String> {
        if self.mode != KsppMode::Enforce.as_str() {
            return None;
        }
        if let Some(why) = &self.unknown {
            return Some(format!(
                "kspp enforce: the configuration of kernel {} is unknown ({why})",
                self.kernel
            ));
        }
        if self.unmet.is_empty() {
            return None;
        }
        let list: Vec<String> = self
            .unmet
            .iter()
            .map(|u| format!("{} (expected {}, found {})", u.setting, u.expected, u.found))
            .collect();
        Some(format!(
            "kspp enforce: kernel {} ({}) does not meet {} KSPP setting(s): {}",
            self.kernel,
            self.config.as_deref().unwrap_or("?"),
            list.len(),
            list.join(", ")
        ))
    }
}

/// What `apply` adds to the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Additions {
    /// Parameters appended to the kernel command line.
    pub cmdline: Vec<String>,
    /// The sysctl file's path (no leading `/`) and contents.
    pub sysctl_file: (String, String),
}

/// The exceptions of a spec in the checker's form.
pub fn exceptions(spec: &HardeningSpec) -> Vec<Exception> {
    spec.exceptions
        .iter()
        .map(|e| Exception {
            setting: e.setting.clone(),
            reason: e.reason.clone(),
        })
        .collect()
}

/// Checks `found` for `spec` and, for `apply`/`enforce`, computes the additions. `None` for `off`.
pub fn evaluate(
    spec: &HardeningSpec,
    kernel: &str,
    arch: Arch,
    found: std::result::Result<&Found, &str>,
) -> Result<Option<(KsppOutcome, Option<Additions>)>> {
    if spec.kspp == KsppMode::Off {
        return Ok(None);
    }
    let exceptions = exceptions(spec);
    let config = found.ok().map(|f| &f.config);
    let report = check(config, arch, &exceptions)?;
    let mut outcome = KsppOutcome {
        mode: spec.kspp.as_str().to_owned(),
        source: SOURCE_VERSION.to_owned(),
        kernel: kernel.to_owned(),
        config: found.ok().map(|f| f.source.clone()),
        unknown: found.err().map(str::to_owned),
        met: Vec::new(),
        unmet: Vec::new(),
        excepted: Vec::new(),
        boot_params: Vec::new(),
        sysctl_file: None,
    };
    match report {
        Report::Unknown => {
            outcome.excepted = exceptions
                .iter()
                .map(|e| ExceptedSetting {
                    setting: e.setting.clone(),
                    reason: e.reason.clone(),
                    met: false,
                })
                .collect();
        }
        Report::Checked {
            met,
            unmet,
            excepted,
        } => {
            outcome.met = met.into_iter().map(str::to_owned).collect();
            outcome.unmet = unmet
                .into_iter()
                .map(|u| UnmetSetting {
                    setting: u.setting.to_owned(),
                    expected: u.expected,
                    found: u.found,
                })
                .collect();
            outcome.excepted = excepted
                .into_iter()
                .map(|e| ExceptedSetting {
                    setting: e.setting.to_owned(),
                    reason: e.reason,
                    met: e.met,
                })
                .collect();
        }
    }
    if !spec.kspp.applies() {
        return Ok(Some((outcome, None)));
    }
    let mut cmdline: Vec<String> = boot_params(config, arch, &exceptions)?
        .into_iter()
        .map(str::to_owned)
        .collect();
    cmdline.extend(sysctl_params(&exceptions)?);
    let file = (super::SYSCTL_PATH.to_owned(), sysctl_conf(&exceptions)?);
    outcome.boot_params = cmdline.clone();
    outcome.sysctl_file = Some(format!("/{}", file.0));
    Ok(Some((
        outcome,
        Some(Additions {
            cmdline,
            sysctl_file: file,
        }),
    )))
}

#[cfg(test)]
mod tests;
