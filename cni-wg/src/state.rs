//! The node state file: the contract between the node agent (writer) and the `kitfleet-wg` CNI
//! plugin (reader).
//!
//! Default path [`DEFAULT_STATE_FILE`] (`/run/kitfleet/node.json`); every user can point elsewhere
//! (conflist key `stateFile`), so several simulated nodes can share one machine. Example:
//!
//! ```json
//! {"podCIDRs":["10.244.1.0/24"],"mtu":1420,"meshHealthy":true,
//!  "clusterCIDRs":["10.244.0.0/16"],"wgInterface":"kfwg0"}
//! ```
//!
//! The agent writes it with [`NodeState::store`] (write to a temporary file in the same
//! directory, fsync, rename), so a reader never sees a half-written file.
#![forbid(unsafe_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cidr::Ipv4Cidr;

/// Where the node agent writes the state file unless configured otherwise.
pub const DEFAULT_STATE_FILE: &str = "/run/kitfleet/node.json";

/// What the node agent tells the CNI plugin about this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    /// The node's pod CIDRs from `Node.spec.podCIDRs` (IPv4 only for now; the first is used).
    #[serde(rename = "podCIDRs", default)]
    pub pod_cidrs: Vec<String>,
    /// Pod MTU: underlay MTU minus 80 (WireGuard overhead over IPv6 underlays included).
    pub mtu: u32,
    /// Whether the WireGuard mesh is up (STATUS answers 51 when false).
    #[serde(default)]
    pub mesh_healthy: bool,
    /// Every podCIDR of the cluster: egress to these is not masqueraded.
    #[serde(rename = "clusterCIDRs", default)]
    pub cluster_cidrs: Vec<String>,
    /// Name of the WireGuard (TUN) interface that carries traffic to other nodes.
    #[serde(default)]
    pub wg_interface: String,
}

/// Errors reading, validating or writing the node state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file does not exist (the node agent has not written it yet).
    #[error("node state file {path}: does not exist (is the node agent running?)")]
    Missing {
        /// The path that was read.
        path: PathBuf,
    },
    /// The file could not be read or written.
    #[error("node state file {path}: {source}")]
    Io {
        /// The path that was read or written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid JSON for [`NodeState`].
    #[error("node state file {path}: {source}")]
    Decode {
        /// The path that was read.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A field has an invalid value.
    #[error("node state file {path}: {field}: {reason}")]
    Invalid {
        /// The path that was read.
        path: PathBuf,
        /// The JSON field name, e.g. `podCIDRs[0]`.
        field: String,
        /// Why it is invalid.
        reason: String,
    },
}

impl NodeState {
    /// Reads and validates the state file at `path`.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::Missing { path: path.into() });
            }
            Err(source) => {
                return Err(StateError::Io {
                    path: path.into(),
                    source,
                });
            }
        };
        let state: NodeState =
            serde_json::from_slice(&bytes).map_err(|source| StateError::Decode {
                path: path.into(),
                source,
            })?;
        state
            .validate()
            .map_err(|(field, reason)| StateError::Invalid {
                path: path.into(),
                field,
                reason,
            })?;
        Ok(state)
    }

    /// Writes the state atomically: a temporary file in the same directory, fsync, rename.
    /// Creates the parent directory if needed.
    pub fn store(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: path.into(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir).map_err(io)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let json = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            // Make the rename durable too (best effort on exotic file systems).
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io(e)
        })
    }

    /// Checks every field; returns `(field, reason)` for the first bad one. IPv6 CIDRs are
    /// accepted (dual-stack nodes) and ignored by the plugin, which is IPv4-only for now.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (list, name) in [
            (&self.pod_cidrs, "podCIDRs"),
            (&self.cluster_cidrs, "clusterCIDRs"),
        ] {
            for (i, c) in list.iter().enumerate() {
                if !is_ipv6_cidr(c) {
                    c.parse::<Ipv4Cidr>()
                        .map_err(|e| (format!("{name}[{i}]"), e.to_string()))?;
                }
            }
        }
        if !(576..=65535).contains(&self.mtu) {
            return Err(("mtu".into(), format!("{} is outside 576..=65535", self.mtu)));
        }
        Ok(())
    }

    /// The first IPv4 pod CIDR, parsed (`None` when the node has none yet).
    pub fn pod_cidr(&self) -> Option<Ipv4Cidr> {
        self.pod_cidrs.iter().find_map(|c| c.parse().ok())
    }

    /// The IPv4 cluster CIDRs, parsed.
    pub fn cluster_cidrs_v4(&self) -> Vec<Ipv4Cidr> {
        self.cluster_cidrs
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
    }
}

fn is_ipv6_cidr(s: &str) -> bool {
    s.split_once('/').is_some_and(|(a, p)| {
        a.parse::<std::net::Ipv6Addr>().is_ok() && p.parse::<u8>().is_ok_and(|p| p <= 128)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeState {
        NodeState {
            pod_cidrs: vec!["10.244.1.0/24".into()],
            mtu: 1420,
            mesh_healthy: true,
            cluster_cidrs: vec!["10.244.0.0/16".into()],
            wg_interface: "kfwg0".into(),
        }
    }

    #[test]
    fn store_then_load_round_trips_with_the_contract_field_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/node.json");
        sample().store(&path).unwrap();
        let raw: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        for key in [
            "podCIDRs",
            "mtu",
            "meshHealthy",
            "clusterCIDRs",
            "wgInterface",
        ] {
            assert!(raw.get(key).is_some(), "missing {key} in {raw}");
        }
        assert_eq!(NodeState::load(&path).unwrap(), sample());
        // No temporary file left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn dual_stack_nodes_use_the_first_ipv4_cidr() {
        let mut s = sample();
        s.pod_cidrs = vec!["fd00:10:244:1::/64".into(), "10.244.1.0/24".into()];
        s.cluster_cidrs = vec!["fd00:10:244::/56".into(), "10.244.0.0/16".into()];
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.pod_cidr().unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(s.cluster_cidrs_v4().len(), 1);
        s.pod_cidrs.truncate(1);
        assert_eq!(s.pod_cidr(), None);
    }

    #[test]
    fn load_reports_missing_and_bad_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.json");
        assert!(matches!(
            NodeState::load(&path),
            Err(StateError::Missing { .. })
        ));
        let cases = [
            (r#"{"podCIDRs":["10.0.0.0/33"],"mtu":1420}"#, "podCIDRs[0]"),
            (r#"{"podCIDRs":[],"mtu":100}"#, "mtu"),
            (
                r#"{"podCIDRs":[],"mtu":1400,"clusterCIDRs":["x"]}"#,
                "clusterCIDRs[0]",
            ),
            (r#"{"podCIDRs":[]}"#, "mtu"),
            (r#"{"podCIDRs":["fd00::/129"],"mtu":1400}"#, "podCIDRs[0]"),
        ];
        for (json, field) in cases {
            fs::write(&path, json).unwrap();
            let err = NodeState::load(&path).unwrap_err().to_string();
            assert!(err.contains(field), "{json}: {err}");
        }
    }
}
