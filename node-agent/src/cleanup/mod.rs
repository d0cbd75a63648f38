//! `kitfleet-node-agent cleanup`: removes everything the node agent and the `kitfleet-wg` plugin leave on a node —
//! the persistent TUN (the mesh keeps it across agent restarts by design), the agent's routes (only those carrying
//! its protocol tag), the masquerade nft table, the CNI conflist and plugin binary the install container copied, the
//! state, key, IPAM and log files and directories they own, and this node's `agent.kitfleet.dev/` annotations.
//! The chart's pre-delete hook runs it on every node through [`nodes`] (`cleanup-nodes`).
//!
//! Decide purely ([`plan`]: from the conflist, which names the nft table and the plugin's files), act separately
//! ([`local::run`]). Every step runs even when an earlier one failed; each failure is reported with what it was
//! about. Idempotent: a second run finds nothing and says so.

pub mod local;
pub mod nodes;

use std::path::{Component, Path, PathBuf};

/// The conflist the chart installs.
pub const CONFLIST_NAME: &str = "10-kitfleet.conflist";
/// The network name the chart's conflist uses (and with it the nft table `ip kitfleet_wg_kitfleet`).
pub const DEFAULT_NETWORK: &str = "kitfleet";
/// The plugin binary the chart installs.
pub const PLUGIN_BINARY: &str = "kitfleet-wg";

/// Directories and files the agent owns outright (removed whatever the conflist says).
pub const AGENT_PATHS: &[&str] = &[
    "/run/kitfleet",
    "/var/lib/kitfleet",
    "/var/lib/kubelet/seccomp/kitfleet",
    "/var/lib/kubelet/plugins/sandbox.kitfleet.dev",
    "/var/lib/kubelet/plugins_registry/sandbox.kitfleet.dev@reg.sock",
];

/// What a cleanup removes, as host paths (absolute, before the host root is prefixed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub interface: String,
    /// nft tables (family `ip`).
    pub nft_tables: Vec<String>,
    /// Files and directories, each removed with everything below it.
    pub paths: Vec<PathBuf>,
    /// Conflist paths left alone, with why (a path that does not name Kitfleet is never removed).
    pub refused: Vec<(PathBuf, String)>,
}

/// Where things are on the node.
#[derive(Debug, Clone)]
pub struct Layout {
    pub interface: String,
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub conflist_name: String,
}

/// A path from the conflist is removed only when it is absolute, has no `..` and one of its components names
/// Kitfleet: a conflist saying `"dataDir": "/"` must not wipe the node.
fn owned(p: &Path) -> Result<(), String> {
    if !p.is_absolute() {
        return Err("not absolute".into());
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err("contains ..".into());
    }
    let names_us = p.components().any(|c| match c {
        Component::Normal(s) => s.to_string_lossy().contains("kitfleet"),
        _ => false,
    });
    if names_us {
        Ok(())
    } else {
        Err("does not name kitfleet".into())
    }
}

/// The cleanup for `layout`, given the conflist's text if it could be read (`None`: the chart's defaults).
pub fn plan(layout: &Layout, conflist: Option<&str>) -> Plan {
    let conf: Option<serde_json::Value> = conflist.and_then(|c| serde_json::from_str(c).ok());
    let network = conf
        .as_ref()
        .and_then(|c| c["name"].as_str())
        .unwrap_or(DEFAULT_NETWORK)
        .to_string();
    let plugin = conf.as_ref().and_then(|c| {
        c["plugins"]
            .as_array()?
            .iter()
            .find(|p| p["type"] == PLUGIN_BINARY)
            .cloned()
    });
    let bin = &layout.cni_bin_dir;
    let confd = &layout.cni_conf_dir;
    let mut paths = vec![
        confd.join(&layout.conflist_name),
        confd.join(format!(".{}.tmp", layout.conflist_name)),
        bin.join(PLUGIN_BINARY),
        bin.join(format!(".{PLUGIN_BINARY}.tmp")),
        PathBuf::from(kitfleet_cni_wg::cni::config::DEFAULT_DATA_DIR),
    ];
    paths.extend(AGENT_PATHS.iter().map(PathBuf::from));
    let mut refused = Vec::new();
    for key in ["stateFile", "dataDir", "logFile"] {
        let Some(p) = plugin.as_ref().and_then(|p| p[key].as_str()) else {
            continue;
        };
        let p = PathBuf::from(p);
        match owned(&p) {
            Ok(()) => paths.push(p),
            Err(why) => refused.push((p, format!("conflist {key}: {why}"))),
        }
    }
    paths.sort();
    paths.dedup();
    // A path below another one goes with it.
    let all = paths.clone();
    paths.retain(|p| !all.iter().any(|q| q != p && p.starts_with(q)));
    Plan {
        interface: layout.interface.clone(),
        nft_tables: vec![kitfleet_cni_wg::nft::table_name(&network)],
        paths,
        refused,
    }
}

/// Joins a host path below `root` (`/` keeps it as is).
pub fn under(root: &Path, host_path: &Path) -> PathBuf {
    root.join(host_path.strip_prefix("/").unwrap_or(host_path))
}

#[cfg(test)]
mod tests;
