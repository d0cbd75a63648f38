//! Rolling node upgrades. Built: the planner ([`plan::plan`]), a pure function of (NodeImage, other NodeImages,
//! Nodes, Pods, PDBs, now) → [`Plan`]. Planned (not built yet): the drain executor and the controller that gathers the
//! inputs, applies the actions and publishes the Events.
//!
//! Every rollout fact lives on the Node under operator-owned annotation keys (`operator.kitfleet.dev/…`, see
//! [`kitfleet_api::constants`]): the node's state, the NodeImage it belongs to, the build key it is asked to run, when
//! it entered the state, its deadline, whether Kitfleet cordoned it, why it failed. A restarted operator reads them
//! back and plans exactly where the previous one stopped.
//!
//! The executor's contract: apply the actions of one node as one patch ([`Plan::node_patches`]), so that a cordon
//! and its record land together; apply the patches in the order given (nodes freed before nodes cordoned: the budget
//! counted on them) and stop at the first write that fails (plan again later). Pod actions and the status follow.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kitfleet_api::constants::{
    ANNOTATION_CORDONED, ANNOTATION_DESIRED_ARTIFACT, ANNOTATION_DESIRED_BUILD_KEY,
    ANNOTATION_ROLLOUT_DEADLINE, ANNOTATION_ROLLOUT_FAILURE, ANNOTATION_ROLLOUT_NODEIMAGE,
    ANNOTATION_ROLLOUT_RETRY, ANNOTATION_ROLLOUT_SINCE, ANNOTATION_ROLLOUT_STATE,
    ANNOTATION_UPGRADE_METHOD,
};
use kitfleet_api::nodeimage::{NodeCounts, NodeFailure};

mod advance;
pub mod controller;
pub mod drain;
pub mod plan;
pub mod status;
mod steps;
mod summary;
mod view;
mod window;

#[cfg(any(test, feature = "sim"))]
pub mod sim;
#[cfg(any(test, feature = "sim"))]
mod sim_exec;
#[cfg(any(test, feature = "sim"))]
mod sim_fixtures;

#[cfg(test)]
mod gate_tests;
#[cfg(test)]
mod plan_tests;
#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod transition_tests;

pub use plan::{Input, plan};
pub use window::{WindowError, is_open, next_open};

/// The rollout state of one node, recorded in `operator.kitfleet.dev/rollout-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeState {
    /// Not started (also: no annotation).
    Pending,
    /// The agent is pulling and staging the desired build key; the node still serves.
    Staging,
    /// The agent staged it; waiting for room in the disruption budget.
    Staged,
    /// Cordoned; its pods are being evicted.
    Draining,
    /// The agent switches to the new image (BootNext + reboot, or kexec).
    Rebooting,
    /// Uncordoned; the health gate runs.
    Verifying,
    /// Runs the desired build key and passed the health gate.
    Done,
    /// Failed terminally; the rollout halts until `kitfleet.dev/retry` changes.
    Failed,
}

impl NodeState {
    pub const ALL: [NodeState; 8] = [
        Self::Pending,
        Self::Staging,
        Self::Staged,
        Self::Draining,
        Self::Rebooting,
        Self::Verifying,
        Self::Done,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Staging => "Staging",
            Self::Staged => "Staged",
            Self::Draining => "Draining",
            Self::Rebooting => "Rebooting",
            Self::Verifying => "Verifying",
            Self::Done => "Done",
            Self::Failed => "Failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Started and not finished.
    pub fn in_progress(self) -> bool {
        matches!(
            self,
            Self::Staging | Self::Staged | Self::Draining | Self::Rebooting | Self::Verifying
        )
    }

    /// The node is out of service because of the rollout (counted against `maxUnavailable` whatever the node says).
    pub fn disruptive(self) -> bool {
        matches!(self, Self::Draining | Self::Rebooting | Self::Verifying)
    }
}

/// Why a node failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// CamelCase (`DrainTimeout`, `HealthCheckTimeout`, …).
    pub reason: String,
    pub message: String,
    /// The NodeImage's `kitfleet.dev/retry` value when it failed (a new value retries the node).
    pub retry: String,
}

/// One decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Record the node's state for `nodeimage`, entered at `since`; `deadline` bounds it (drain, health gate).
    MarkState {
        node: String,
        nodeimage: String,
        state: NodeState,
        since: Timestamp,
        deadline: Option<Timestamp>,
        failure: Option<Failure>,
    },
    /// Ask the node's agent to stage this build key (hex, no `sha256:`), pulling `artifact`
    /// (`REGISTRY/REPO@sha256:…`) and switching with `method` (`reboot` or `kexec`).
    SetDesiredBuildKey {
        node: String,
        key: String,
        artifact: String,
        method: String,
    },
    /// Cordon the node and record that Kitfleet did.
    Cordon { node: String },
    /// Uncordon a node Kitfleet cordoned, and drop that record.
    Uncordon { node: String },
    /// Remove every operator-owned rollout annotation (the node left the rollout, or the NodeImage is going away).
    Release { node: String },
    /// Evict a pod through the Eviction API (PDBs apply; a 429 is retried on a later plan).
    Evict {
        namespace: String,
        pod: String,
        grace_period_seconds: Option<i64>,
    },
    /// Delete a pod no controller manages (`drain.force`).
    DeletePod {
        namespace: String,
        pod: String,
        grace_period_seconds: Option<i64>,
    },
    /// Write the rollout part of the NodeImage status (only when it changed).
    UpdateStatus(RolloutStatus),
    /// Publish an Event on the NodeImage.
    Event(NodeEvent),
}

/// The rollout part of a NodeImage's status.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RolloutStatus {
    /// `None`: no rollout (the field is cleared).
    pub nodes: Option<NodeCounts>,
    pub failures: Vec<NodeFailure>,
    /// `RolledOut` and `Degraded`, to be set with their transition times kept.
    pub conditions: Vec<ConditionIntent>,
}

/// A condition to set on the NodeImage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionIntent {
    pub type_: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// An Event about a node's transition (or the rollout as a whole when `node` is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    pub node: String,
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// What to do now, and when to plan again at the latest (besides watch events).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub requeue_after: Option<Duration>,
}

/// Every change to one Node, applied as one patch: annotation → value (`None` removes it), and the cordon.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodePatch {
    pub annotations: BTreeMap<String, Option<String>>,
    pub unschedulable: Option<bool>,
}

/// The operator-owned rollout annotations (all removed by [`Action::Release`]).
pub const OPERATOR_KEYS: [&str; 10] = [
    ANNOTATION_ROLLOUT_STATE,
    ANNOTATION_ROLLOUT_NODEIMAGE,
    ANNOTATION_DESIRED_BUILD_KEY,
    ANNOTATION_DESIRED_ARTIFACT,
    ANNOTATION_UPGRADE_METHOD,
    ANNOTATION_ROLLOUT_SINCE,
    ANNOTATION_ROLLOUT_DEADLINE,
    ANNOTATION_CORDONED,
    ANNOTATION_ROLLOUT_FAILURE,
    ANNOTATION_ROLLOUT_RETRY,
];

impl Plan {
    /// The node actions merged into one patch per node, to be applied in this order: every patch that cordons
    /// nothing first, then the cordons.
    pub fn node_patches(&self) -> Vec<(String, NodePatch)> {
        let mut out: BTreeMap<String, NodePatch> = BTreeMap::new();
        for a in &self.actions {
            let (node, f): (&str, &dyn Fn(&mut NodePatch)) = match a {
                Action::MarkState { node, .. } => (node, &|p| mark(p, a)),
                Action::SetDesiredBuildKey {
                    node,
                    key,
                    artifact,
                    method,
                } => (node, &|p| {
                    set(p, ANNOTATION_DESIRED_BUILD_KEY, Some(key.clone()));
                    set(p, ANNOTATION_DESIRED_ARTIFACT, Some(artifact.clone()));
                    set(p, ANNOTATION_UPGRADE_METHOD, Some(method.clone()));
                }),
                Action::Cordon { node } => (node, &|p| {
                    p.unschedulable = Some(true);
                    set(p, ANNOTATION_CORDONED, Some("true".into()));
                }),
                Action::Uncordon { node } => (node, &|p| {
                    p.unschedulable = Some(false);
                    set(p, ANNOTATION_CORDONED, None);
                }),
                Action::Release { node } => (node, &|p| {
                    for k in OPERATOR_KEYS {
                        set(p, k, None);
                    }
                }),
                _ => continue,
            };
            f(out.entry(node.to_string()).or_default());
        }
        // Cordons last: the budget counted on the nodes this plan frees.
        let (mut first, cordons): (Vec<_>, Vec<_>) = out
            .into_iter()
            .partition(|(_, p)| p.unschedulable != Some(true));
        first.extend(cordons);
        first
    }

    /// The Events of this plan.
    pub fn events(&self) -> impl Iterator<Item = &NodeEvent> {
        self.actions.iter().filter_map(|a| match a {
            Action::Event(e) => Some(e),
            _ => None,
        })
    }
}

fn set(p: &mut NodePatch, key: &str, value: Option<String>) {
    p.annotations.insert(key.to_string(), value);
}

fn mark(p: &mut NodePatch, a: &Action) {
    let Action::MarkState {
        nodeimage,
        state,
        since,
        deadline,
        failure,
        ..
    } = a
    else {
        return;
    };
    set(p, ANNOTATION_ROLLOUT_STATE, Some(state.as_str().into()));
    set(p, ANNOTATION_ROLLOUT_NODEIMAGE, Some(nodeimage.clone()));
    set(p, ANNOTATION_ROLLOUT_SINCE, Some(since.to_string()));
    set(
        p,
        ANNOTATION_ROLLOUT_DEADLINE,
        deadline.map(|d| d.to_string()),
    );
    let (fail, retry) = match failure {
        Some(f) => (
            Some(format!("{}: {}", f.reason, f.message)),
            Some(f.retry.clone()),
        ),
        None => (None, None),
    };
    set(p, ANNOTATION_ROLLOUT_FAILURE, fail);
    set(p, ANNOTATION_ROLLOUT_RETRY, retry);
}

impl NodePatch {
    /// Applies the patch to a Node object (what the apiserver does with [`NodePatch::to_merge_patch`]).
    pub fn apply_to(&self, node: &mut Node) {
        let ann = node.metadata.annotations.get_or_insert_with(BTreeMap::new);
        for (k, v) in &self.annotations {
            match v {
                Some(v) => ann.insert(k.clone(), v.clone()),
                None => ann.remove(k),
            };
        }
        if let Some(u) = self.unschedulable {
            node.spec.get_or_insert_with(Default::default).unschedulable = Some(u).filter(|u| *u);
        }
    }

    /// A JSON merge patch for the Node (`null` removes an annotation).
    pub fn to_merge_patch(&self) -> serde_json::Value {
        let mut v = serde_json::json!({"metadata": {"annotations": self.annotations}});
        if let Some(u) = self.unschedulable {
            v["spec"] = serde_json::json!({ "unschedulable": if u { serde_json::Value::Bool(true) } else { serde_json::Value::Null } });
        }
        v
    }
}
