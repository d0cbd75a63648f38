//! How the planner reads Nodes and Pods: the operator's and the agent's annotations, readiness, cordons, which pods a
//! drain moves.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kitfleet_api::constants::{
    ANNOTATION_BOOTED_BUILD_KEY, ANNOTATION_CORDONED, ANNOTATION_DESIRED_BUILD_KEY,
    ANNOTATION_ROLLOUT_DEADLINE, ANNOTATION_ROLLOUT_FAILURE, ANNOTATION_ROLLOUT_NODEIMAGE,
    ANNOTATION_ROLLOUT_RETRY, ANNOTATION_ROLLOUT_SINCE, ANNOTATION_ROLLOUT_STATE,
    ANNOTATION_STAGED_BUILD_KEY, ANNOTATION_UPGRADE_FAILURE,
};
use kube::core::{Selector, SelectorExt};

use super::NodeState;

/// Mirror (static) pods carry this annotation; they cannot be evicted.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// One Node as the planner reads it.
#[derive(Debug, Clone)]
pub struct NodeView<'a> {
    pub name: &'a str,
    pub ready: bool,
    pub unschedulable: bool,
    /// `None`: no (or an unreadable) state annotation, i.e. never started.
    pub state: Option<NodeState>,
    pub owner: Option<&'a str>,
    pub desired: Option<&'a str>,
    pub since: Option<Timestamp>,
    pub deadline: Option<Timestamp>,
    pub cordoned_by_us: bool,
    pub failure: Option<&'a str>,
    pub retry_seen: Option<&'a str>,
    pub staged: Option<&'a str>,
    pub booted: Option<&'a str>,
    /// The agent's terminal failure: (build key, when, message).
    pub agent_failure: Option<(&'a str, Option<Timestamp>, &'a str)>,
}

impl<'a> NodeView<'a> {
    pub fn of(node: &'a Node) -> Self {
        let ann = node.metadata.annotations.as_ref();
        let get = |k: &str| ann.and_then(|a| a.get(k)).map(String::as_str);
        let time = |k: &str| get(k).and_then(|t| t.parse::<Timestamp>().ok());
        NodeView {
            name: node.metadata.name.as_deref().unwrap_or_default(),
            ready: is_ready(node),
            unschedulable: node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            state: get(ANNOTATION_ROLLOUT_STATE).and_then(NodeState::parse),
            owner: get(ANNOTATION_ROLLOUT_NODEIMAGE),
            desired: get(ANNOTATION_DESIRED_BUILD_KEY),
            since: time(ANNOTATION_ROLLOUT_SINCE),
            deadline: time(ANNOTATION_ROLLOUT_DEADLINE),
            cordoned_by_us: get(ANNOTATION_CORDONED) == Some("true"),
            failure: get(ANNOTATION_ROLLOUT_FAILURE),
            retry_seen: get(ANNOTATION_ROLLOUT_RETRY),
            staged: get(ANNOTATION_STAGED_BUILD_KEY),
            booted: get(ANNOTATION_BOOTED_BUILD_KEY),
            agent_failure: get(ANNOTATION_UPGRADE_FAILURE).map(agent_failure),
        }
    }

    /// Cordoned by someone other than Kitfleet.
    pub fn cordoned_by_others(&self) -> bool {
        self.unschedulable && !self.cordoned_by_us
    }

    /// The agent reported a terminal failure for the key the node is asked to run, since the node entered its state
    /// (an older report belongs to an attempt that was retried).
    pub fn agent_failed(&self) -> Option<&'a str> {
        match (self.agent_failure, self.desired) {
            (Some((k, at, msg)), Some(d)) if k == d && at >= self.since => Some(msg),
            _ => None,
        }
    }
}

/// `<build key> <RFC 3339 time> <message>`, as the agent writes it.
fn agent_failure(f: &str) -> (&str, Option<Timestamp>, &str) {
    let (key, rest) = f.split_once(' ').unwrap_or((f, ""));
    let (at, msg) = rest.split_once(' ').unwrap_or((rest, ""));
    (key, at.parse().ok(), msg)
}

/// The Node's `Ready` condition is `True`.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// The Pod's `Ready` condition is `True`.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Labels of an object (empty when it has none).
pub fn labels(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    meta.labels.as_ref().unwrap_or(&EMPTY)
}

/// Pods indexed by the node they run on (finished pods left out: they hold nothing).
pub fn pods_by_node(pods: &[Pod]) -> BTreeMap<&str, Vec<&Pod>> {
    let mut out: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for p in pods {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            out.entry(n).or_default().push(p);
        }
    }
    out
}

/// How a drain treats a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodDrain {
    /// Left alone: DaemonSet and mirror pods, pods matching `skipPodSelector`.
    Skip,
    /// Evicted (a controller recreates it elsewhere).
    Evict,
    /// No controller manages it: deleted with `force`, else the drain cannot proceed.
    Unmanaged,
}

/// How a drain treats `pod`.
pub fn pod_drain(pod: &Pod, skip: Option<&Selector>) -> PodDrain {
    let meta = &pod.metadata;
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let mirror = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_POD_ANNOTATION));
    if mirror
        || controller.is_some_and(|c| c.kind == "DaemonSet")
        || skip.is_some_and(|s| s.matches(labels(meta)))
    {
        PodDrain::Skip
    } else if controller.is_some() {
        PodDrain::Evict
    } else {
        PodDrain::Unmanaged
    }
}

/// `namespace/name` of a pod.
pub fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The PDBs in the pod's namespace that select it (policy/v1: an empty selector selects every pod) and currently
/// allow no disruption.
pub fn blocking_pdbs<'a>(
    pod: &Pod,
    pdbs: &'a [PodDisruptionBudget],
) -> Vec<&'a PodDisruptionBudget> {
    pdbs.iter()
        .filter(|b| b.metadata.namespace == pod.metadata.namespace)
        .filter(|b| {
            b.status
                .as_ref()
                .is_some_and(|s| s.disruptions_allowed.unwrap_or(0) <= 0)
        })
        .filter(|b| {
            let sel = b.spec.as_ref().and_then(|s| s.selector.clone());
            sel.and_then(|s| Selector::try_from(s).ok())
                .is_some_and(|s| s.matches(labels(&pod.metadata)))
        })
        .collect()
}
