//! Table tests: pause, the window, halt and retry, new build keys, conflicts, wind-down, patches, status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kitfleet_api::constants::*;
use kitfleet_api::nodeimage::MaintenanceWindow;

use super::plan::target_key;
use super::plan_tests::*;
use super::sim::{KEY, OLD, node, pod, write_status};
use super::*;

#[test]
fn pause_and_window_start_nothing_but_finish_nodes_in_progress() {
    let nodes = [
        node("a", OLD),
        at("b", NodeState::Staged, 5),
        at("c", NodeState::Draining, 5),
    ];
    let mut paused = ni("ni-a", IntOrString::Int(3));
    rollout(&mut paused).paused = true;
    let p = run(&paused, &nodes, &[]);
    assert_eq!(acts(&p), ["c → Rebooting"]);
    assert_eq!(cond(&p, "RolledOut").reason, "Paused");
    let mut closed = ni("ni-a", IntOrString::Int(3));
    rollout(&mut closed).window = Some(MaintenanceWindow {
        start: "01:00".into(),
        end: "03:00".into(),
        ..Default::default()
    });
    let p = run(&closed, &nodes, &[]);
    assert_eq!(acts(&p), ["c → Rebooting"]);
    assert_eq!(cond(&p, "RolledOut").reason, "OutsideWindow");
    assert_eq!(
        p.requeue_after,
        Some(std::time::Duration::from_secs(13 * 3600)),
        "until 01:00 tomorrow"
    );
}

#[test]
fn a_failed_node_halts_until_retry() {
    let failed = ann(
        at("f", NodeState::Failed, 5),
        ANNOTATION_ROLLOUT_FAILURE,
        "DrainTimeout: stuck",
    );
    let failed = ann(
        cordoned(ann(failed, ANNOTATION_CORDONED, "true")),
        ANNOTATION_ROLLOUT_RETRY,
        "",
    );
    let nodes = [
        failed.clone(),
        node("a", OLD),
        at("b", NodeState::Staged, 5),
        at("c", NodeState::Draining, 5),
    ];
    let mut ni = ni("ni-a", IntOrString::Int(3));
    let p = run(
        &ni,
        &nodes,
        &[pod("app", "w", "c", Some("ReplicaSet"), &[])],
    );
    assert_eq!(
        acts(&p),
        ["Uncordon c", "c → Staged"],
        "a draining node is put back, nothing starts"
    );
    let d = cond(&p, "Degraded");
    assert!(d.status && d.reason == "RolloutHalted", "{d:?}");
    assert!(
        d.message.contains("node f failed (DrainTimeout: stuck)")
            && d.message.contains(ANNOTATION_RETRY)
    );
    ni.metadata.annotations = Some([(ANNOTATION_RETRY.to_string(), "1".to_string())].into());
    let p = run(&ni, &nodes, &[]);
    assert_eq!(
        acts(&p)[..2],
        ["Uncordon f", "f → Pending"],
        "{:?}",
        acts(&p)
    );
    assert!(
        acts(&p).contains(&"Cordon b".to_string()),
        "the rollout resumes: {:?}",
        acts(&p)
    );
    // The same retry value again does not retry a node that failed after it.
    let again = ann(failed, ANNOTATION_ROLLOUT_RETRY, "1");
    assert!(acts(&run(&ni, &[again], &[])).is_empty());
}

#[test]
fn a_new_build_key_restarts_nodes_and_rolls_back_like_any_other() {
    let done_old = |n: &str| {
        ann(
            ann(at(n, NodeState::Done, 5), ANNOTATION_DESIRED_BUILD_KEY, OLD),
            ANNOTATION_BOOTED_BUILD_KEY,
            OLD,
        )
    };
    let staging_old = ann(
        at("s", NodeState::Staging, 5),
        ANNOTATION_DESIRED_BUILD_KEY,
        OLD,
    );
    let draining_old = ann(
        at("t", NodeState::Draining, 5),
        ANNOTATION_DESIRED_BUILD_KEY,
        OLD,
    );
    let failed_old = ann(
        at("u", NodeState::Failed, 5),
        ANNOTATION_DESIRED_BUILD_KEY,
        OLD,
    );
    let nodes = [done_old("a"), staging_old, draining_old, failed_old];
    let p = run(&ni("ni-a", IntOrString::Int(2)), &nodes, &[]);
    assert_eq!(
        acts(&p),
        [
            "s → Pending",
            "Uncordon t",
            "t → Pending",
            "u → Pending",
            "Desire a 1111",
            "a → Staging",
            "Desire s 1111",
            "s → Staging"
        ]
    );
    assert!(
        !cond(&p, "Degraded").status,
        "an old key's failure does not halt the new key"
    );
}

#[test]
fn no_artifact_no_selector_no_nodes() {
    let mut building = ni("ni-a", one());
    building.status.as_mut().unwrap().build_key = Some("sha256:2222".into());
    assert_eq!(target_key(&building), None);
    let p = run(&building, &[node("a", OLD)], &[]);
    assert!(acts(&p).is_empty());
    assert_eq!(cond(&p, "RolledOut").reason, "WaitingForArtifact");
    let p = run(&ni("ni-a", one()), &[], &[]);
    assert_eq!(
        cond(&p, "RolledOut").message,
        "spec.rollout.nodeSelector selects no node"
    );
    assert_eq!(status(&p).nodes.as_ref().unwrap().progress, "0/0");
    let mut unset = ni("ni-a", one());
    rollout(&mut unset).node_selector = None;
    assert_eq!(
        cond(&run(&unset, &[node("a", OLD)], &[]), "RolledOut").reason,
        "NoNodes"
    );
}

#[test]
fn later_nodeimage_is_degraded_and_leaves_shared_nodes_alone() {
    let mut first = ni("first", one());
    first.metadata.creation_timestamp = Some(Time("2026-11-01T00:00:00Z".parse().unwrap()));
    let mut later = ni("later", one());
    later.metadata.creation_timestamp = Some(Time("2026-11-02T00:00:00Z".parse().unwrap()));
    let nodes = [node("a", OLD), node("b", OLD)];
    let p = run_with(&later, std::slice::from_ref(&first), &nodes, &[], &[]);
    assert!(acts(&p).is_empty());
    let d = cond(&p, "Degraded");
    assert_eq!(d.reason, "RolloutConflict");
    assert!(
        d.message
            .contains("nodes a, b are also selected by NodeImage first"),
        "{}",
        d.message
    );
    let p = run_with(&first, &[later], &nodes, &[], &[]);
    assert_eq!(acts(&p), ["Desire a 1111", "a → Staging"]);
}

#[test]
fn deletion_and_unselected_nodes_leave_nothing_cordoned() {
    let nodes = [
        at("a", NodeState::Draining, 5),
        at("b", NodeState::Staging, 5),
        cordoned(node("c", OLD)),
    ];
    let mut ni = ni("ni-a", one());
    ni.metadata.deletion_timestamp = Some(Time(now()));
    assert_eq!(
        acts(&run(&ni, &nodes, &[])),
        ["Uncordon a", "Release a", "Release b"]
    );
    ni.metadata.deletion_timestamp = None;
    let mut moved = at("a", NodeState::Rebooting, 5);
    moved.metadata.labels = None;
    assert_eq!(acts(&run(&ni, &[moved], &[])), ["Uncordon a", "Release a"]);
}

#[test]
fn patches_merge_a_cordon_with_its_record_and_apply() {
    let p = run(&ni("ni-a", one()), &[at("n1", NodeState::Staged, 5)], &[]);
    let patches = p.node_patches();
    assert_eq!(patches.len(), 1);
    let (node, pa) = &patches[0];
    assert_eq!(node, "n1");
    assert_eq!(pa.unschedulable, Some(true));
    assert_eq!(pa.annotations[ANNOTATION_CORDONED].as_deref(), Some("true"));
    assert_eq!(
        pa.annotations[ANNOTATION_ROLLOUT_STATE].as_deref(),
        Some("Rebooting")
    );
    let mp = pa.to_merge_patch();
    assert_eq!(mp["spec"]["unschedulable"], true);
    assert_eq!(
        mp["metadata"]["annotations"][ANNOTATION_ROLLOUT_FAILURE],
        serde_json::Value::Null
    );
    let mut n = at("n1", NodeState::Staged, 5);
    pa.apply_to(&mut n);
    assert_eq!(view::NodeView::of(&n).state, Some(NodeState::Rebooting));
}

#[test]
fn a_settled_status_is_not_written_again() {
    let mut ni = ni("ni-a", one());
    let nodes = [ann(
        at("a", NodeState::Done, 5),
        ANNOTATION_BOOTED_BUILD_KEY,
        KEY,
    )];
    let p = run(&ni, &nodes, &[]);
    assert_eq!(status(&p).nodes.as_ref().unwrap().progress, "1/1");
    assert!(cond(&p, "RolledOut").status);
    write_status(&mut ni, status(&p), now());
    assert_eq!(run(&ni, &nodes, &[]), Plan::default());
}
