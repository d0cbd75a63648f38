use super::*;
use serde_json::json;

fn rec(vid: &str, pod: &str, set: &str, policies: &[&str]) -> Record {
    Record {
        volume_id: vid.into(),
        target_path: format!("/t/{vid}").into(),
        params: String::new(),
        set_hash: set.into(),
        pod: pod.into(),
        pod_uid: format!("uid-{vid}"),
        policies: policies.iter().map(|s| s.to_string()).collect(),
    }
}

fn out(pod: &str, report: serde_json::Value) -> Outcome {
    Outcome {
        pod: pod.into(),
        report,
    }
}

#[test]
fn counts_enforced_refused_dropped_and_not_applied_per_set() {
    let records = vec![
        rec("v1", "shop/a", "h1", &["web"]),
        rec("v2", "shop/b", "h1", &["web"]),
        rec("v3", "shop/c", "h2", &["audit"]),
        rec("v4", "shop/d", "h1", &["web"]),
    ];
    let mut outcomes = BTreeMap::new();
    outcomes.insert(
        "v1".into(),
        out(
            "shop/a",
            json!({"event": "enforced", "landlockAbi": 7, "landlock": [{"policy": "shop/web", "applied": true,
                "rules": [{"field": "spec.landlock.filesystem[1]", "path": "/data", "status": "dropped",
                           "reason": "missing in the container"},
                          {"field": "spec.landlock.filesystem[0]", "path": "/tmp", "status": "enforced"}]}]}),
        ),
    );
    outcomes.insert(
        "v2".into(),
        out(
            "shop/b",
            json!({"event": "refused", "reason": "policy shop/web: spec.landlock.minAbi is 99 but this kernel offers Landlock ABI 7"}),
        ),
    );
    outcomes.insert(
        "v3".into(),
        out(
            "shop/c",
            json!({"event": "enforced", "landlock": [{"policy": "shop/audit", "applied": false,
                "reason": "mode audit: Landlock has no permissive mode", "rules": []}]}),
        ),
    );
    let failures = vec![PublishFailure {
        pod: "shop/e".into(),
        pod_uid: "uid-e".into(),
        policies: vec!["web".into()],
        reason: "the SecurityPolicy set changed since admission".into(),
    }];
    let r = build(7, &records, &outcomes, &[], &failures, 3);
    assert_eq!(r.landlock_abi, 7);
    assert_eq!(
        (
            r.counts.volumes,
            r.counts.enforced,
            r.counts.refused,
            r.counts.dropped_rules,
            r.counts.publish_failed
        ),
        (4, 2, 1, 1, 3)
    );
    assert_eq!(r.sets.len(), 2);
    let h1 = &r.sets[0];
    assert_eq!(
        (h1.set_hash.as_str(), h1.volumes, h1.enforced, h1.refused),
        ("h1", 3, 1, 1)
    );
    assert_eq!(h1.policies, vec!["web"]);
    assert_eq!(
        h1.dropped_rules,
        vec!["shop/web spec.landlock.filesystem[1] /data: missing in the container"]
    );
    assert!(h1.landlock_not_applied.is_empty());
    let h2 = &r.sets[1];
    assert_eq!(
        h2.landlock_not_applied,
        vec!["shop/audit: mode audit: Landlock has no permissive mode"]
    );
    assert_eq!(r.refusals.len(), 2);
    assert_eq!(
        (r.refusals[0].pod.as_str(), r.refusals[0].stage.as_str()),
        ("shop/b", "launch")
    );
    assert!(r.refusals[0].reason.contains("minAbi is 99"));
    assert_eq!(
        (r.refusals[1].pod.as_str(), r.refusals[1].stage.as_str()),
        ("shop/e", "publish")
    );
    // Round trip through the annotation value.
    let back: NodeSandboxReport = serde_json::from_str(&encode(&r)).unwrap();
    assert_eq!(back, r);
}

#[test]
fn an_empty_node_reports_its_abi_only() {
    let r = build(5, &[], &BTreeMap::new(), &[], &[], 0);
    assert_eq!(
        encode(&r),
        r#"{"landlockAbi":5,"counts":{"volumes":0,"enforced":0,"refused":0,"droppedRules":0,"publishFailed":0}}"#
    );
}

#[test]
fn the_report_stays_bounded() {
    let long = "x".repeat(10_000);
    let records: Vec<Record> = (0..500)
        .map(|i| {
            rec(
                &format!("v{i:03}"),
                &format!("ns{i:03}/p"),
                &format!("h{i:03}"),
                &["p"],
            )
        })
        .collect();
    let mut outcomes = BTreeMap::new();
    for i in 0..500 {
        let rules: Vec<_> = (0..20)
            .map(|j| json!({"field": format!("f{j}"), "path": long, "status": "dropped", "reason": long}))
            .collect();
        outcomes.insert(
            format!("v{i:03}"),
            out("x", json!({"event": "refused", "reason": long, "landlock": [{"policy": "p", "applied": true, "rules": rules}]})),
        );
    }
    let r = build(7, &records, &outcomes, &[], &[], 0);
    assert_eq!(r.sets.len(), NodeSandboxReport::MAX_SETS);
    assert_eq!(r.sets_omitted, 500 - NodeSandboxReport::MAX_SETS as u32);
    assert_eq!(r.refusals.len(), NodeSandboxReport::MAX_REFUSALS);
    assert_eq!(
        r.refusals_omitted,
        500 - NodeSandboxReport::MAX_REFUSALS as u32
    );
    assert!(
        r.sets
            .iter()
            .all(|s| s.dropped_rules.len() <= NodeSandboxReport::MAX_DETAILS)
    );
    assert!(
        r.refusals
            .iter()
            .all(|f| f.reason.len() <= NodeSandboxReport::MAX_TEXT)
    );
    assert_eq!(r.counts.refused, 500);
    let s = encode(&r);
    assert!(s.len() < NodeSandboxReport::MAX_BYTES, "{} bytes", s.len());
    let back: NodeSandboxReport = serde_json::from_str(&s).unwrap();
    assert_eq!(back.counts, r.counts);
    assert_eq!(
        back.sets.len() as u32 + back.sets_omitted,
        500,
        "every set is either in the report or counted"
    );
}

#[test]
fn clipping_keeps_utf8_boundaries() {
    let s = "é".repeat(300);
    let c = clip(&s, 256);
    assert!(c.len() <= 256 && c.ends_with("..."));
}

/// The kubelet unpublishes a terminated pod's volume, often before the next report: the refusal stays in the report
/// (after the current volumes' refusals, before publish failures), and only once per pod.
#[test]
fn a_refusal_outlives_its_volume() {
    let ended = vec![
        EndedRefusal {
            pod: "shop/gone".into(),
            pod_uid: "uid-gone".into(),
            policies: vec!["strict".into()],
            report: json!({"event": "refused", "reason": "policy shop/strict: spec.landlock.minAbi is 99 but this kernel offers Landlock ABI 7"}),
        },
        // A pod whose volume is published again (same uid) is reported from its current volume only.
        EndedRefusal {
            pod: "shop/b".into(),
            pod_uid: "uid-v2".into(),
            policies: vec!["web".into()],
            report: json!({"event": "refused", "reason": "older refusal"}),
        },
        // Only refusals are kept, but an enforced report is ignored even if one slips in.
        EndedRefusal {
            pod: "shop/ok".into(),
            pod_uid: "uid-ok".into(),
            policies: vec!["web".into()],
            report: json!({"event": "enforced"}),
        },
    ];
    let records = vec![rec("v2", "shop/b", "h1", &["web"])];
    let mut outcomes = BTreeMap::new();
    outcomes.insert(
        "v2".into(),
        out(
            "shop/b",
            json!({"event": "refused", "reason": "current refusal"}),
        ),
    );
    let failures = vec![PublishFailure {
        pod: "shop/e".into(),
        pod_uid: "uid-e".into(),
        policies: vec!["web".into()],
        reason: "the SecurityPolicy set changed since admission".into(),
    }];
    let r = build(7, &records, &outcomes, &ended, &failures, 1);
    let got: Vec<(&str, &str, &str)> = r
        .refusals
        .iter()
        .map(|f| (f.pod.as_str(), f.stage.as_str(), f.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("shop/b", "launch", "current refusal"),
            (
                "shop/gone",
                "launch",
                "policy shop/strict: spec.landlock.minAbi is 99 but this kernel offers Landlock ABI 7"
            ),
            (
                "shop/e",
                "publish",
                "the SecurityPolicy set changed since admission"
            ),
        ]
    );
    assert_eq!(r.refusals[1].policies, ["strict"]);
    assert_eq!(r.counts.refused, 1, "counts are of current volumes");
    assert!(is_refusal(&ended[0].report) && !is_refusal(&ended[2].report));
}
