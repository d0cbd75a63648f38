//! The node state file: the contract between the node agent (writer) and the `kitfleet-wg` CNI
//! plugin (reader).
//!
//! Default path [`DEFAULT_STATE_FILE`] (`/run/kitfleet/node.json`); every user can point elsewhere
//! (conflist key `stateFile`), so several simulated nodes can share one machine. Example:
//!
//! ```json
//! {"podCIDRs":["10.244.1.0/24"],"mtu":1420,"meshHealthy":true,
//!  "clusterCIDRs":["10.244.0.0/16"],"wgInterface":"kfwg0","heartbeat":1796000000}
//! ```
//!
//! The agent writes it with [`NodeState::refresh`] (content changed, or the heartbeat is
//! [`HEARTBEAT_EVERY`] old) through [`NodeState::store`] (write to a temporary file in the same
//! directory, fsync, rename), so a reader never sees a half-written file.
//!
//! `clusterCIDRs` is the single source of truth for the plugin's bounds: every IPv4 pod CIDR
//! (the node's and the conflist's `podCIDR` override) must lie inside one of them, and the
//! masquerade set is built from them. The agent writes its configured `--cluster-cidr` values.
#![forbid(unsafe_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cidr;
use ipnet::Ipv4Net;

/// Where the node agent writes the state file unless configured otherwise.
pub const DEFAULT_STATE_FILE: &str = "/run/kitfleet/node.json";

/// How often the node agent refreshes the heartbeat (it rewrites the file at least this often).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// A heartbeat older than this (or this far in the future) means the agent is gone: STATUS 51.
pub const HEARTBEAT_STALE_AFTER: Duration = Duration::from_secs(30);

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
    /// When the agent last wrote the file, in seconds since the Unix epoch. Absent in a file
    /// written by hand (a single node without agent): then only `meshHealthy` counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<u64>,
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
                    cidr::parse(c).map_err(|e| (format!("{name}[{i}]"), e.to_string()))?;
                }
            }
        }
        for (i, c) in self.cluster_cidrs.iter().enumerate() {
            let prefix = c.split_once('/').and_then(|(_, p)| p.parse::<u8>().ok());
            if prefix == Some(0) {
                return Err((
                    format!("clusterCIDRs[{i}]"),
                    format!("{c} bounds nothing: list the cluster's pod networks"),
                ));
            }
        }
        for (i, c) in self.pod_cidrs.iter().enumerate() {
            if let Ok(p) = cidr::parse(c)
                && !self.within_cluster(p)
            {
                return Err((format!("podCIDRs[{i}]"), self.outside(p)));
            }
        }
        if !(576..=65535).contains(&self.mtu) {
            return Err(("mtu".into(), format!("{} is outside 576..=65535", self.mtu)));
        }
        Ok(())
    }

    /// The first IPv4 pod CIDR, parsed (`None` when the node has none yet).
    pub fn pod_cidr(&self) -> Option<Ipv4Net> {
        self.pod_cidrs.iter().find_map(|c| c.parse().ok())
    }

    /// The IPv4 cluster CIDRs, parsed.
    pub fn cluster_cidrs_v4(&self) -> Vec<Ipv4Net> {
        self.cluster_cidrs
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
    }
}

impl NodeState {
    /// Whether `c` lies inside one of the IPv4 cluster CIDRs.
    pub fn within_cluster(&self, c: Ipv4Net) -> bool {
        self.cluster_cidrs_v4().iter().any(|k| k.contains(&c))
    }

    /// Why `c` is refused (it is outside every cluster CIDR).
    pub fn outside(&self, c: Ipv4Net) -> String {
        let v4: Vec<String> = self
            .cluster_cidrs_v4()
            .iter()
            .map(|c| c.to_string())
            .collect();
        if v4.is_empty() {
            format!(
                "{c} is not inside the clusterCIDRs, and the node state file lists no IPv4 \
                 clusterCIDRs (the node agent's --cluster-cidr)"
            )
        } else {
            format!("{c} is not inside the clusterCIDRs [{}]", v4.join(", "))
        }
    }

    /// The pod CIDR to allocate from: the conflist override (`podCIDR`) if any, else the first
    /// IPv4 `podCIDRs` entry; either must lie inside the cluster CIDRs (the state file's own
    /// entries are checked by [`NodeState::validate`]). `Err` names the conflist key.
    pub fn pod_cidr_with(&self, over: Option<Ipv4Net>) -> Result<Option<Ipv4Net>, String> {
        match over {
            Some(o) if !self.within_cluster(o) => Err(format!(
                "podCIDR: {} (node state file stateFile)",
                self.outside(o)
            )),
            Some(o) => Ok(Some(o)),
            None => Ok(self.pod_cidr()),
        }
    }

    /// Why the mesh counts as down at `now`, if it does: `meshHealthy` false, or a heartbeat
    /// older than [`HEARTBEAT_STALE_AFTER`] (or that far ahead: a clock stepped back).
    pub fn mesh_down(&self, now: SystemTime) -> Option<String> {
        if !self.mesh_healthy {
            return Some("the WireGuard mesh is down (node state meshHealthy is false)".into());
        }
        let hb = self.heartbeat?;
        let now = unix_secs(now);
        let stale = HEARTBEAT_STALE_AFTER.as_secs();
        if now.saturating_sub(hb) > stale || hb.saturating_sub(now) > stale {
            return Some(format!(
                "node state heartbeat {hb} is {}s away from now ({now}; stale after {stale}s): \
                 the node agent is not running",
                now.abs_diff(hb)
            ));
        }
        None
    }

    /// The node agent's writer: stores `self` with `heartbeat` = `now` when the file's content
    /// differs (heartbeat aside) or its heartbeat is [`HEARTBEAT_EVERY`] old or more (or in the
    /// future). Returns whether it wrote.
    pub fn refresh(&self, path: &Path, now: SystemTime) -> Result<bool, StateError> {
        let now = unix_secs(now);
        let mut want = self.clone();
        want.heartbeat = None;
        let fresh = Self::load(path).ok().is_some_and(|mut disk| {
            let hb = disk.heartbeat.take();
            disk == want && hb.is_some_and(|h| h <= now && now - h < HEARTBEAT_EVERY.as_secs())
        });
        if fresh {
            return Ok(false);
        }
        want.heartbeat = Some(now);
        want.store(path)?;
        Ok(true)
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// This boot's ID (`/proc/sys/kernel/random/boot_id`), empty if unreadable.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
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
            heartbeat: None,
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

    #[test]
    fn pod_cidrs_must_lie_inside_the_cluster_cidrs() {
        let c = |s: &str| cidr::parse(s).unwrap();
        let mut s = sample();
        s.pod_cidrs = vec!["0.0.0.0/0".into()];
        assert_eq!(s.validate().unwrap_err().0, "podCIDRs[0]");
        s.pod_cidrs = vec!["10.244.1.0/24".into(), "10.0.0.0/8".into()];
        let (field, why) = s.validate().unwrap_err();
        assert_eq!(field, "podCIDRs[1]");
        assert!(why.contains("[10.244.0.0/16]"), "{why}");
        s.pod_cidrs = vec!["10.244.1.0/24".into()];
        s.cluster_cidrs = vec![];
        let (field, why) = s.validate().unwrap_err();
        assert!(
            field == "podCIDRs[0]" && why.contains("--cluster-cidr"),
            "{why}"
        );
        for everything in ["0.0.0.0/0", "0.0.0.0/00", "::/0"] {
            s.cluster_cidrs = vec!["10.244.0.0/16".into(), everything.into()];
            assert_eq!(
                s.validate().unwrap_err().0,
                "clusterCIDRs[1]",
                "{everything}"
            );
        }
        s.cluster_cidrs = vec!["10.244.1.0/24".into()];
        assert_eq!(s.validate(), Ok(()), "equal is inside");
        let s = sample();
        assert_eq!(s.pod_cidr_with(None).unwrap(), Some(c("10.244.1.0/24")));
        assert_eq!(
            s.pod_cidr_with(Some(c("10.244.9.0/24"))).unwrap(),
            Some(c("10.244.9.0/24"))
        );
        for bad in ["10.245.0.0/24", "10.0.0.0/8", "169.254.169.254/32"] {
            let e = s.pod_cidr_with(Some(c(bad))).unwrap_err();
            assert!(e.starts_with("podCIDR: ") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn heartbeat_staleness_and_refresh() {
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let mut s = sample();
        assert_eq!(
            s.mesh_down(t(1_000_000)),
            None,
            "no heartbeat: a hand-written file"
        );
        s.heartbeat = Some(1_000_000);
        assert_eq!(s.mesh_down(t(1_000_030)), None);
        assert!(s.mesh_down(t(1_000_031)).unwrap().contains("heartbeat"));
        assert!(s.mesh_down(t(999_969)).unwrap().contains("heartbeat"));
        s.mesh_healthy = false;
        assert!(s.mesh_down(t(1_000_000)).unwrap().contains("meshHealthy"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.json");
        let s = sample();
        assert!(s.refresh(&path, t(100)).unwrap(), "first write");
        assert_eq!(NodeState::load(&path).unwrap().heartbeat, Some(100));
        assert!(
            !s.refresh(&path, t(104)).unwrap(),
            "unchanged and fresh: no write"
        );
        assert!(s.refresh(&path, t(105)).unwrap(), "due");
        assert_eq!(NodeState::load(&path).unwrap().heartbeat, Some(105));
        let mut changed = s.clone();
        changed.mesh_healthy = false;
        assert!(changed.refresh(&path, t(106)).unwrap(), "content changed");
        assert!(!NodeState::load(&path).unwrap().mesh_healthy);
        assert!(
            changed.refresh(&path, t(50)).unwrap(),
            "heartbeat in the future"
        );
    }
}
