//! The checker: a kernel config against [`SETTINGS`], with exceptions. Pure: no I/O.

use super::config::{KernelConfig, Value};
use super::data::{Arch, Expected, RENAMED, SETTINGS, Setting};
use super::{Error, Result};

/// A recommendation the user opts out of, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exception {
    /// A `CONFIG_` setting, a sysctl key or a boot parameter name (the part before `=`).
    pub setting: String,
    /// Why the node image does without it.
    pub reason: String,
}

/// A recommendation the config does not meet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unmet {
    /// The setting.
    pub setting: &'static str,
    /// What KSPP recommends.
    pub expected: String,
    /// What the config has (`absent` when it does not mention the symbol).
    pub found: String,
}

/// A recommendation skipped by an exception.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Excepted {
    /// The setting.
    pub setting: &'static str,
    /// The exception's reason.
    pub reason: String,
    /// Whether the config meets it anyway.
    pub met: bool,
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum Report {
    /// No kernel config could be read: nothing is known.
    Unknown,
    /// The config was checked.
    Checked {
        /// Settings met (exceptions excluded).
        met: Vec<&'static str>,
        /// Settings not met (exceptions excluded).
        unmet: Vec<Unmet>,
        /// Settings skipped by an exception.
        excepted: Vec<Excepted>,
    },
}

impl Report {
    /// Whether every applicable, non-excepted recommendation is met (false when unknown).
    pub fn all_met(&self) -> bool {
        matches!(self, Report::Checked { unmet, .. } if unmet.is_empty())
    }
}

pub use super::data::is_known;

/// Rejects exceptions that name no recommendation or give no reason, naming the entry.
pub fn validate_exceptions(exceptions: &[Exception]) -> Result<()> {
    for (index, e) in exceptions.iter().enumerate() {
        if !is_known(&e.setting) {
            return Err(Error::UnknownException {
                index,
                setting: e.setting.clone(),
            });
        }
        if e.reason.trim().is_empty() {
            return Err(Error::EmptyReason {
                index,
                setting: e.setting.clone(),
            });
        }
    }
    Ok(())
}

/// Checks `config` (None: unreadable) for a kernel built for `arch`.
pub fn check(
    config: Option<&KernelConfig>,
    arch: Arch,
    exceptions: &[Exception],
) -> Result<Report> {
    validate_exceptions(exceptions)?;
    let Some(config) = config else {
        return Ok(Report::Unknown);
    };
    let (mut met, mut unmet, mut excepted) = (Vec::new(), Vec::new(), Vec::new());
    for setting in SETTINGS.iter().filter(|s| s.arch.applies_to(arch)) {
        let found = config.get(setting.name).or_else(|| {
            let older = RENAMED.iter().find(|(new, _)| *new == setting.name)?.1;
            config.get(older)
        });
        let ok = meets(setting, found);
        if let Some(e) = exceptions.iter().find(|e| e.setting == setting.name) {
            excepted.push(Excepted {
                setting: setting.name,
                reason: e.reason.clone(),
                met: ok,
            });
        } else if ok {
            met.push(setting.name);
        } else {
            unmet.push(Unmet {
                setting: setting.name,
                expected: setting.expected.to_string(),
                found: found.map_or_else(|| "absent".to_owned(), Value::to_string),
            });
        }
    }
    Ok(Report::Checked {
        met,
        unmet,
        excepted,
    })
}

fn meets(setting: &Setting, found: Option<&Value>) -> bool {
    match (setting.expected, found) {
        (Expected::Yes, Some(Value::Yes)) => true,
        (Expected::NotSet, None | Some(Value::No)) => true,
        (Expected::Number(n), Some(Value::Number(m))) => i128::from(n) == *m,
        (Expected::Str(s), Some(Value::Str(t))) => s == t,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
