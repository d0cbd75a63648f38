//! The summary, table-driven: selection, each kind of node (met, unmet, unknown, unreported), `off`, no selector,
//! the bounds, and the agent's message read back.

use super::summary::{MAX_LISTED, NodeView, met_total, summarize, unmet_items};
use super::*;
use k8s_openapi::api::core::v1::NodeCondition;
use kitfleet_api::NodeImageSpec;

const SOURCE: &str =
    "linux hardening.config 006eac3fe20f/215199e3d9f3 (v6.6-v6.10); kspp.github.io 058b262fdf51";

fn spec(extra: serde_json::Value) -> NodeImageSpec {
    let mut v = serde_json::json!({
        "kernel": {"image": "r/k:1"}, "init": ["r/i:1"], "formats": ["kernel+initrd"],
        "output": {"repository": "r/out"},
        "rollout": {"nodeSelector": {"matchLabels": {"pool": "workers"}}},
    });
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    serde_json::from_value(v).unwrap()
}

fn cond(status: &str, reason: &str, message: &str) -> Option<NodeCondition> {
    Some(NodeCondition {
        type_: CONDITION_KITFLEET_HARDENED.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        ..Default::default()
    })
}

fn node(name: &str, pool: &str, c: Option<NodeCondition>) -> NodeView {
    NodeView {
        name: name.into(),
        labels: [("pool".to_string(), pool.to_string())].into(),
        condition: c,
    }
}

fn met(n: u32) -> Option<NodeCondition> {
    cond(
        "True",
        "KsppMet",
        &format!("KSPP {SOURCE}: {n}/{n} boot parameters and sysctls met"),
    )
}

fn unmet() -> Option<NodeCondition> {
    cond(
        "False",
        "KsppUnmet",
        &format!(
            "KSPP {SOURCE}: 14/17 boot parameters and sysctls met, lockdown none; unmet: init_on_alloc (found \
             absent, want init_on_alloc=1), lockdown (found none, want integrity), kernel.kptr_restrict (found 1, want 2)"
        ),
    )
}

#[test]
fn summary_counts_the_selected_nodes_only() {
    let nodes = vec![
        node("w-2", "workers", unmet()),
        node("w-1", "workers", met(17)),
        node("w-3", "workers", None),
        node("cp", "control", unmet()),
        node("w-4", "workers", cond("Unknown", "NotChecked", "")),
    ];
    let s = summarize(&spec(serde_json::json!({})), &nodes).unwrap();
    assert_eq!(s.mode, "audit", "an absent hardening is audit");
    assert_eq!(
        (s.nodes_selected, s.nodes_checked, s.nodes_meeting),
        (4, 3, 1)
    );
    assert_eq!(s.summary, "1/4");
    assert_eq!(s.nodes_unreported, ["w-3"]);
    let failing: Vec<(&str, &str, &str)> = s
        .nodes_failing
        .iter()
        .map(|f| (f.node.as_str(), f.status.as_str(), f.reason.as_str()))
        .collect();
    assert_eq!(
        failing,
        [
            ("w-2", "False", "KsppUnmet"),
            ("w-4", "Unknown", "NotChecked")
        ],
        "sorted by node"
    );
    let w2 = &s.nodes_failing[0];
    assert_eq!((w2.met, w2.total), (Some(14), Some(17)));
    assert_eq!(
        w2.unmet,
        [
            "init_on_alloc (found absent, want init_on_alloc=1)",
            "lockdown (found none, want integrity)",
            "kernel.kptr_restrict (found 1, want 2)",
        ]
    );
    assert_eq!(
        (s.nodes_failing[1].met, s.nodes_failing[1].unmet.len()),
        (None, 0)
    );
}

#[test]
fn summary_modes_and_selectors() {
    let nodes = vec![node("w-1", "workers", met(17))];
    for (mode, want) in [
        ("audit", "audit"),
        ("apply", "apply"),
        ("enforce", "enforce"),
    ] {
        let s = summarize(
            &spec(serde_json::json!({"hardening": {"kspp": mode}})),
            &nodes,
        )
        .unwrap();
        assert_eq!((s.mode.as_str(), s.summary.as_str()), (want, "1/1"));
    }
    assert_eq!(
        summarize(
            &spec(serde_json::json!({"hardening": {"kspp": "off"}})),
            &nodes
        ),
        None,
        "off: no summary"
    );
    let mut no_rollout = spec(serde_json::json!({}));
    no_rollout.rollout = None;
    assert_eq!(summarize(&no_rollout, &nodes), None, "no rollout");
    let mut no_selector = spec(serde_json::json!({}));
    no_selector.rollout.as_mut().unwrap().node_selector = None;
    assert_eq!(summarize(&no_selector, &nodes), None, "no selector");
    let bad = spec(
        serde_json::json!({"rollout": {"nodeSelector": {"matchExpressions": [
        {"key": "pool", "operator": "Bogus", "values": ["x"]}]}}}),
    );
    assert_eq!(summarize(&bad, &nodes), None, "unreadable selector");
    let none = summarize(&spec(serde_json::json!({})), &[]).unwrap();
    assert_eq!(
        (none.nodes_selected, none.summary.as_str()),
        (0, "0/0"),
        "a selector matching nothing still says so"
    );
}

#[test]
fn summary_lists_are_bounded() {
    let nodes: Vec<NodeView> = (0..100)
        .map(|i| {
            node(
                &format!("w-{i:03}"),
                "workers",
                if i % 2 == 0 { unmet() } else { None },
            )
        })
        .collect();
    let s = summarize(&spec(serde_json::json!({})), &nodes).unwrap();
    assert_eq!((s.nodes_selected, s.nodes_checked), (100, 50));
    assert_eq!(s.nodes_failing.len(), MAX_LISTED);
    assert_eq!(s.nodes_unreported.len(), MAX_LISTED);
    assert_eq!(s.summary, "0/100");
}

#[test]
fn the_agents_message_is_read_back() {
    assert_eq!(
        met_total(&format!(
            "KSPP {SOURCE}: 9/17 boot parameters and sysctls met; unmet: a (found 1, want 2)"
        )),
        Some((9, 17))
    );
    assert_eq!(met_total("something else"), None);
    assert_eq!(
        unmet_items(
            "KSPP x: 1/4 boot parameters and sysctls met; unmet: a (found x, want y), b (found (1, 2), want 3) … and 2 more"
        ),
        ["a (found x, want y)", "b (found (1, 2), want 3)"]
    );
    assert_eq!(
        unmet_items("KSPP x: 4/4 boot parameters and sysctls met"),
        Vec::<String>::new()
    );
    // A message without a list is kept as it is.
    let s = summarize(
        &spec(serde_json::json!({})),
        &[node("w", "workers", cond("False", "Other", "no list here"))],
    )
    .unwrap();
    assert_eq!(s.nodes_failing[0].unmet, ["no list here"]);
}

#[test]
fn nodes_are_trimmed_to_labels_and_the_condition() {
    let mut n: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "w", "labels": {"pool": "workers"}, "annotations": {"a": "b"},
                     "managedFields": [{"manager": "kubelet"}]},
        "spec": {"podCIDR": "10.0.0.0/24"},
        "status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "KitfleetHardened", "status": "False", "reason": "KsppUnmet", "message": "m"}],
            "images": [{"names": ["x"], "sizeBytes": 1}]}
    }))
    .unwrap();
    trim_node(&mut n);
    let v = serde_json::to_value(&n).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "w", "labels": {"pool": "workers"}},
            "status": {"conditions": [{"type": "KitfleetHardened", "status": "False", "reason": "KsppUnmet", "message": "m"}]}})
    );
    let view = node_view(&n);
    assert_eq!(view.condition.unwrap().reason.as_deref(), Some("KsppUnmet"));
}

#[test]
fn the_build_controller_leaves_hardening_out() {
    let s = NodeImageStatus {
        build_key: Some("k".into()),
        hardening: Some(HardeningStatus::default()),
        ..Default::default()
    };
    let out = without_hardening(&s);
    assert_eq!(out.hardening, None);
    assert_eq!(out.build_key.as_deref(), Some("k"));
    assert!(
        serde_json::to_value(&out)
            .unwrap()
            .get("hardening")
            .is_none()
    );
}
