//! Issue 12, item 2: a node agent may change only its own Node, and there only `agent.kitfleet.dev/` annotations.
//! Against a real kube-apiserver with the chart's node-agent RBAC and ValidatingAdmissionPolicy: agent A's token (bound
//! to a pod on node A, as the DaemonSet's projected token is) first shows the finding under RBAC alone, then, with the
//! policy, cannot change node B (metadata or status) nor the operator's keys on A, and can still publish its own keys
//! and its own Node condition (`KitfleetHardened`), and no other status.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kitfleet_api::constants::{
    AGENT_ANNOTATION_PREFIX, ANNOTATION_ROLLOUT_STATE, ANNOTATION_WG_ENDPOINT,
    ANNOTATION_WG_PUBLIC_KEY, CONDITION_KITFLEET_HARDENED, NODE_AGENT_FIELD_MANAGER,
    OPERATOR_ANNOTATION_PREFIX,
};
use kitfleet_e2e::apiserver::{self, apply, describe, helm_template};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const NS: &str = "kitfleet-system";
const SA: &str = "kitfleet-node-agent";

fn node(name: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {
            ANNOTATION_WG_PUBLIC_KEY: format!("key-of-{name}"),
            ANNOTATION_WG_ENDPOINT: "192.0.2.1:51820",
            ANNOTATION_ROLLOUT_STATE: "Pending",
        }},
        "spec": {"podCIDR": "10.244.1.0/24"},
    }))
    .unwrap()
}

fn agent_pod(name: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS},
        "spec": {"nodeName": node, "serviceAccountName": SA,
                 "containers": [{"name": "mesh", "image": "kitfleet/kitfleet:test"}]},
    }))
    .unwrap()
}

fn annotate(key: &str, value: &str) -> Patch<Value> {
    Patch::Merge(json!({"metadata": {"annotations": {key: value}}}))
}

/// The apiserver's refusal, or a panic naming what was allowed.
fn denied<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>) -> String {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => s.message,
        other => panic!("{what}: must be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn a_node_agent_changes_only_its_own_node_and_its_own_keys() {
    let Some(api) = apiserver::shared() else {
        return;
    };
    if std::process::Command::new("helm")
        .arg("version")
        .output()
        .is_err()
    {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "helm is not installed"
        );
        eprintln!("skipping: helm is not installed (run scripts/setup.sh)");
        return;
    }
    assert_eq!(AGENT_ANNOTATION_PREFIX, "agent.kitfleet.dev/");
    assert_eq!(OPERATOR_ANNOTATION_PREFIX, "operator.kitfleet.dev/");
    for key in [ANNOTATION_WG_PUBLIC_KEY, ANNOTATION_WG_ENDPOINT] {
        assert!(key.starts_with(AGENT_ANNOTATION_PREFIX), "{key}");
    }
    assert!(ANNOTATION_ROLLOUT_STATE.starts_with(OPERATOR_ANNOTATION_PREFIX));

    let admin = api.admin_client().await.unwrap();
    apiserver::ensure_namespace(&admin, NS).await.unwrap();
    let chart = helm_template(&["nodeAgent.clusterCIDRs={10.244.0.0/16}"]).unwrap();
    let pick = |kinds: &[&str]| -> Vec<Value> {
        chart
            .iter()
            .filter(|d| {
                kinds.contains(&d["kind"].as_str().unwrap_or_default())
                    && d["metadata"]["name"] == "kitfleet-node-agent"
            })
            .cloned()
            .collect()
    };
    let rbac = pick(&["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]);
    let policy = pick(&[
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]);
    assert_eq!(
        rbac.len(),
        3,
        "{:?}",
        rbac.iter().map(describe).collect::<Vec<_>>()
    );
    assert_eq!(
        policy.len(),
        2,
        "the chart's node-agent policy and its binding"
    );
    for obj in &rbac {
        apply(&admin, obj).await.unwrap();
    }

    let nodes: Api<Node> = Api::all(admin.clone());
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    for n in ["node-a", "node-b"] {
        nodes
            .create(&PostParams::default(), &node(n))
            .await
            .unwrap();
    }
    pods.create(&PostParams::default(), &agent_pod("agent-a", "node-a"))
        .await
        .unwrap();
    let agent_a: Api<Node> = Api::all(api.pod_bound_client(NS, SA, "agent-a").await.unwrap());

    // The finding, under the chart's RBAC alone: agent A rewrites node B's WireGuard key.
    agent_a
        .patch(
            "node-b",
            &PatchParams::default(),
            &annotate(ANNOTATION_WG_PUBLIC_KEY, "hijacked"),
        )
        .await
        .expect("without the policy, RBAC lets any agent patch any Node");
    nodes
        .patch(
            "node-b",
            &PatchParams::default(),
            &annotate(ANNOTATION_WG_PUBLIC_KEY, "key-of-node-b"),
        )
        .await
        .unwrap();

    for obj in &policy {
        apply(&admin, obj).await.unwrap();
    }
    // A new policy takes effect once the apiserver has loaded it: probe without writing (dry run).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = agent_a
            .patch(
                "node-b",
                &PatchParams {
                    dry_run: true,
                    ..Default::default()
                },
                &annotate(ANNOTATION_WG_PUBLIC_KEY, "probe"),
            )
            .await;
        if matches!(&probe, Err(kube::Error::Api(s)) if s.code == 403) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the policy never took effect: {probe:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Node B: neither its metadata nor its status.
    let msg = denied(
        "agent A patching node B's key",
        agent_a
            .patch(
                "node-b",
                &PatchParams::default(),
                &annotate(ANNOTATION_WG_PUBLIC_KEY, "hijacked"),
            )
            .await,
    );
    assert!(
        msg.contains("the node agent of node-a may not change Node node-b"),
        "{msg}"
    );
    denied(
        "agent A patching node B's status",
        agent_a
            .patch_status("node-b", &PatchParams::default(), &Patch::Merge(json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.66"}]}})))
            .await,
    );
    denied(
        "agent A deleting node B",
        agent_a.delete("node-b", &Default::default()).await,
    );

    // Node A: not the operator's keys, labels, spec or status.
    let msg = denied(
        "agent A writing an operator key on node A",
        agent_a
            .patch(
                "node-a",
                &PatchParams::default(),
                &annotate(ANNOTATION_ROLLOUT_STATE, "Done"),
            )
            .await,
    );
    assert!(
        msg.contains("only agent.kitfleet.dev/ annotations"),
        "{msg}"
    );
    denied(
        "agent A removing an operator key on node A",
        agent_a
            .patch(
                "node-a",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {ANNOTATION_ROLLOUT_STATE: null}}}),
                ),
            )
            .await,
    );
    denied(
        "agent A labelling node A",
        agent_a
            .patch(
                "node-a",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"kitfleet.dev/pool": "x"}}})),
            )
            .await,
    );
    denied(
        "agent A changing node A's podCIDR",
        agent_a
            .patch(
                "node-a",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"unschedulable": true}})),
            )
            .await,
    );
    let msg = denied(
        "agent A changing node A's status",
        agent_a
            .patch_status("node-a", &PatchParams::default(), &Patch::Merge(json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.66"}]}})))
            .await,
    );
    assert!(msg.contains("only its KitfleetHardened condition"), "{msg}");
    let condition = |type_: &str| {
        Patch::Strategic(json!({"status": {"conditions": [{
            "type": type_, "status": "False", "reason": "KsppUnmet",
            "message": "KSPP: 20/26 met; unmet: init_on_free (found absent, want init_on_free=1)",
            "lastTransitionTime": "2026-11-29T20:00:00Z"}]}}))
    };
    let msg = denied(
        "agent A writing node A's Ready condition",
        agent_a
            .patch_status("node-a", &PatchParams::default(), &condition("Ready"))
            .await,
    );
    assert!(msg.contains("only its KitfleetHardened condition"), "{msg}");
    denied(
        "agent A writing node B's KitfleetHardened condition",
        agent_a
            .patch_status(
                "node-b",
                &PatchParams::default(),
                &condition(CONDITION_KITFLEET_HARDENED),
            )
            .await,
    );
    // What the agent does (node-agent/src/hardening.rs): its own condition on its own Node.
    agent_a
        .patch_status(
            "node-a",
            &PatchParams::default(),
            &condition(CONDITION_KITFLEET_HARDENED),
        )
        .await
        .expect("agent A reports its KitfleetHardened condition");
    let a = nodes.get_status("node-a").await.unwrap();
    let conds = a.status.unwrap().conditions.unwrap_or_default();
    assert_eq!(
        conds
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str()))
            .collect::<Vec<_>>(),
        vec![(CONDITION_KITFLEET_HARDENED, "False")]
    );

    // A token without the node claim (not bound to a pod) may change nothing, not even agent keys.
    let unbound: Api<Node> = Api::all(api.service_account_client(NS, SA).await.unwrap());
    let msg = denied(
        "an unbound agent token",
        unbound
            .patch(
                "node-a",
                &PatchParams::default(),
                &annotate(ANNOTATION_WG_ENDPOINT, "192.0.2.9:51820"),
            )
            .await,
    );
    assert!(msg.contains("no node claim"), "{msg}");

    // What the agent does: server-side apply of its own keys on its own Node.
    let publish = Patch::Apply(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "annotations": {
            ANNOTATION_WG_PUBLIC_KEY: "new-key-of-a", ANNOTATION_WG_ENDPOINT: "192.0.2.10:51820"}},
    }));
    agent_a
        .patch(
            "node-a",
            &PatchParams::apply(NODE_AGENT_FIELD_MANAGER).force(),
            &publish,
        )
        .await
        .expect("agent A publishes its own keys");

    let a = nodes.get("node-a").await.unwrap();
    let b = nodes.get("node-b").await.unwrap();
    let ann = |n: &Node, k: &str| n.metadata.annotations.as_ref().unwrap()[k].clone();
    assert_eq!(ann(&a, ANNOTATION_WG_PUBLIC_KEY), "new-key-of-a");
    assert_eq!(ann(&a, ANNOTATION_WG_ENDPOINT), "192.0.2.10:51820");
    assert_eq!(ann(&a, ANNOTATION_ROLLOUT_STATE), "Pending");
    assert_eq!(ann(&b, ANNOTATION_WG_PUBLIC_KEY), "key-of-node-b");
    assert!(
        !a.metadata
            .labels
            .unwrap_or_default()
            .contains_key("kitfleet.dev/pool")
    );
}
