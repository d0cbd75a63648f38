//! SecurityPolicy status from what the cluster says: the pods its selector matches and the nodes' sandbox reports
//! (Node annotation `agent.kitfleet.dev/sandbox-report`, `kitfleet_api::security::NodeSandboxReport`). Pure: the
//! clock is an argument, conditions keep their transition time while their status stays.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kitfleet_api::security::{NodeAbi, NodeSandboxReport, PodRefusal, PolicyMode};
use kitfleet_api::{SecurityPolicy, SecurityPolicyStatus};
use kube::core::{Selector, SelectorExt};

/// At most this many nodes in `status.nodes`.
pub const MAX_NODES: usize = 256;

/// What the status needs of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodView {
    /// Namespace.
    pub namespace: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Not finished (phase neither `Succeeded` nor `Failed`) and not being deleted.
    pub live: bool,
}

/// What the status needs of a node: its name and parsed report (`None`: no report, or one that does not parse).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// The sandbox report.
    pub report: Option<NodeSandboxReport>,
}

/// A refusal of one of the policy's pods on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The node that reported it.
    pub node: String,
    /// What it reported.
    pub refusal: PodRefusal,
}

impl Refusal {
    /// The Event's note.
    pub fn note(&self) -> String {
        format!(
            "pod {} on node {} was refused ({}): {}",
            self.refusal.pod, self.node, self.refusal.stage, self.refusal.reason
        )
    }
}

fn names(p: &SecurityPolicy) -> (&str, &str) {
    (
        p.metadata.namespace.as_deref().unwrap_or(""),
        p.metadata.name.as_deref().unwrap_or(""),
    )
}

/// The pods of `pods` the policy's selector matches (live ones in its namespace). An invalid selector matches
/// nothing (the validating webhook refuses such a policy).
pub fn matched_pods(p: &SecurityPolicy, pods: &[PodView]) -> i32 {
    let (ns, _) = names(p);
    let Ok(sel) = Selector::try_from(p.spec.pod_selector.clone()) else {
        return 0;
    };
    pods.iter()
        .filter(|v| v.live && v.namespace == ns && sel.matches(&v.labels))
        .count() as i32
}

/// Every refusal the nodes report for pods of this policy, by node then report order.
pub fn refusals(p: &SecurityPolicy, nodes: &[NodeView]) -> Vec<Refusal> {
    let (ns, name) = names(p);
    let prefix = format!("{ns}/");
    let mut out = Vec::new();
    for n in nodes {
        for r in n.report.iter().flat_map(|r| r.refusals.iter()) {
            if r.pod.starts_with(&prefix) && r.policies.iter().any(|x| x == name) {
                out.push(Refusal {
                    node: n.name.clone(),
                    refusal: r.clone(),
                });
            }
        }
    }
    out
}

fn condition(
    old: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message: clamp(&message, 1024),
        observed_generation: generation,
        last_transition_time: since,
    }
}

fn clamp(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The policy's status. `old` is its current status (for the conditions' transition times).
pub fn status(
    p: &SecurityPolicy,
    pods: &[PodView],
    nodes: &[NodeView],
    old: Option<&SecurityPolicyStatus>,
    now: &Time,
) -> SecurityPolicyStatus {
    let (ns, name) = names(p);
    let generation = p.metadata.generation;
    let old_conditions = old.map(|o| o.conditions.as_slice()).unwrap_or_default();
    let mut per_node: Vec<NodeAbi> = Vec::new();
    let mut enforcing = 0;
    let mut not_applied: Vec<String> = Vec::new();
    let mut dropped: Vec<String> = Vec::new();
    for n in nodes {
        let Some(r) = &n.report else { continue };
        let mine: Vec<_> = r
            .sets
            .iter()
            .filter(|s| s.namespace == ns && s.policies.iter().any(|x| x == name))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let enforced: u32 = mine.iter().map(|s| s.enforced).sum();
        if enforced > 0 {
            enforcing += 1;
        }
        let own = format!("{ns}/{name}");
        for s in &mine {
            for m in s
                .landlock_not_applied
                .iter()
                .filter(|m| m.starts_with(&format!("{own}:")))
            {
                not_applied.push(format!("node {}: {m}", n.name));
            }
            for d in s
                .dropped_rules
                .iter()
                .filter(|m| m.starts_with(&format!("{own} ")))
            {
                dropped.push(format!("node {}: {d}", n.name));
            }
        }
        per_node.push(NodeAbi {
            node: n.name.clone(),
            landlock_abi: r.landlock_abi,
            enforced_pods: enforced as i32,
        });
    }
    per_node.sort_by(|a, b| a.node.cmp(&b.node));
    per_node.truncate(MAX_NODES);
    let refused = refusals(p, nodes);
    let refused_pods = refused
        .iter()
        .map(|r| r.refusal.pod_uid.as_str())
        .collect::<BTreeSet<_>>()
        .len() as i32;
    let enforced_pods: i32 = per_node.iter().map(|n| n.enforced_pods).sum();
    let mut conditions = vec![if enforcing > 0 {
        condition(
            old_conditions,
            "Enforcing",
            true,
            "Enforced",
            format!("{enforced_pods} pod(s) run under the launcher on {enforcing} node(s)"),
            generation,
            now,
        )
    } else {
        condition(
            old_conditions,
            "Enforcing",
            false,
            "NoPodEnforced",
            "no node reports a pod of this policy running under the launcher".into(),
            generation,
            now,
        )
    }];
    conditions.push(if p.spec.mode == PolicyMode::Audit {
        condition(
            old_conditions,
            "LandlockApplied",
            false,
            "AuditMode",
            "mode audit: Landlock has no permissive mode, so its rules are not applied; seccomp logs what it would deny".into(),
            generation,
            now,
        )
    } else if let Some(first) = not_applied.first() {
        condition(
            old_conditions,
            "LandlockApplied",
            false,
            "NotApplied",
            format!("{first} ({} report(s))", not_applied.len()),
            generation,
            now,
        )
    } else {
        let msg = match dropped.first() {
            Some(d) => format!(
                "applied where enforced; {} rule(s) dropped, e.g. {d}",
                dropped.len()
            ),
            None => "applied where enforced".into(),
        };
        condition(
            old_conditions,
            "LandlockApplied",
            true,
            "Applied",
            msg,
            generation,
            now,
        )
    });
    conditions.push(if refused.is_empty() {
        condition(
            old_conditions,
            "PodsRefused",
            false,
            "NoneRefused",
            "no node reports a refused pod of this policy".into(),
            generation,
            now,
        )
    } else {
        let some: Vec<String> = refused.iter().take(3).map(Refusal::note).collect();
        condition(
            old_conditions,
            "PodsRefused",
            true,
            "Refused",
            format!("{refused_pods} pod(s): {}", some.join("; ")),
            generation,
            now,
        )
    });
    SecurityPolicyStatus {
        observed_generation: generation,
        conditions,
        matched_pods: matched_pods(p, pods),
        nodes_enforcing: enforcing,
        refused_pods,
        nodes: per_node,
    }
}

#[cfg(test)]
mod tests;
