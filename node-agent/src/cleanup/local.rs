//! The cleanup of one node, run on that node (host network namespace, the host's root mounted at `--host-root`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Node;
use kitfleet_api::constants::AGENT_ANNOTATION_PREFIX;
use kitfleet_netlink::{self as netlink, Netlink, NetlinkError};
use kube::api::{Api, Patch, PatchParams};

use super::{Layout, Plan, plan, under};
use crate::mesh::routes::{NetlinkRoutes, RouteError};

/// One step that failed (the others still ran).
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("interface {interface}: {source}")]
    Interface {
        interface: String,
        source: NetlinkError,
    },
    #[error("routes: {0}")]
    Routes(#[from] RouteError),
    #[error("nft table ip {table}: {source}")]
    Nft { table: String, source: NetlinkError },
    #[error("removing {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Node {node}: removing the agent's annotations: {source}")]
    Annotations { node: String, source: kube::Error },
    #[error("connecting to the apiserver: {0}")]
    Client(kube::Error),
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{node}: {count} step(s) failed:\n{lines}")]
    Failed {
        node: String,
        count: usize,
        lines: String,
    },
}

/// `kitfleet-node-agent cleanup`.
#[derive(Debug, Clone, clap::Args)]
pub struct CleanupArgs {
    /// The mesh's TUN interface.
    #[arg(long, default_value = "kfwg0")]
    pub interface: String,
    /// Where the host's root is mounted (every path below is a host path).
    #[arg(long, default_value = "/")]
    pub host_root: PathBuf,
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    #[arg(long, default_value = super::CONFLIST_NAME)]
    pub conflist_name: String,
    /// This node's name: its `agent.kitfleet.dev/` annotations are removed through the apiserver. Unset: the
    /// annotations are left (e.g. outside a cluster).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
}

/// What a run removed, one line each, and what failed.
#[derive(Debug, Default)]
pub struct Report {
    pub removed: Vec<String>,
    pub failed: Vec<CleanupError>,
}

fn remove_interface(name: &str) -> Result<bool, NetlinkError> {
    let mut nl = Netlink::open()?;
    match nl.link(name)? {
        Some(l) if l.kind == "tun" => nl.delete_link_checked(l.index, name, "tun"),
        Some(l) => {
            tracing::warn!(interface = name, kind = %l.kind, "not a TUN interface; left alone");
            Ok(false)
        }
        None => Ok(false),
    }
}

fn remove_path(p: &Path) -> std::io::Result<bool> {
    let meta = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let r = if meta.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    };
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes what `plan` lists, in the network namespace of the calling thread and below `root`.
pub fn apply(plan: &Plan, root: &Path, report: &mut Report) {
    for (p, why) in &plan.refused {
        tracing::warn!(path = %p.display(), reason = %why, "left alone");
    }
    match remove_interface(&plan.interface) {
        Ok(true) => report.removed.push(format!("interface {}", plan.interface)),
        Ok(false) => {}
        Err(source) => report.failed.push(CleanupError::Interface {
            interface: plan.interface.clone(),
            source,
        }),
    }
    // Routes through the TUN went with it; any other route with the agent's tag goes now.
    match NetlinkRoutes::open().and_then(|mut r| r.purge_ours()) {
        Ok(gone) => (report.removed).extend(gone.iter().map(|c| format!("route {c} proto 75"))),
        Err(e) => report.failed.push(e.into()),
    }
    for table in &plan.nft_tables {
        match netlink::nft_delete_table(table) {
            Ok(true) => report.removed.push(format!("nft table ip {table}")),
            Ok(false) => {}
            Err(source) => report.failed.push(CleanupError::Nft {
                table: table.clone(),
                source,
            }),
        }
    }
    for p in &plan.paths {
        let path = under(root, p);
        match remove_path(&path) {
            Ok(true) => report.removed.push(p.display().to_string()),
            Ok(false) => {}
            Err(source) => report.failed.push(CleanupError::Remove { path, source }),
        }
    }
}

/// The annotations to remove from `node`: every key under the agent's prefix.
pub fn agent_annotations(node: &Node) -> Vec<String> {
    (node.metadata.annotations.iter().flatten())
        .filter(|(k, _)| k.starts_with(AGENT_ANNOTATION_PREFIX))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Removes `node`'s agent-owned annotations (a merge patch setting each to null); returns the keys removed.
pub async fn remove_annotations(
    client: &kube::Client,
    node: &str,
) -> Result<Vec<String>, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let keys = agent_annotations(&api.get(node).await?);
    if keys.is_empty() {
        return Ok(keys);
    }
    let nulls: BTreeMap<&str, Option<String>> = keys.iter().map(|k| (k.as_str(), None)).collect();
    let patch = serde_json::json!({"metadata": {"annotations": nulls}});
    api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(keys)
}

/// Runs the whole cleanup of this node and prints what it removed. Errors: every failed step, one per line.
pub fn run(a: CleanupArgs) -> Result<(), CleanupError> {
    let layout = Layout {
        interface: a.interface.clone(),
        cni_bin_dir: a.cni_bin_dir.clone(),
        cni_conf_dir: a.cni_conf_dir.clone(),
        conflist_name: a.conflist_name.clone(),
    };
    let conflist_path = under(&a.host_root, &a.cni_conf_dir.join(&a.conflist_name));
    let conflist = std::fs::read_to_string(&conflist_path).ok();
    let plan = plan(&layout, conflist.as_deref());
    let mut report = Report::default();
    apply(&plan, &a.host_root, &mut report);
    match &a.node_name {
        Some(node) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CleanupError::Runtime)?;
            let result = rt.block_on(async {
                let client = kube::Client::try_default()
                    .await
                    .map_err(CleanupError::Client)?;
                remove_annotations(&client, node).await.map_err(|source| {
                    CleanupError::Annotations {
                        node: node.clone(),
                        source,
                    }
                })
            });
            match result {
                Ok(keys) => (report.removed).extend(keys.iter().map(|k| format!("annotation {k}"))),
                Err(e) => report.failed.push(e),
            }
        }
        None => tracing::info!("no --node-name / NODE_NAME: Node annotations left alone"),
    }
    let who = a.node_name.as_deref().unwrap_or("this node");
    if report.removed.is_empty() {
        println!("kitfleet-node-agent cleanup: {who}: nothing left to remove");
    }
    for r in &report.removed {
        println!("kitfleet-node-agent cleanup: {who}: removed {r}");
    }
    if report.failed.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = report.failed.iter().map(|e| format!("  {e}")).collect();
    Err(CleanupError::Failed {
        node: who.to_string(),
        count: report.failed.len(),
        lines: lines.join("\n"),
    })
}
