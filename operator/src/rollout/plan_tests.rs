//! Fixtures of the planner's table tests ([`super::transition_tests`], [`super::gate_tests`]).

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kitfleet_api::NodeImage;
use kitfleet_api::constants::*;
use kitfleet_api::nodeimage::RolloutSpec;

use super::sim::{KEY, OLD, node};
use super::*;

pub(super) const NOW: &str = "2026-11-30T12:00:00Z";

pub(super) fn now() -> Timestamp {
    NOW.parse().unwrap()
}

pub(super) fn ago(secs: i64) -> String {
    now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(secs))
        .unwrap()
        .to_string()
}

pub(super) fn ni(name: &str, max_unavailable: IntOrString) -> NodeImage {
    super::sim::nodeimage(name, max_unavailable)
}

pub(super) fn rollout(ni: &mut NodeImage) -> &mut RolloutSpec {
    ni.spec.rollout.as_mut().unwrap()
}

/// A node in `state` for [`KEY`] (owned by `ni-a`), entered `secs` ago.
pub(super) fn at(name: &str, state: NodeState, secs: i64) -> Node {
    let mut n = node(name, OLD);
    let a = n.metadata.annotations.as_mut().unwrap();
    a.insert(ANNOTATION_ROLLOUT_STATE.into(), state.as_str().into());
    a.insert(ANNOTATION_ROLLOUT_NODEIMAGE.into(), "ni-a".into());
    a.insert(ANNOTATION_DESIRED_BUILD_KEY.into(), KEY.into());
    a.insert(ANNOTATION_ROLLOUT_SINCE.into(), ago(secs));
    if state.disruptive() && state != NodeState::Verifying {
        n.spec.as_mut().unwrap().unschedulable = Some(true);
        a.insert(ANNOTATION_CORDONED.into(), "true".into());
    }
    n
}

pub(super) fn ann(mut n: Node, k: &str, v: &str) -> Node {
    n.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(k.into(), v.into());
    n
}

pub(super) fn not_ready(mut n: Node) -> Node {
    super::sim::set_ready(&mut n.status.as_mut().unwrap().conditions, false);
    n
}

pub(super) fn cordoned(mut n: Node) -> Node {
    n.spec.as_mut().unwrap().unschedulable = Some(true);
    n
}

pub(super) fn run(ni: &NodeImage, nodes: &[Node], pods: &[Pod]) -> Plan {
    run_with(ni, &[], nodes, pods, &[])
}

pub(super) fn run_with(
    ni: &NodeImage,
    others: &[NodeImage],
    nodes: &[Node],
    pods: &[Pod],
    pdbs: &[PodDisruptionBudget],
) -> Plan {
    plan(&Input {
        ni,
        others,
        nodes,
        pods,
        pdbs,
        now: now(),
    })
}

/// The node actions of a plan, as short strings (`Cordon n1`, `n1 → Draining`, `Evict ns/p`…).
pub(super) fn acts(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::MarkState { node, state, .. } => Some(format!("{node} → {}", state.as_str())),
            Action::SetDesiredBuildKey { node, key, .. } => {
                Some(format!("Desire {node} {}", &key[..4]))
            }
            Action::Cordon { node } => Some(format!("Cordon {node}")),
            Action::Uncordon { node } => Some(format!("Uncordon {node}")),
            Action::Release { node } => Some(format!("Release {node}")),
            Action::Evict { namespace, pod, .. } => Some(format!("Evict {namespace}/{pod}")),
            Action::DeletePod { namespace, pod, .. } => Some(format!("Delete {namespace}/{pod}")),
            _ => None,
        })
        .collect()
}

pub(super) fn status(p: &Plan) -> &RolloutStatus {
    p.actions
        .iter()
        .find_map(|a| {
            if let Action::UpdateStatus(s) = a {
                Some(s)
            } else {
                None
            }
        })
        .expect("a status")
}

pub(super) fn cond<'a>(p: &'a Plan, t: &str) -> &'a ConditionIntent {
    status(p).conditions.iter().find(|c| c.type_ == t).unwrap()
}

pub(super) fn one() -> IntOrString {
    IntOrString::Int(1)
}
