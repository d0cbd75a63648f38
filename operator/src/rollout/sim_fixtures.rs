//! Fixtures of the simulated cluster: a NodeImage with a published artifact, worker nodes, their pods, timings.

use k8s_openapi::api::core::v1::{
    Node, NodeCondition, NodeStatus, Pod, PodCondition, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kitfleet_api::constants::ANNOTATION_BOOTED_BUILD_KEY;
use kitfleet_api::nodeimage::{ArtifactStatus, NodeImageSpec, RolloutSpec};
use kitfleet_api::{NodeImage, NodeImageStatus};

use super::sim::Timings;

/// Label of the nodes a simulated rollout selects.
pub const POOL: (&str, &str) = ("kitfleet.dev/pool", "workers");
/// The build key rolled out, and the one the nodes run before.
pub const KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
pub const OLD: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A NodeImage whose artifact for [`KEY`] is published, rolling onto the pool.
pub fn nodeimage(name: &str, max_unavailable: IntOrString) -> NodeImage {
    let selector = LabelSelector {
        match_labels: Some([(POOL.0.to_string(), POOL.1.to_string())].into()),
        ..Default::default()
    };
    let rollout = RolloutSpec {
        node_selector: Some(selector),
        max_unavailable,
        ..Default::default()
    };
    let mut ni = NodeImage::new(
        name,
        NodeImageSpec {
            rollout: Some(rollout),
            ..Default::default()
        },
    );
    ni.status = Some(NodeImageStatus {
        build_key: Some(format!("sha256:{KEY}")),
        artifact: Some(ArtifactStatus {
            reference: format!("127.0.0.1:5000/nodes:bk-{KEY}@sha256:aaaa"),
            digest: "sha256:aaaa".into(),
            short_digest: "aaaa".into(),
            formats: vec![],
        }),
        ..Default::default()
    });
    ni
}

/// [`nodeimage`] whose health gate also waits for the agent pods.
pub fn rollout_ni(max_unavailable: IntOrString) -> NodeImage {
    let mut ni = nodeimage("ni-a", max_unavailable);
    let sel = LabelSelector {
        match_labels: Some([("app".to_string(), "agent".to_string())].into()),
        ..Default::default()
    };
    if let Some(r) = ni.spec.rollout.as_mut() {
        r.health_check.pod_selector = Some(sel);
    }
    ni
}

/// `n` workers, each with an agent (DaemonSet) pod and a web (ReplicaSet) pod.
pub fn cluster(n: usize) -> (Vec<Node>, Vec<Pod>) {
    let names: Vec<String> = (0..n).map(|i| format!("n{i:04}")).collect();
    let nodes = names.iter().map(|n| node(n, OLD)).collect();
    let pods = names
        .iter()
        .flat_map(|n| {
            [
                pod(
                    "kube-system",
                    &format!("agent-{n}"),
                    n,
                    Some("DaemonSet"),
                    &[("app", "agent")],
                ),
                pod(
                    "app",
                    &format!("web-{n}"),
                    n,
                    Some("ReplicaSet"),
                    &[("app", "web")],
                ),
            ]
        })
        .collect();
    (nodes, pods)
}

/// Pulls of 20–60 s, evictions of 1–10 s, restarts of 30–90 s, pods Ready 1–5 s after the node.
pub fn timings() -> Timings {
    Timings {
        stage: (20, 60),
        evict: (1, 10),
        reboot: (30, 90),
        pod_ready: (1, 5),
    }
}

/// A Ready worker node that booted `booted`.
pub fn node(name: &str, booted: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(POOL.0.to_string(), POOL.1.to_string())].into()),
            annotations: Some(
                [(ANNOTATION_BOOTED_BUILD_KEY.to_string(), booted.to_string())].into(),
            ),
            ..Default::default()
        },
        spec: Some(Default::default()),
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// A Ready pod on `node`, owned by a controller of `kind` (none: unmanaged).
pub fn pod(ns: &str, name: &str, node: &str, kind: Option<&str>, labels: &[(&str, &str)]) -> Pod {
    let owner = kind.map(|k| OwnerReference {
        kind: k.into(),
        name: format!("{name}-owner"),
        controller: Some(true),
        ..Default::default()
    });
    Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

pub fn set_ready(conds: &mut Option<Vec<impl ReadyCond>>, ready: bool) {
    for c in conds.iter_mut().flatten() {
        c.set(ready);
    }
}

/// A `Ready` condition of a Node or a Pod.
pub trait ReadyCond {
    fn set(&mut self, ready: bool);
}
impl ReadyCond for NodeCondition {
    fn set(&mut self, ready: bool) {
        if self.type_ == "Ready" {
            self.status = if ready { "True" } else { "False" }.into();
        }
    }
}
impl ReadyCond for PodCondition {
    fn set(&mut self, ready: bool) {
        if self.type_ == "Ready" {
            self.status = if ready { "True" } else { "False" }.into();
        }
    }
}
