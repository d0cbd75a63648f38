//! The running node's KSPP state, reported as the Node condition `KitfleetHardened`: the boot
//! parameters on `/proc/cmdline`, the sysctls under `/proc/sys` and the lockdown mode in
//! `/sys/kernel/security/lockdown`, against the recommendations the builder's `apply` adds
//! (`kitfleet_api::kspp`). Reading is pure over injectable paths; [`publish`] patches
//! `nodes/status` (strategic merge on `conditions`, keyed by type, so other conditions stay).

use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kitfleet_api::kspp::{Arch, BOOT_PARAMS, SYSCTLS};

/// The condition type the agent owns on its Node.
pub const CONDITION_TYPE: &str = kitfleet_api::constants::CONDITION_KITFLEET_HARDENED;
/// Longest condition message written (the list of unmet items is cut to fit).
pub const MAX_MESSAGE: usize = 1024;

/// Errors of the per-node report.
#[derive(Debug, thiserror::Error)]
pub enum HardeningError {
    /// `/proc/cmdline` could not be read.
    #[error("{path}: {source}")]
    Cmdline {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The status patch was refused.
    #[error("patch nodes/{node}/status: {source}")]
    Patch {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// Where the kernel state is read (the host's paths by default; tests point at fixture files).
#[derive(Debug, Clone)]
pub struct Paths {
    /// `/proc/cmdline`.
    pub cmdline: PathBuf,
    /// `/proc/sys`.
    pub sysctl_root: PathBuf,
    /// `/sys/kernel/security/lockdown`.
    pub lockdown: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            cmdline: "/proc/cmdline".into(),
            sysctl_root: "/proc/sys".into(),
            lockdown: "/sys/kernel/security/lockdown".into(),
        }
    }
}

/// What the node meets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    /// Items checked.
    pub total: usize,
    /// Items not met, each `name (found …, want …)`.
    pub unmet: Vec<String>,
    /// The active lockdown mode (`none`, `integrity`, `confidentiality`), when the kernel has it.
    pub lockdown: Option<String>,
}

impl NodeReport {
    /// Items met.
    pub fn met(&self) -> usize {
        self.total - self.unmet.len()
    }
}

/// The architecture this agent runs on.
pub fn host_arch() -> Arch {
    if cfg!(target_arch = "aarch64") {
        Arch::Arm64
    } else {
        Arch::X86_64
    }
}

/// Reads the kernel state under `paths` and compares it with KSPP's boot parameters and sysctls.
/// `lockdown=` is judged by the active mode (integrity or stricter), and only where the kernel
/// has lockdown (as the builder adds it only then).
pub fn observe(paths: &Paths, arch: Arch) -> Result<NodeReport, HardeningError> {
    let cmdline =
        std::fs::read_to_string(&paths.cmdline).map_err(|source| HardeningError::Cmdline {
            path: paths.cmdline.clone(),
            source,
        })?;
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    let lockdown = std::fs::read_to_string(&paths.lockdown)
        .ok()
        .and_then(|s| active_lockdown(&s));
    let (mut total, mut unmet) = (0, Vec::new());
    for p in BOOT_PARAMS.iter().filter(|p| p.arch.applies_to(arch)) {
        if p.name() == "lockdown" {
            let Some(mode) = &lockdown else { continue };
            total += 1;
            if mode == "none" {
                unmet.push(format!(
                    "lockdown (found none, want {})",
                    p.value().unwrap_or("")
                ));
            }
            continue;
        }
        total += 1;
        if !words.contains(&p.param) {
            let found = words
                .iter()
                .find(|w| w.split('=').next() == Some(p.name()))
                .map_or("absent".to_owned(), |w| (*w).to_owned());
            unmet.push(format!("{} (found {found}, want {})", p.name(), p.param));
        }
    }
    for s in SYSCTLS {
        total += 1;
        let path = paths.sysctl_root.join(s.key.replace('.', "/"));
        let found = std::fs::read_to_string(&path)
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|_| "absent".to_owned());
        if found != s.value {
            unmet.push(format!("{} (found {found}, want {})", s.key, s.value));
        }
    }
    Ok(NodeReport {
        total,
        unmet,
        lockdown,
    })
}

/// The bracketed mode of `/sys/kernel/security/lockdown` (`none [integrity] confidentiality`).
fn active_lockdown(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_owned())
}

/// The Node condition for `report`: `True`/`KsppMet` when every item is met, else
/// `False`/`KsppUnmet` with the unmet items (the message is at most [`MAX_MESSAGE`] bytes).
pub fn condition(report: &NodeReport, now: Time) -> Condition {
    let all = report.unmet.is_empty();
    let head = format!(
        "KSPP {}: {}/{} boot parameters and sysctls met{}",
        kitfleet_api::kspp::SOURCE_VERSION,
        report.met(),
        report.total,
        report
            .lockdown
            .as_ref()
            .map_or(String::new(), |m| format!(", lockdown {m}"))
    );
    let mut message = head;
    if !all {
        message.push_str("; unmet: ");
        for (i, item) in report.unmet.iter().enumerate() {
            let left = report.unmet.len() - i;
            let tail = format!(" … and {left} more");
            let sep = if i == 0 { "" } else { ", " };
            if message.len() + sep.len() + item.len() + tail.len() > MAX_MESSAGE {
                message.push_str(&tail);
                break;
            }
            message.push_str(sep);
            message.push_str(item);
        }
    }
    Condition {
        type_: CONDITION_TYPE.to_owned(),
        status: if all { "True" } else { "False" }.to_owned(),
        reason: if all { "KsppMet" } else { "KsppUnmet" }.to_owned(),
        message,
        last_transition_time: now,
        observed_generation: None,
    }
}

/// Whether `existing` already says what `new` says (nothing to write).
pub fn unchanged(existing: Option<&Condition>, new: &Condition) -> bool {
    existing.is_some_and(|c| {
        c.status == new.status && c.reason == new.reason && c.message == new.message
    })
}

/// Writes `cond` into the Node's status, keeping the transition time when the status is unchanged.
pub async fn publish(
    client: &kube::Client,
    node: &str,
    cond: Condition,
) -> Result<bool, HardeningError> {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let err = |source| HardeningError::Patch {
        node: node.to_owned(),
        source,
    };
    let current = nodes.get_status(node).await.map_err(err)?;
    let existing = current
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == CONDITION_TYPE));
    let node_cond = to_node_condition(&cond, existing);
    if existing.is_some_and(|c| {
        c.status == node_cond.status
            && c.reason == node_cond.reason
            && c.message == node_cond.message
    }) {
        return Ok(false);
    }
    let patch = serde_json::json!({"status": {"conditions": [node_cond]}});
    nodes
        .patch_status(
            node,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(patch),
        )
        .await
        .map_err(err)?;
    Ok(true)
}

/// A metav1 condition as a NodeCondition (the Node API's own type), keeping the transition time
/// of an existing one whose status did not change.
fn to_node_condition(
    c: &Condition,
    existing: Option<&k8s_openapi::api::core::v1::NodeCondition>,
) -> k8s_openapi::api::core::v1::NodeCondition {
    let transition = existing
        .filter(|e| e.status == c.status)
        .and_then(|e| e.last_transition_time.clone())
        .unwrap_or_else(|| c.last_transition_time.clone());
    k8s_openapi::api::core::v1::NodeCondition {
        type_: c.type_.clone(),
        status: c.status.clone(),
        reason: Some(c.reason.clone()),
        message: Some(c.message.clone()),
        last_transition_time: Some(transition),
        last_heartbeat_time: Some(c.last_transition_time.clone()),
    }
}

/// Observes the node under `paths` and publishes the condition; logs instead of failing (the
/// report must not stop the mesh).
pub async fn report(client: &kube::Client, node: &str, paths: &Paths) {
    let result = match observe(paths, host_arch()) {
        Ok(r) => {
            let now = Time(k8s_openapi::jiff::Timestamp::now());
            publish(client, node, condition(&r, now)).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(written) => tracing::debug!(written, "KSPP node condition"),
        Err(e) => tracing::warn!(error = %e, "KSPP node condition not published"),
    }
}

#[cfg(test)]
mod tests;
