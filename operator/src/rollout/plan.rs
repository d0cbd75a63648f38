//! The rollout planner: (NodeImage, other NodeImages, Nodes, Pods, PDBs, now) → [`Plan`]. Pure: no I/O, the clock
//! is an argument, and everything it remembers is read back from the Nodes' annotations.
//!
//! One pass: release nodes that left the rollout, retry failed nodes when `kitfleet.dev/retry` changed, advance every
//! node in progress (Staging → Staged, Draining → Rebooting, …), then start nodes while the budget, the window,
//! `paused` and the halt allow, and summarise the status.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kitfleet_api::NodeImage;
use kitfleet_api::constants::ANNOTATION_RETRY;
use kitfleet_api::nodeimage::RolloutSpec;
use kube::core::{Selector, SelectorExt};

use super::status::Summary;
use super::view::{self, NodeView};
use super::{Action, Failure, NodeEvent, NodeState, Plan};

/// Drain timeout when `drain.timeout` is unset.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
/// Health-gate timeout when `healthCheck.timeout` is unset.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(600);
/// How soon a draining node is looked at again (evictions refused with 429 are retried then).
pub const DRAIN_POLL: Duration = Duration::from_secs(5);

/// Everything one plan looks at.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub ni: &'a NodeImage,
    /// Every other NodeImage (for conflicts over shared nodes).
    pub others: &'a [NodeImage],
    pub nodes: &'a [Node],
    pub pods: &'a [Pod],
    pub pdbs: &'a [PodDisruptionBudget],
    pub now: Timestamp,
}

/// The build key (hex, no `sha256:`) nodes should run: the status's build key once its artifact is published.
pub fn target_key(ni: &NodeImage) -> Option<&str> {
    let st = ni.status.as_ref()?;
    let key = st.build_key.as_deref()?;
    let tag = crate::build::registry::artifact_tag(key);
    st.artifact
        .as_ref()
        .filter(|a| a.reference.contains(&format!(":{tag}@")))?;
    Some(key.strip_prefix("sha256:").unwrap_or(key))
}

/// The artifact of the target key as the node agent pulls it: `REGISTRY/REPO@sha256:…` (the status's
/// `repository:tag@digest` without its tag).
pub fn target_artifact(ni: &NodeImage) -> Option<String> {
    let a = ni.status.as_ref()?.artifact.as_ref()?;
    let (name, digest) = a.reference.rsplit_once('@')?;
    let repo = match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => name,
    };
    Some(format!("{repo}@{digest}"))
}

/// `spec.rollout.method` as written in manifests (`reboot` or `kexec`).
pub fn method_name(r: &RolloutSpec) -> String {
    serde_json::to_value(r.method)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "reboot".into())
}

/// How many selected nodes may be unavailable: a count, or a percentage of `total` rounded up; at least one.
pub fn budget(max_unavailable: &IntOrString, total: usize) -> Result<usize, String> {
    let bad = |v: &str| {
        format!(
            "spec.rollout.maxUnavailable: {v:?} must be an integer > 0 or a percentage in (0%, 100%]"
        )
    };
    let n = match max_unavailable {
        IntOrString::Int(n) if *n > 0 => *n as usize,
        IntOrString::Int(n) => return Err(bad(&n.to_string())),
        IntOrString::String(s) => match s.strip_suffix('%') {
            Some(p) => match p.parse::<usize>() {
                Ok(p) if (1..=100).contains(&p) => (total * p).div_ceil(100),
                _ => return Err(bad(s)),
            },
            None => s
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(s))?,
        },
    };
    Ok(n.max(1))
}

/// The plan for this NodeImage now.
pub fn plan(input: &Input) -> Plan {
    let mut p = Planner::new(input);
    match input.ni.spec.rollout.as_ref() {
        Some(r) if input.ni.metadata.deletion_timestamp.is_none() => p.roll(r),
        _ => p.wind_down(),
    }
    p.plan
}

pub(super) struct Slot<'a> {
    pub v: NodeView<'a>,
    /// State and cordon after this plan.
    pub state: NodeState,
    pub unsched: bool,
    /// The build key the state refers to, after this plan.
    pub desired: Option<&'a str>,
    /// The failure recorded by this plan.
    pub failure: Option<Failure>,
    /// Ours to drive (selected, not left to an earlier NodeImage, not in progress for another one).
    pub ours: bool,
}

pub(super) struct Planner<'a> {
    pub inp: &'a Input<'a>,
    pub name: &'a str,
    pub plan: Plan,
    pub pods: BTreeMap<&'a str, Vec<&'a Pod>>,
    pub retry: &'a str,
}

impl<'a> Planner<'a> {
    fn new(inp: &'a Input<'a>) -> Self {
        let retry = inp
            .ni
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_RETRY));
        Planner {
            inp,
            name: inp.ni.metadata.name.as_deref().unwrap_or_default(),
            plan: Plan::default(),
            pods: BTreeMap::new(),
            retry: retry.map(String::as_str).unwrap_or_default(),
        }
    }

    pub fn push(&mut self, a: Action) {
        self.plan.actions.push(a);
    }

    /// Asks `node` to run `key`, with the artifact and method the agent needs for it.
    pub fn desire(&self, node: &str, key: &str) -> Action {
        Action::SetDesiredBuildKey {
            node: node.to_string(),
            key: key.to_string(),
            artifact: target_artifact(self.inp.ni).unwrap_or_default(),
            method: self
                .inp
                .ni
                .spec
                .rollout
                .as_ref()
                .map(method_name)
                .unwrap_or_else(|| "reboot".into()),
        }
    }

    pub fn requeue(&mut self, after: Duration) {
        self.plan.requeue_after = Some(self.plan.requeue_after.map_or(after, |r| r.min(after)));
    }

    pub fn after(&self, d: Duration) -> Timestamp {
        let d = SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
        self.inp.now.checked_add(d).unwrap_or(Timestamp::MAX)
    }

    /// Records a transition of `s` to `to`, with its Event.
    pub fn mark(
        &mut self,
        s: &mut Slot,
        to: NodeState,
        deadline: Option<Timestamp>,
        failure: Option<Failure>,
    ) {
        let from = s.state;
        let note = match &failure {
            Some(f) => format!(
                "node {}: {} → {}: {}: {}",
                s.v.name,
                from.as_str(),
                to.as_str(),
                f.reason,
                f.message
            ),
            None => format!("node {}: {} → {}", s.v.name, from.as_str(), to.as_str()),
        };
        self.push(Action::MarkState {
            node: s.v.name.to_string(),
            nodeimage: self.name.to_string(),
            state: to,
            since: self.inp.now,
            deadline,
            failure,
        });
        self.push(Action::Event(NodeEvent {
            node: s.v.name.to_string(),
            warning: to == NodeState::Failed,
            reason: format!("Node{}", to.as_str()),
            note,
        }));
        s.state = to;
    }

    pub fn fail(&mut self, s: &mut Slot, reason: &str, message: String) {
        let failure = Failure {
            reason: reason.into(),
            message,
            retry: self.retry.to_string(),
        };
        self.mark(s, NodeState::Failed, None, Some(failure.clone()));
        s.failure = Some(failure);
    }

    pub fn uncordon(&mut self, s: &mut Slot) {
        if s.v.cordoned_by_us {
            self.push(Action::Uncordon {
                node: s.v.name.to_string(),
            });
            s.unsched = false;
        }
    }

    /// Every node this NodeImage drove is uncordoned (when Kitfleet cordoned it) and released.
    fn wind_down(&mut self) {
        for n in self.inp.nodes {
            let v = NodeView::of(n);
            if v.owner == Some(self.name) {
                self.release(&v);
            }
        }
        let has = self
            .inp
            .ni
            .status
            .as_ref()
            .is_some_and(|s| s.nodes.is_some() || !s.failures.is_empty());
        if self.inp.ni.spec.rollout.is_none()
            && self.inp.ni.metadata.deletion_timestamp.is_none()
            && has
        {
            self.push(Action::UpdateStatus(Default::default()));
        }
    }

    fn release(&mut self, v: &NodeView) {
        if v.cordoned_by_us {
            self.push(Action::Uncordon {
                node: v.name.to_string(),
            });
        }
        self.push(Action::Release {
            node: v.name.to_string(),
        });
    }

    fn roll(&mut self, r: &'a RolloutSpec) {
        let selector = match r.node_selector.clone().map(Selector::try_from) {
            None => {
                return self.summarise(
                    r,
                    &[],
                    Summary::new(
                        "NoNodes",
                        "spec.rollout.nodeSelector is unset: no node is selected",
                    ),
                );
            }
            Some(Err(e)) => {
                return self.summarise(
                    r,
                    &[],
                    Summary::degraded("InvalidSelector", format!("spec.rollout.nodeSelector: {e}")),
                );
            }
            Some(Ok(s)) => s,
        };
        let mut nodes: Vec<&Node> = self.inp.nodes.iter().collect();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let (selected, left): (Vec<&Node>, Vec<&Node>) = nodes
            .into_iter()
            .partition(|n| selector.matches(view::labels(&n.metadata)));
        for n in left {
            let v = NodeView::of(n);
            if v.owner == Some(self.name) {
                self.release(&v);
            }
        }
        let (shared, conflicts) = self.conflicts(&selected);
        let mut slots: Vec<Slot> = selected.iter().map(|n| self.slot(n, &shared)).collect();
        for s in slots
            .iter()
            .filter(|s| !s.ours && s.v.owner == Some(self.name))
        {
            let v = s.v.clone();
            self.release(&v);
        }
        self.pods = view::pods_by_node(self.inp.pods);
        let gate = self.advance(r, &mut slots, conflicts);
        let summary = self.summary(r, &slots, gate);
        self.summarise(r, &slots, summary);
    }

    fn slot(&self, n: &'a Node, shared: &BTreeSet<&str>) -> Slot<'a> {
        let v = NodeView::of(n);
        let foreign =
            v.owner.is_some_and(|o| o != self.name) && v.state.is_some_and(NodeState::in_progress);
        Slot {
            ours: !foreign && !shared.contains(v.name),
            state: v.state.unwrap_or(NodeState::Pending),
            unsched: v.unschedulable,
            desired: v.desired,
            failure: None,
            v,
        }
    }

    /// Selected nodes also selected by an earlier NodeImage (by creation time, then name), and a message naming them.
    fn conflicts(&self, selected: &[&'a Node]) -> (BTreeSet<&'a str>, Option<String>) {
        let me = (&self.inp.ni.metadata.creation_timestamp, self.name);
        let mut shared = BTreeSet::new();
        let mut with = Vec::new();
        for o in self.inp.others {
            let other = (
                &o.metadata.creation_timestamp,
                o.metadata.name.as_deref().unwrap_or_default(),
            );
            let sel = o
                .spec
                .rollout
                .as_ref()
                .and_then(|r| r.node_selector.clone());
            let Some(Ok(sel)) = sel.map(Selector::try_from) else {
                continue;
            };
            if other.1 == self.name
                || (other.0.as_ref().map(|t| t.0), other.1) >= (me.0.as_ref().map(|t| t.0), me.1)
            {
                continue;
            }
            let before = shared.len();
            shared.extend(
                selected
                    .iter()
                    .filter(|n| sel.matches(view::labels(&n.metadata)))
                    .filter_map(|n| n.metadata.name.as_deref()),
            );
            if shared.len() > before {
                with.push(other.1);
            }
        }
        let msg = (!shared.is_empty()).then(|| {
            let names: Vec<&str> = shared.iter().take(5).copied().collect();
            let more = shared.len().saturating_sub(names.len());
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            format!(
                "nodes {}{more} are also selected by NodeImage {} (created earlier); this rollout leaves them alone",
                names.join(", "),
                with.join(", ")
            )
        });
        (shared, msg)
    }
}
