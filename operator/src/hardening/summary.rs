//! The pure half of the KSPP status: which nodes a NodeImage selects, and what their `KitfleetHardened`
//! conditions (written by each node's agent, `node-agent/src/hardening.rs`) add up to.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::NodeCondition;
use kitfleet_api::NodeImageSpec;
use kitfleet_api::nodeimage::{HardeningStatus, KsppMode, NodeHardening};
use kube::core::{Selector, SelectorExt};

/// Most failing (and unreported) nodes named in status.
pub const MAX_LISTED: usize = 32;
/// Most unmet items listed per node.
pub const MAX_UNMET: usize = 32;

/// What the summary needs of a Node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Its `KitfleetHardened` condition, if its agent wrote one.
    pub condition: Option<NodeCondition>,
}

/// The summary for a NodeImage with `spec`: `None` when `hardening.kspp` is `off`, when there is no
/// `rollout.nodeSelector` (no node is the image's), or when the selector cannot be read (`validate` reports it).
pub fn summarize(spec: &NodeImageSpec, nodes: &[NodeView]) -> Option<HardeningStatus> {
    let mode = spec.hardening.as_ref().map(|h| h.kspp).unwrap_or_default();
    if mode == KsppMode::Off {
        return None;
    }
    let selector = spec.rollout.as_ref()?.node_selector.clone()?;
    let selector = Selector::try_from(selector).ok()?;
    let mut selected: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| selector.matches(&n.labels))
        .collect();
    selected.sort_by(|a, b| a.name.cmp(&b.name));
    let mut s = HardeningStatus {
        mode: mode.as_str().to_owned(),
        nodes_selected: count(selected.len()),
        ..Default::default()
    };
    for n in selected {
        let Some(c) = &n.condition else {
            if s.nodes_unreported.len() < MAX_LISTED {
                s.nodes_unreported.push(n.name.clone());
            }
            continue;
        };
        s.nodes_checked += 1;
        if c.status == "True" {
            s.nodes_meeting += 1;
            continue;
        }
        if s.nodes_failing.len() < MAX_LISTED {
            s.nodes_failing.push(failing_node(&n.name, c));
        }
    }
    s.summary = format!("{}/{}", s.nodes_meeting, s.nodes_selected);
    Some(s)
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn failing_node(name: &str, c: &NodeCondition) -> NodeHardening {
    let message = c.message.as_deref().unwrap_or_default();
    let (met, total) = met_total(message).unzip();
    let mut unmet = unmet_items(message);
    if unmet.is_empty() && !message.is_empty() {
        unmet.push(message.to_owned());
    }
    unmet.truncate(MAX_UNMET);
    NodeHardening {
        node: name.to_owned(),
        status: c.status.clone(),
        reason: c.reason.clone().unwrap_or_default(),
        met,
        total,
        unmet,
    }
}

/// The agent's message counts `KSPP <source>: <met>/<total> boot parameters and sysctls met…`.
pub fn met_total(message: &str) -> Option<(i32, i32)> {
    let head = &message[..message.find(" boot parameters and sysctls met")?];
    let (met, total) = head.rsplit(' ').next()?.split_once('/')?;
    Some((met.parse().ok()?, total.parse().ok()?))
}

/// The agent's message ends with `; unmet: a (found x, want y), b (found …, want …)[ … and N more]`: the items,
/// split on the `, ` outside parentheses.
pub fn unmet_items(message: &str) -> Vec<String> {
    const MARK: &str = "; unmet: ";
    let Some(at) = message.find(MARK) else {
        return Vec::new();
    };
    let mut list = &message[at + MARK.len()..];
    if let Some(more) = list.rfind(" … and ")
        && list.ends_with(" more")
    {
        list = &list[..more];
    }
    let mut items = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    let bytes = list.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b',' if depth <= 0 && bytes.get(i + 1) == Some(&b' ') => {
                items.push(list[start..i].trim().to_owned());
                start = i + 2;
            }
            _ => {}
        }
    }
    let last = list[start.min(list.len())..].trim();
    if !last.is_empty() {
        items.push(last.to_owned());
    }
    items.retain(|i| !i.is_empty());
    items
}
