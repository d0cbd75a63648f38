//! The peer/route decision (pure): desired mesh from the Nodes, and the plan from actual to desired.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use kitfleet_dataplane::{PeerConfig, PublicKey};

use super::guard::{Guard, overlaps};
use super::nodes::NodeInfo;

/// A Node, or one of its podCIDRs, left out of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skip {
    pub node: String,
    /// The refused podCIDR; `None` when the whole Node is left out.
    pub prefix: Option<IpNet>,
    pub reason: String,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.prefix {
            Some(p) => write!(f, "{}: podCIDR {p}: {}", self.node, self.reason),
            None => write!(f, "{}: {}", self.node, self.reason),
        }
    }
}

/// What this node's mesh should look like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// One peer per usable other Node, by public key.
    pub peers: BTreeMap<PublicKey, PeerConfig>,
    /// Routes through the WireGuard interface: the peers' podCIDRs.
    pub routes: BTreeSet<IpNet>,
    /// Nodes and podCIDRs left out, with the reason.
    pub skipped: Vec<Skip>,
}

/// What is installed now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actual {
    pub peers: BTreeMap<PublicKey, PeerConfig>,
    pub routes: BTreeSet<IpNet>,
}

/// Steps from actual to desired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub add_peers: Vec<PeerConfig>,
    /// Same key, new endpoint, allowed IPs or keepalive.
    pub update_peers: Vec<PeerConfig>,
    pub remove_peers: Vec<PublicKey>,
    pub add_routes: Vec<IpNet>,
    pub del_routes: Vec<IpNet>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self == &Plan::default()
    }

    pub fn peers_changed(&self) -> bool {
        !(self.add_peers.is_empty() && self.update_peers.is_empty() && self.remove_peers.is_empty())
    }
}

/// Computes the desired mesh for node `own_name` (whose key is `own_key`) from every Node.
/// Nodes are taken in name order; a podCIDR that `guard` refuses (outside the cluster CIDRs, a
/// local address, someone else's route) is left out with its reason; a Node that cannot be a peer
/// is skipped with a reason: no key annotation yet, no endpoint, no usable podCIDR, a key or
/// podCIDR already taken by an earlier Node.
pub fn desired(
    own_name: &str,
    own_key: &PublicKey,
    nodes: &[NodeInfo],
    keepalive: Option<u16>,
    guard: &Guard,
) -> Desired {
    let mut sorted: Vec<&NodeInfo> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut taken: Vec<(IpNet, String)> = sorted
        .iter()
        .filter(|n| n.name == own_name)
        .flat_map(|n| n.pod_cidrs.iter().map(|c| (*c, n.name.clone())))
        .collect();
    let mut out = Desired::default();
    let mut key_owner: BTreeMap<PublicKey, String> = BTreeMap::new();
    for n in sorted.into_iter().filter(|n| n.name != own_name) {
        let skip_node = |out: &mut Desired, reason: String| {
            out.skipped.push(Skip {
                node: n.name.clone(),
                prefix: None,
                reason,
            })
        };
        let mut skip = |reason: String| skip_node(&mut out, reason);
        let Some(key) = n.public_key else {
            skip(format!(
                "no valid {} annotation yet",
                super::nodes::ANNOTATION_PUBLIC_KEY
            ));
            continue;
        };
        if key == *own_key {
            skip("uses this node's own public key".into());
            continue;
        }
        if let Some(other) = key_owner.get(&key) {
            skip(format!("public key already used by node {other}"));
            continue;
        }
        let Some(endpoint) = n.effective_endpoint() else {
            skip("no endpoint annotation and no InternalIP".into());
            continue;
        };
        if n.pod_cidrs.is_empty() {
            skip("no podCIDR".into());
            continue;
        }
        let mut cidrs = Vec::new();
        for c in &n.pod_cidrs {
            match guard.check(c) {
                Ok(()) => cidrs.push(*c),
                Err(why) => out.skipped.push(Skip {
                    node: n.name.clone(),
                    prefix: Some(*c),
                    reason: why.to_string(),
                }),
            }
        }
        if cidrs.is_empty() {
            skip_node(&mut out, "no podCIDR the agent may route".into());
            continue;
        }
        if let Some((c, (_, owner))) = cidrs
            .iter()
            .find_map(|c| taken.iter().find(|(t, _)| overlaps(c, t)).map(|t| (c, t)))
        {
            skip_node(&mut out, format!("podCIDR {c} overlaps node {owner}"));
            continue;
        }
        key_owner.insert(key, n.name.clone());
        taken.extend(cidrs.iter().map(|c| (*c, n.name.clone())));
        out.routes.extend(cidrs.iter().copied());
        out.peers.insert(
            key,
            PeerConfig {
                public_key: key,
                endpoint: Some(endpoint),
                allowed_ips: cidrs,
                persistent_keepalive: keepalive,
            },
        );
    }
    out
}

/// The steps from `actual` to `desired`.
pub fn diff(actual: &Actual, desired: &Desired) -> Plan {
    let mut plan = Plan::default();
    for (k, want) in &desired.peers {
        match actual.peers.get(k) {
            None => plan.add_peers.push(want.clone()),
            Some(have) if have != want => plan.update_peers.push(want.clone()),
            Some(_) => {}
        }
    }
    plan.remove_peers = actual
        .peers
        .keys()
        .filter(|k| !desired.peers.contains_key(k))
        .copied()
        .collect();
    plan.add_routes = desired.routes.difference(&actual.routes).copied().collect();
    plan.del_routes = actual.routes.difference(&desired.routes).copied().collect();
    plan
}

#[cfg(test)]
#[path = "diff_tests.rs"]
mod tests;
