use super::*;
use kitfleet_api::security::{PolicySetOutcome, SandboxCounts};
use serde_json::json;

fn policy(name: &str, mode: &str, selector: serde_json::Value) -> SecurityPolicy {
    serde_json::from_value(json!({
        "apiVersion": "kitfleet.dev/v1alpha1", "kind": "SecurityPolicy",
        "metadata": {"name": name, "namespace": "shop", "generation": 3, "uid": "u1"},
        "spec": {"podSelector": selector, "mode": mode}
    }))
    .unwrap()
}

fn pod(ns: &str, app: &str, live: bool) -> PodView {
    PodView {
        namespace: ns.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        live,
    }
}

fn set(policies: &[&str], volumes: u32, enforced: u32) -> PolicySetOutcome {
    PolicySetOutcome {
        namespace: "shop".into(),
        policies: policies.iter().map(|s| s.to_string()).collect(),
        set_hash: "h".into(),
        volumes,
        enforced,
        refused: volumes - enforced,
        ..Default::default()
    }
}

fn node(name: &str, abi: u32, sets: Vec<PolicySetOutcome>, refusals: Vec<PodRefusal>) -> NodeView {
    NodeView {
        name: name.into(),
        report: Some(NodeSandboxReport {
            landlock_abi: abi,
            counts: SandboxCounts::default(),
            sets,
            refusals,
            ..Default::default()
        }),
    }
}

fn refusal(pod: &str, policies: &[&str], reason: &str) -> PodRefusal {
    PodRefusal {
        pod: pod.into(),
        pod_uid: format!("uid-{pod}"),
        policies: policies.iter().map(|s| s.to_string()).collect(),
        stage: "launch".into(),
        reason: reason.into(),
    }
}

fn t(s: &str) -> Time {
    Time(s.parse().unwrap())
}

fn cond<'a>(s: &'a SecurityPolicyStatus, t: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap()
}

#[test]
fn counts_matched_pods_enforcing_nodes_and_abis() {
    let p = policy("web", "enforce", json!({"matchLabels": {"app": "web"}}));
    let pods = vec![
        pod("shop", "web", true),
        pod("shop", "web", true),
        pod("shop", "web", false),
        pod("shop", "db", true),
        pod("other", "web", true),
    ];
    let nodes = vec![
        node("w2", 6, vec![set(&["web"], 1, 1)], vec![]),
        node(
            "w1",
            7,
            vec![set(&["extra", "web"], 2, 1), set(&["web2"], 4, 4)],
            vec![],
        ),
        node("cp", 7, vec![], vec![]),
        NodeView {
            name: "old".into(),
            report: None,
        },
    ];
    let s = status(&p, &pods, &nodes, None, &t("2026-11-29T20:00:00Z"));
    assert_eq!(s.matched_pods, 2);
    assert_eq!(s.nodes_enforcing, 2);
    assert_eq!(s.refused_pods, 0);
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(
        s.nodes,
        vec![
            NodeAbi {
                node: "w1".into(),
                landlock_abi: 7,
                enforced_pods: 1
            },
            NodeAbi {
                node: "w2".into(),
                landlock_abi: 6,
                enforced_pods: 1
            },
        ]
    );
    assert_eq!(cond(&s, "Enforcing").status, "True");
    assert_eq!(
        cond(&s, "Enforcing").message,
        "2 pod(s) run under the launcher on 2 node(s)"
    );
    assert_eq!(cond(&s, "LandlockApplied").reason, "Applied");
    assert_eq!(cond(&s, "PodsRefused").status, "False");
}

#[test]
fn refusals_name_the_pod_node_and_reason_and_only_this_policys_pods() {
    let p = policy("web", "enforce", json!({}));
    let nodes = vec![node(
        "w1",
        7,
        vec![set(&["web"], 2, 0)],
        vec![
            refusal(
                "shop/a",
                &["web"],
                "policy shop/web: spec.landlock.minAbi is 99 but this kernel offers Landlock ABI 7",
            ),
            refusal("shop/b", &["webby"], "not mine"),
            refusal("other/c", &["web"], "other namespace"),
        ],
    )];
    let r = refusals(&p, &nodes);
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].note(),
        "pod shop/a on node w1 was refused (launch): policy shop/web: spec.landlock.minAbi is 99 but this kernel offers Landlock ABI 7"
    );
    let s = status(&p, &[], &nodes, None, &t("2026-11-29T20:00:00Z"));
    assert_eq!(s.refused_pods, 1);
    assert_eq!(s.nodes_enforcing, 0);
    assert_eq!(cond(&s, "Enforcing").reason, "NoPodEnforced");
    let c = cond(&s, "PodsRefused");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Refused"));
    assert!(c.message.contains("minAbi is 99"), "{}", c.message);
}

#[test]
fn audit_says_landlock_is_not_applied_and_reports_count_too() {
    let audit = policy("aud", "audit", json!({}));
    let s = status(&audit, &[], &[], None, &t("2026-11-29T20:00:00Z"));
    let c = cond(&s, "LandlockApplied");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "AuditMode")
    );
    let p = policy("web", "enforce", json!({}));
    let mut st = set(&["web"], 1, 1);
    st.landlock_not_applied = vec![
        "shop/web: this kernel has no Landlock".into(),
        "shop/webby: x".into(),
    ];
    st.dropped_rules = vec!["shop/web spec.landlock.filesystem[0] /data: missing".into()];
    let s = status(
        &p,
        &[],
        &[node("w1", 0, vec![st], vec![])],
        None,
        &t("2026-11-29T20:00:00Z"),
    );
    let c = cond(&s, "LandlockApplied");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "NotApplied")
    );
    assert_eq!(
        c.message,
        "node w1: shop/web: this kernel has no Landlock (1 report(s))"
    );
}

#[test]
fn transition_times_stay_while_the_status_stays() {
    let p = policy("web", "enforce", json!({}));
    let nodes = vec![node("w1", 7, vec![set(&["web"], 1, 1)], vec![])];
    let first = status(&p, &[], &nodes, None, &t("2026-11-29T20:00:00Z"));
    let again = status(&p, &[], &nodes, Some(&first), &t("2026-11-29T21:00:00Z"));
    assert_eq!(first, again, "a no-op recompute changes nothing");
    let gone = status(&p, &[], &[], Some(&first), &t("2026-11-29T21:00:00Z"));
    assert_eq!(
        cond(&gone, "Enforcing").last_transition_time,
        t("2026-11-29T21:00:00Z")
    );
    assert_eq!(
        cond(&gone, "PodsRefused").last_transition_time,
        t("2026-11-29T20:00:00Z")
    );
}

#[test]
fn an_invalid_selector_matches_no_pod() {
    let p = policy(
        "bad",
        "enforce",
        json!({"matchExpressions": [{"key": "app", "operator": "Bogus", "values": ["web"]}]}),
    );
    assert_eq!(matched_pods(&p, &[pod("shop", "web", true)]), 0);
}
