//! The SecurityPolicy status controller against a real kube-apiserver (the `kitfleet-e2e` fixture), running under
//! the chart's operator RBAC. The fixture has no kubelets and no node agents: the test creates Nodes carrying sandbox
//! reports (annotation `agent.kitfleet.dev/sandbox-report`, as the agents write them) and Pods, and asserts on the
//! stored status and Events.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use kitfleet_api::SecurityPolicy;
use kitfleet_api::constants::ANNOTATION_SANDBOX_REPORT;
use kitfleet_api::security::{
    NodeSandboxReport, PodRefusal, PolicySetOutcome, SecurityPolicyStatus,
};
use kitfleet_e2e::apiserver;
use kitfleet_operator::policy::{self, PolicySettings};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;

use common::{NS, eventually};

const SHOP: &str = "ps-shop";

fn policy(name: &str, spec: serde_json::Value) -> SecurityPolicy {
    serde_json::from_value(json!({
        "apiVersion": "kitfleet.dev/v1alpha1", "kind": "SecurityPolicy",
        "metadata": {"name": name, "namespace": SHOP},
        "spec": spec
    }))
    .unwrap()
}

fn set(policies: &[&str], volumes: u32, enforced: u32) -> PolicySetOutcome {
    PolicySetOutcome {
        namespace: SHOP.into(),
        policies: policies.iter().map(|s| s.to_string()).collect(),
        set_hash: format!("{:0>64}", policies.join("")),
        volumes,
        enforced,
        refused: volumes - enforced,
        ..Default::default()
    }
}

fn report(abi: u32, sets: Vec<PolicySetOutcome>, refusals: Vec<PodRefusal>) -> String {
    serde_json::to_string(&NodeSandboxReport {
        landlock_abi: abi,
        sets,
        refusals,
        ..Default::default()
    })
    .unwrap()
}

async fn put_node(nodes: &Api<Node>, name: &str, report: &str) {
    let n = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {ANNOTATION_SANDBOX_REPORT: report}}});
    nodes
        .patch(
            name,
            &PatchParams::apply("policy-status-test").force(),
            &Patch::Apply(&n),
        )
        .await
        .unwrap();
}

async fn status_of(api: &Api<SecurityPolicy>, name: &str) -> SecurityPolicyStatus {
    api.get(name).await.unwrap().status.unwrap_or_default()
}

fn cond(s: &SecurityPolicyStatus, t: &str) -> Option<(String, String)> {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_reports_become_securitypolicy_status_and_events() {
    let Some(api) = apiserver::shared() else {
        return;
    };
    let admin = api.admin_client().await.unwrap();
    common::apply_chart_rbac(&admin).await;
    apiserver::ensure_service_account(&admin, SHOP, "default")
        .await
        .unwrap();
    let client = api
        .service_account_client(NS, "kitfleet-operator")
        .await
        .unwrap();

    let policies: Api<SecurityPolicy> = Api::namespaced(admin.clone(), SHOP);
    let pp = PostParams::default();
    for p in [
        policy(
            "web",
            json!({"podSelector": {"matchLabels": {"app": "web"}}}),
        ),
        policy(
            "aud",
            json!({"podSelector": {"matchLabels": {"app": "aud"}}, "mode": "audit"}),
        ),
        policy(
            "strict",
            json!({"podSelector": {"matchLabels": {"app": "strict"}}, "landlock": {"minAbi": 99}}),
        ),
    ] {
        policies.create(&pp, &p).await.unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(admin.clone(), SHOP);
    for (name, app) in [
        ("web-1", "web"),
        ("web-2", "web"),
        ("aud-1", "aud"),
        ("strict-1", "strict"),
    ] {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"automountServiceAccountToken": false,
                     "containers": [{"name": "c", "image": "registry.invalid/x:1", "command": ["/x"]}]}
        }))
        .unwrap();
        pods.create(&pp, &p).await.unwrap();
    }
    let nodes: Api<Node> = Api::all(admin.clone());
    let refusal = PodRefusal {
        pod: format!("{SHOP}/strict-1"),
        pod_uid: "uid-strict-1".into(),
        policies: vec!["strict".into()],
        stage: "launch".into(),
        reason: format!(
            "policy {SHOP}/strict: spec.landlock.minAbi is 99 but this kernel offers Landlock ABI 7"
        ),
    };
    put_node(
        &nodes,
        "ps-node-1",
        &report(
            7,
            vec![set(&["web"], 1, 1), set(&["strict"], 1, 0)],
            vec![refusal],
        ),
    )
    .await;
    let mut aud = set(&["aud"], 1, 1);
    aud.landlock_not_applied = vec![format!("{SHOP}/aud: mode audit")];
    put_node(
        &nodes,
        "ps-node-2",
        &report(6, vec![set(&["web"], 1, 1), aud], vec![]),
    )
    .await;
    put_node(&nodes, "ps-node-3", "not json").await;

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let settings = PolicySettings {
        debounce: Duration::from_millis(100),
        resync: Duration::from_secs(5),
    };
    let ctl = tokio::spawn(async move {
        policy::run(client, "test-replica", settings, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        })
        .await
    });

    let web = eventually("web: both nodes enforcing", || async {
        let s = status_of(&policies, "web").await;
        (s.nodes_enforcing == 2).then_some(s)
    })
    .await;
    assert_eq!(web.matched_pods, 2);
    assert_eq!(web.refused_pods, 0);
    let abis: Vec<(String, u32, i32)> = web
        .nodes
        .iter()
        .map(|n| (n.node.clone(), n.landlock_abi, n.enforced_pods))
        .collect();
    assert_eq!(
        abis,
        vec![("ps-node-1".into(), 7, 1), ("ps-node-2".into(), 6, 1)]
    );
    assert_eq!(
        cond(&web, "Enforcing"),
        Some(("True".into(), "Enforced".into()))
    );
    assert_eq!(
        cond(&web, "PodsRefused"),
        Some(("False".into(), "NoneRefused".into()))
    );
    assert_eq!(web.observed_generation, Some(1));

    let a = eventually("aud: status", || async {
        let s = status_of(&policies, "aud").await;
        (s.nodes_enforcing == 1).then_some(s)
    })
    .await;
    assert_eq!(
        cond(&a, "LandlockApplied"),
        Some(("False".into(), "AuditMode".into()))
    );

    let strict = eventually("strict: refused", || async {
        let s = status_of(&policies, "strict").await;
        (s.refused_pods == 1).then_some(s)
    })
    .await;
    assert_eq!(strict.nodes_enforcing, 0);
    assert_eq!(
        cond(&strict, "PodsRefused"),
        Some(("True".into(), "Refused".into()))
    );
    assert_eq!(
        cond(&strict, "Enforcing"),
        Some(("False".into(), "NoPodEnforced".into()))
    );
    let events: Api<Event> = Api::namespaced(admin.clone(), SHOP);
    let ev = eventually("the PodRefused Event", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("PodRefused")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("strict")
            })
    })
    .await;
    let note = ev.note.unwrap_or_default();
    assert!(
        note.contains("pod ps-shop/strict-1 on node ps-node-1") && note.contains("minAbi is 99"),
        "{note}"
    );
    assert_eq!(ev.type_.as_deref(), Some("Warning"));

    // A node stops reporting the policy's pods: one node left enforcing; a new matching pod is counted.
    put_node(&nodes, "ps-node-2", &report(6, vec![], vec![])).await;
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-3", "labels": {"app": "web"}},
        "spec": {"automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "registry.invalid/x:1", "command": ["/x"]}]}
    }))
    .unwrap();
    pods.create(&pp, &p).await.unwrap();
    let web = eventually("web: one node enforcing, 3 pods", || async {
        let s = status_of(&policies, "web").await;
        (s.nodes_enforcing == 1 && s.matched_pods == 3).then_some(s)
    })
    .await;
    assert_eq!(web.nodes.len(), 1);

    // A spec change is observed (observedGeneration follows).
    policies
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mode": "enforce-and-log"}})),
        )
        .await
        .unwrap();
    eventually("observedGeneration 2", || async {
        (status_of(&policies, "web").await.observed_generation == Some(2)).then_some(())
    })
    .await;

    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(10), ctl)
        .await
        .expect("the controller stops")
        .unwrap();
}
