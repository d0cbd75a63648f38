//! The NodeImage KSPP status (`kitfleet_operator::hardening`) against a real kube-apiserver (the `kitfleet-e2e`
//! fixture), running under the chart's operator RBAC. The fixture has no kubelets and no node agents: the test
//! writes each Node's `KitfleetHardened` condition on `nodes/status` as the agents do (strategic merge), and checks
//! `status.hardening` — and that the build controller's server-side apply (field manager `kitfleet-operator`) and
//! the rollout controller's merge patches (`kitfleet-rollout`) and this controller's (`kitfleet-hardening`) leave
//! each other's fields alone.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kitfleet_api::NodeImage;
use kitfleet_api::nodeimage::HardeningStatus;
use kitfleet_e2e::apiserver;
use kitfleet_operator::hardening::{self, HardeningSettings};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;

use common::{NS, eventually};

const POOL: &str = "hd-workers";
const SOURCE: &str = kitfleet_api::kspp::SOURCE_VERSION;

async fn put_node(nodes: &Api<Node>, name: &str, pool: &str) {
    let n = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kitfleet.dev/pool": pool}}});
    nodes
        .patch(
            name,
            &PatchParams::apply("hardening-test").force(),
            &Patch::Apply(&n),
        )
        .await
        .unwrap();
}

/// The condition as the node agent writes it (`node-agent/src/hardening.rs` `publish`: strategic merge of one
/// condition, keyed by type).
async fn put_condition(nodes: &Api<Node>, name: &str, unmet: &[&str]) {
    let total = 17;
    let met = total - unmet.len();
    let (status, reason) = if unmet.is_empty() {
        ("True", "KsppMet")
    } else {
        ("False", "KsppUnmet")
    };
    let mut message = format!("KSPP {SOURCE}: {met}/{total} boot parameters and sysctls met");
    if !unmet.is_empty() {
        message.push_str("; unmet: ");
        message.push_str(&unmet.join(", "));
    }
    let patch = json!({"status": {"conditions": [{
        "type": "KitfleetHardened", "status": status, "reason": reason, "message": message,
        "lastTransitionTime": "2026-11-29T20:00:00Z", "lastHeartbeatTime": "2026-11-29T20:00:00Z"}]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .unwrap();
}

fn nodeimage(name: &str, kspp: &str) -> NodeImage {
    serde_json::from_value(json!({
        "apiVersion": "kitfleet.dev/v1alpha1", "kind": "NodeImage",
        "metadata": {"name": name},
        "spec": {
            "kernel": {"image": "registry.invalid/k:1"}, "init": ["registry.invalid/i:1"],
            "formats": ["kernel+initrd"], "output": {"repository": "registry.invalid/out"},
            "rollout": {"nodeSelector": {"matchLabels": {"kitfleet.dev/pool": POOL}}},
            "hardening": {"kspp": kspp},
        }
    }))
    .unwrap()
}

async fn hardening_of(api: &Api<NodeImage>, name: &str) -> Option<HardeningStatus> {
    api.get(name)
        .await
        .unwrap()
        .status
        .and_then(|s| s.hardening)
}

/// The field managers that own `status.hardening` (not `spec.hardening`, which the creator owns).
async fn hardening_owners(api: &Api<NodeImage>, name: &str) -> Vec<String> {
    let ni = api.get(name).await.unwrap();
    (ni.metadata.managed_fields.iter().flatten())
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:status/f:hardening").is_some())
        })
        .filter_map(|m| m.manager.clone())
        .collect()
}

/// What the build controller applies (`build/controller.rs` `patch_status`: SSA, force, its field manager).
async fn build_controller_applies(api: &Api<NodeImage>, name: &str, reason: &str) {
    let body = json!({"apiVersion": "kitfleet.dev/v1alpha1", "kind": "NodeImage",
        "status": {"observedGeneration": 1, "buildKey": "sha256:abc",
            "conditions": [{"type": "Built", "status": "False", "reason": reason, "message": "",
                            "lastTransitionTime": "2026-11-29T20:00:00Z"}]}});
    api.patch_status(
        name,
        &PatchParams::apply(kitfleet_operator::FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_conditions_become_nodeimage_hardening_status() {
    let Some(api) = apiserver::shared() else {
        return;
    };
    let admin = api.admin_client().await.unwrap();
    common::apply_chart_rbac(&admin).await;
    let client = api
        .service_account_client(NS, "kitfleet-operator")
        .await
        .unwrap();

    let nodes: Api<Node> = Api::all(admin.clone());
    for (n, pool) in [
        ("hd-w1", POOL),
        ("hd-w2", POOL),
        ("hd-w3", POOL),
        ("hd-cp", "hd-control"),
    ] {
        put_node(&nodes, n, pool).await;
    }
    put_condition(&nodes, "hd-w1", &[]).await;
    let unmet = [
        "init_on_alloc (found absent, want init_on_alloc=1)",
        "kernel.kptr_restrict (found 1, want 2)",
    ];
    put_condition(&nodes, "hd-w2", &unmet).await;
    put_condition(
        &nodes,
        "hd-cp",
        &["slab_nomerge (found absent, want slab_nomerge)"],
    )
    .await;

    let nis: Api<NodeImage> = Api::all(admin.clone());
    let pp = PostParams::default();
    nis.create(&pp, &nodeimage("hd-apply", "apply"))
        .await
        .unwrap();
    nis.create(&pp, &nodeimage("hd-off", "off")).await.unwrap();
    build_controller_applies(&nis, "hd-apply", "Building").await;

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let settings = HardeningSettings {
        debounce: Duration::from_millis(100),
        resync: Duration::from_secs(5),
    };
    let ctl = tokio::spawn(async move {
        hardening::run(client, settings, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        })
        .await
    });

    let h = eventually("hd-apply: summary", || async {
        hardening_of(&nis, "hd-apply").await
    })
    .await;
    assert_eq!(h.mode, "apply");
    assert_eq!(
        (
            h.nodes_selected,
            h.nodes_checked,
            h.nodes_meeting,
            h.summary.as_str()
        ),
        (3, 2, 1, "1/3"),
        "{h:?}"
    );
    assert_eq!(h.nodes_unreported, ["hd-w3"]);
    assert_eq!(h.nodes_failing.len(), 1, "{h:?}");
    let w2 = &h.nodes_failing[0];
    assert_eq!(
        (w2.node.as_str(), w2.status.as_str(), w2.reason.as_str()),
        ("hd-w2", "False", "KsppUnmet")
    );
    assert_eq!((w2.met, w2.total), (Some(15), Some(17)));
    assert_eq!(w2.unmet, unmet);
    // The build controller's fields are untouched; only kitfleet-hardening owns status.hardening.
    let st = nis.get("hd-apply").await.unwrap().status.unwrap();
    assert_eq!(st.build_key.as_deref(), Some("sha256:abc"));
    assert_eq!(st.conditions[0].reason, "Building");
    assert_eq!(
        hardening_owners(&nis, "hd-apply").await,
        [hardening::FIELD_MANAGER]
    );
    assert_eq!(
        hardening_of(&nis, "hd-off").await,
        None,
        "kspp off: no summary"
    );

    // The build controller applies again (without hardening) and the rollout controller merge-patches its part:
    // the summary stays as it was.
    build_controller_applies(&nis, "hd-apply", "Built").await;
    nis.patch_status(
        "hd-apply",
        &PatchParams {
            field_manager: Some("kitfleet-rollout".into()),
            ..Default::default()
        },
        &Patch::Merge(json!({"status": {"nodes": {"total": 3, "updated": 0, "inProgress": 0, "failed": 0, "progress": "0/3"}}})),
    )
    .await
    .unwrap();
    let st = nis.get("hd-apply").await.unwrap().status.unwrap();
    assert_eq!(st.hardening.as_ref(), Some(&h), "other writers kept it");
    assert_eq!(st.conditions[0].reason, "Built");
    assert_eq!(st.nodes.map(|n| n.progress).as_deref(), Some("0/3"));

    // Nodes come to meet the profile: 3/3, the lists go away.
    put_condition(&nodes, "hd-w2", &[]).await;
    put_condition(&nodes, "hd-w3", &[]).await;
    let h = eventually("hd-apply: 3/3", || async {
        hardening_of(&nis, "hd-apply")
            .await
            .filter(|h| h.summary == "3/3")
    })
    .await;
    assert!(
        h.nodes_failing.is_empty() && h.nodes_unreported.is_empty(),
        "{h:?}"
    );
    // A node leaves the pool: 2/2.
    put_node(&nodes, "hd-w3", "hd-control").await;
    eventually("hd-apply: 2/2", || async {
        hardening_of(&nis, "hd-apply")
            .await
            .filter(|h| h.summary == "2/2")
    })
    .await;

    // kspp: off removes the summary and nothing else.
    nis.patch(
        "hd-apply",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"hardening": {"kspp": "off"}}})),
    )
    .await
    .unwrap();
    eventually("hd-apply: summary removed", || async {
        hardening_of(&nis, "hd-apply").await.is_none().then_some(())
    })
    .await;
    let st = nis.get("hd-apply").await.unwrap().status.unwrap();
    assert_eq!(st.build_key.as_deref(), Some("sha256:abc"));
    assert_eq!(st.nodes.map(|n| n.progress).as_deref(), Some("0/3"));
    assert!(hardening_owners(&nis, "hd-apply").await.is_empty());

    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(10), ctl)
        .await
        .expect("the controller stops")
        .unwrap();
}
