//! The compiled policy file the launcher reads (`policy.json`). See README.md, "Policy file format".
//!
//! Versioned: `format` is always [`FORMAT`], `version` is [`VERSION`]; a launcher refuses any other
//! version rather than guess. Within a version, fields are only ever added (readers ignore unknown ones).

use crate::seccomp::{Arch, bpf::SockFilter};
use kitfleet_api::security::{FsAccess, PolicyMode, Scope};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Value of the `format` field.
pub const FORMAT: &str = "kitfleet.dev/sandbox-policy";
/// The format version this crate writes and reads.
pub const VERSION: u32 = 1;

/// A compiled policy: every SecurityPolicy that matched one pod, as layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledPolicy {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// The source policies (`namespace/name`), in layer order.
    pub policies: Vec<String>,
    /// One Landlock layer per policy that has a `landlock` section.
    #[serde(default)]
    pub landlock: Vec<LandlockLayer>,
    /// Seccomp filters per architecture, one per policy that has a `seccomp` section, installed in order.
    #[serde(default)]
    pub seccomp: BTreeMap<Arch, Vec<SeccompLayer>>,
    /// Where the launcher reports its outcome. Absent: one JSON line on stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_socket: Option<String>,
}

/// One policy's Landlock ruleset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LandlockLayer {
    /// `namespace/name` of the source policy.
    pub policy: String,
    /// The policy's mode (`audit` layers are reported, not applied).
    pub mode: PolicyMode,
    /// Lowest ABI the workload may run under; absent = best effort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_abi: Option<u32>,
    /// Filesystem rules.
    #[serde(default)]
    pub filesystem: Vec<FsRule>,
    /// TCP ports; absent = TCP not restricted by this layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetPorts>,
    /// Scopes closed by this layer.
    #[serde(default)]
    pub scopes: Vec<Scope>,
}

/// Rights beneath paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsRule {
    /// Absolute paths, opened by the launcher in the container.
    pub paths: Vec<String>,
    /// Rights granted (sorted, deduplicated).
    pub access: Vec<FsAccess>,
    /// A missing path refuses the workload instead of dropping the rule.
    #[serde(default)]
    pub required: bool,
    /// `spec.landlock.filesystem[i]` of the source policy, for reports.
    pub field: String,
}

/// TCP ports allowed by a layer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetPorts {
    /// Ports that may be bound.
    pub bind_tcp: Vec<u16>,
    /// Ports that may be connected to.
    pub connect_tcp: Vec<u16>,
}

/// One policy's seccomp filter for one architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompLayer {
    /// `namespace/name` of the source policy.
    pub policy: String,
    /// The policy's mode (already folded into the program's actions).
    pub mode: PolicyMode,
    /// Install with `SECCOMP_FILTER_FLAG_LOG` (`enforce-and-log`).
    #[serde(default)]
    pub log: bool,
    /// The classic BPF program, `[code, jt, jf, k]` per instruction.
    pub program: Vec<SockFilter>,
}

/// Errors reading a policy file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid JSON of this format.
    #[error("policy file {path}: {message}")]
    Parse {
        /// File.
        path: String,
        /// What is wrong, with the field.
        message: String,
    },
}

impl CompiledPolicy {
    /// An empty policy of the current version.
    pub fn new() -> Self {
        CompiledPolicy {
            format: FORMAT.into(),
            version: VERSION,
            policies: Vec::new(),
            landlock: Vec::new(),
            seccomp: BTreeMap::new(),
            report_socket: None,
        }
    }

    /// Parses and checks a policy file's contents.
    pub fn from_json(path: &str, text: &[u8]) -> Result<Self, LoadError> {
        let err = |message: String| LoadError::Parse {
            path: path.into(),
            message,
        };
        let p: CompiledPolicy = parse(text).map_err(err)?;
        if p.format != FORMAT {
            return Err(err(format!(
                "format: expected {FORMAT:?}, found {:?}",
                p.format
            )));
        }
        if p.version != VERSION {
            return Err(err(format!(
                "version: this launcher reads version {VERSION}, found {}",
                p.version
            )));
        }
        for (arch, layers) in &p.seccomp {
            for (i, l) in layers.iter().enumerate() {
                if l.program.is_empty() || l.program.len() > crate::seccomp::bpf::MAX_INSNS {
                    let n = l.program.len();
                    return Err(err(format!(
                        "seccomp.{arch}[{i}].program: {n} instructions (1-4096 allowed)"
                    )));
                }
            }
        }
        Ok(p)
    }

    /// Reads and checks a policy file.
    pub fn load(path: &str) -> Result<Self, LoadError> {
        let text = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_json(path, &text)
    }

    /// Serialises as compact JSON (the launcher parses it on every start) with a trailing newline;
    /// byte-identical for identical input. `jq .` shows it readably.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string(self).expect("policy serialises");
        s.push('\n');
        s
    }
}

impl Default for CompiledPolicy {
    fn default() -> Self {
        Self::new()
    }
}

fn parse<T: serde::de::DeserializeOwned>(text: &[u8]) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_slice(text);
    let v = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })?;
    de.end().map_err(|e| e.to_string())?;
    Ok(v)
}
