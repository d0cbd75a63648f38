//! Table tests: every node transition, the drain's pod decisions, the health gate, the budget.

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::{
    PodDisruptionBudget, PodDisruptionBudgetSpec, PodDisruptionBudgetStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kitfleet_api::constants::*;

use super::plan::budget;
use super::plan_tests::*;
use super::sim::{KEY, OLD, node, pod};
use super::*;

/// What, nodes, pods, the actions expected.
type Case = (&'static str, Vec<Node>, Vec<Pod>, Vec<&'static str>);

#[test]
fn each_transition_of_a_node() {
    use NodeState::*;
    let web = |n: &str| {
        pod(
            "app",
            &format!("web-{n}"),
            n,
            Some("ReplicaSet"),
            &[("app", "web")],
        )
    };
    let cases: Vec<Case> = vec![
        (
            "pending starts staging",
            vec![node("n1", OLD)],
            vec![],
            vec!["Desire n1 1111", "n1 → Staging"],
        ),
        (
            "already booted is done",
            vec![node("n1", KEY)],
            vec![],
            vec!["Desire n1 1111", "n1 → Done"],
        ),
        (
            "staging waits for the agent",
            vec![at("n1", Staging, 5)],
            vec![],
            vec![],
        ),
        (
            "staged by the agent, then drained at once",
            vec![ann(at("n1", Staging, 5), ANNOTATION_STAGED_BUILD_KEY, KEY)],
            vec![],
            vec![
                "n1 → Staged",
                "Cordon n1",
                "n1 → Draining",
                "n1 → Rebooting",
            ],
        ),
        (
            "staged is cordoned and drained",
            vec![at("n1", Staged, 5)],
            vec![web("n1")],
            vec!["Cordon n1", "n1 → Draining", "Evict app/web-n1"],
        ),
        (
            "staged without pods goes to reboot",
            vec![at("n1", Staged, 5)],
            vec![],
            vec!["Cordon n1", "n1 → Draining", "n1 → Rebooting"],
        ),
        (
            "draining evicts",
            vec![at("n1", Draining, 5)],
            vec![web("n1")],
            vec!["Evict app/web-n1"],
        ),
        (
            "drained",
            vec![at("n1", Draining, 5)],
            vec![],
            vec!["n1 → Rebooting"],
        ),
        (
            "drain timeout",
            vec![at("n1", Draining, 601)],
            vec![web("n1")],
            vec!["n1 → Failed"],
        ),
        (
            "rebooting waits",
            vec![not_ready(at("n1", Rebooting, 5))],
            vec![],
            vec![],
        ),
        (
            "rebooted into the key",
            vec![ann(
                at("n1", Rebooting, 5),
                ANNOTATION_BOOTED_BUILD_KEY,
                KEY,
            )],
            vec![],
            vec!["Uncordon n1", "n1 → Verifying", "n1 → Done"],
        ),
        (
            "back on the old key waits",
            vec![at("n1", Rebooting, 5)],
            vec![],
            vec![],
        ),
        (
            "reboot timeout",
            vec![not_ready(at("n1", Rebooting, 601))],
            vec![],
            vec!["n1 → Failed"],
        ),
        (
            "verified",
            vec![ann(
                at("n1", Verifying, 5),
                ANNOTATION_BOOTED_BUILD_KEY,
                KEY,
            )],
            vec![],
            vec!["n1 → Done"],
        ),
        (
            "verify timeout",
            vec![not_ready(ann(
                at("n1", Verifying, 601),
                ANNOTATION_BOOTED_BUILD_KEY,
                KEY,
            ))],
            vec![],
            vec!["n1 → Failed"],
        ),
        (
            "done stays done",
            vec![ann(at("n1", Done, 5), ANNOTATION_BOOTED_BUILD_KEY, KEY)],
            vec![],
            vec![],
        ),
    ];
    for (what, nodes, pods, want) in cases {
        let p = run(&ni("ni-a", one()), &nodes, &pods);
        assert_eq!(acts(&p), want, "{what}");
        let events = p.events().count();
        let marks = p
            .actions
            .iter()
            .filter(|a| matches!(a, Action::MarkState { .. }))
            .count();
        assert_eq!(events, marks, "{what}: one Event per transition");
    }
}

#[test]
fn agent_failures_fail_the_node_only_for_the_current_attempt() {
    let report = |secs| {
        format!(
            "{KEY} {} digest sha256:bb does not match sha256:aa",
            ago(secs)
        )
    };
    let staging = ann(
        at("n1", NodeState::Staging, 5),
        ANNOTATION_UPGRADE_FAILURE,
        &report(1),
    );
    let p = run(&ni("ni-a", one()), &[staging], &[]);
    assert_eq!(acts(&p), ["n1 → Failed"]);
    assert_eq!(status(&p).failures[0].reason, "StagingFailed");
    assert!(status(&p).failures[0].message.contains("does not match"));
    // A report older than the state belongs to an attempt that was retried.
    let stale = ann(
        at("n1", NodeState::Staging, 5),
        ANNOTATION_UPGRADE_FAILURE,
        &report(60),
    );
    assert!(acts(&run(&ni("ni-a", one()), &[stale], &[])).is_empty());
}

#[test]
fn drain_skips_daemonset_mirror_and_skipped_pods_and_forces_unmanaged() {
    let mut ni = ni("ni-a", one());
    let skip = LabelSelector {
        match_labels: Some([("keep".to_string(), "yes".to_string())].into()),
        ..Default::default()
    };
    rollout(&mut ni).drain.skip_pod_selector = Some(skip);
    let mut mirror = pod("kube-system", "etcd-n1", "n1", None, &[]);
    mirror.metadata.annotations =
        Some([(view::MIRROR_POD_ANNOTATION.to_string(), "x".to_string())].into());
    let mut gone = pod("app", "going", "n1", Some("ReplicaSet"), &[]);
    gone.metadata.deletion_timestamp = Some(Time(now()));
    let pods = vec![
        pod("kube-system", "agent-n1", "n1", Some("DaemonSet"), &[]),
        mirror,
        pod("app", "kept", "n1", Some("ReplicaSet"), &[("keep", "yes")]),
        pod("app", "web", "n1", Some("ReplicaSet"), &[]),
        pod("app", "loner", "n1", None, &[]),
        gone,
        pod("app", "elsewhere", "n2", Some("ReplicaSet"), &[]),
    ];
    let nodes = [at("n1", NodeState::Draining, 5)];
    let p = run(&ni, &nodes, &pods);
    assert_eq!(
        acts(&p),
        ["n1 → Failed"],
        "an unmanaged pod without force fails the node"
    );
    assert!(
        status(&p).failures[0]
            .message
            .contains("app/loner has no controller")
    );
    rollout(&mut ni).drain.force = true;
    rollout(&mut ni).drain.grace_period_seconds = Some(7);
    let p = run(&ni, &nodes, &pods);
    assert_eq!(acts(&p), ["Evict app/web", "Delete app/loner"]);
    assert!(p.actions.iter().any(|a| matches!(
        a,
        Action::Evict {
            grace_period_seconds: Some(7),
            ..
        }
    )));
    assert_eq!(p.requeue_after, Some(plan::DRAIN_POLL));
}

#[test]
fn unmanaged_pods_fail_a_staged_node_before_it_is_cordoned() {
    let p = run(
        &ni("ni-a", one()),
        &[at("n1", NodeState::Staged, 5)],
        &[pod("app", "loner", "n1", None, &[])],
    );
    assert_eq!(acts(&p), ["n1 → Failed"]);
}

#[test]
fn drain_timeout_names_the_blocking_pdb() {
    let pdb = PodDisruptionBudget {
        metadata: ObjectMeta {
            namespace: Some("app".into()),
            name: Some("web-pdb".into()),
            ..Default::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(PodDisruptionBudgetStatus {
            disruptions_allowed: Some(0),
            ..Default::default()
        }),
    };
    let pods = [pod(
        "app",
        "web-1",
        "n1",
        Some("ReplicaSet"),
        &[("app", "web")],
    )];
    let p = run_with(
        &ni("ni-a", one()),
        &[],
        &[at("n1", NodeState::Draining, 700)],
        &pods,
        &[pdb],
    );
    let f = &status(&p).failures[0];
    assert_eq!(f.reason, "DrainTimeout");
    assert!(
        f.message
            .contains("app/web-1 (blocked by PodDisruptionBudget web-pdb)"),
        "{}",
        f.message
    );
    assert!(
        !acts(&p).iter().any(|a| a.starts_with("Uncordon")),
        "the failed node stays cordoned"
    );
}

#[test]
fn health_gate_waits_for_selected_pods() {
    let mut ni = ni("ni-a", one());
    let sel = LabelSelector {
        match_labels: Some([("app".to_string(), "agent".to_string())].into()),
        ..Default::default()
    };
    rollout(&mut ni).health_check.pod_selector = Some(sel);
    let mut agent = pod(
        "kube-system",
        "agent-n1",
        "n1",
        Some("DaemonSet"),
        &[("app", "agent")],
    );
    super::sim::set_ready(&mut agent.status.as_mut().unwrap().conditions, false);
    let n = ann(
        at("n1", NodeState::Verifying, 5),
        ANNOTATION_BOOTED_BUILD_KEY,
        KEY,
    );
    assert!(
        acts(&run(
            &ni,
            std::slice::from_ref(&n),
            std::slice::from_ref(&agent)
        ))
        .is_empty()
    );
    let late = ann(
        at("n1", NodeState::Verifying, 700),
        ANNOTATION_BOOTED_BUILD_KEY,
        KEY,
    );
    let p = run(&ni, &[late], std::slice::from_ref(&agent));
    assert!(
        status(&p).failures[0]
            .message
            .contains("pod kube-system/agent-n1 is not Ready")
    );
    super::sim::set_ready(&mut agent.status.as_mut().unwrap().conditions, true);
    assert_eq!(acts(&run(&ni, &[n], &[agent])), ["n1 → Done"]);
}

#[test]
fn budget_counts_every_unavailable_selected_node() {
    assert_eq!(budget(&IntOrString::String("25%".into()), 10), Ok(3));
    assert_eq!(budget(&IntOrString::String("1%".into()), 10), Ok(1));
    assert_eq!(budget(&IntOrString::String("100%".into()), 7), Ok(7));
    assert_eq!(budget(&IntOrString::String("4".into()), 7), Ok(4));
    assert_eq!(budget(&IntOrString::Int(2), 7), Ok(2));
    assert!(
        budget(&IntOrString::Int(0), 7)
            .unwrap_err()
            .starts_with("spec.rollout.maxUnavailable")
    );
    assert!(budget(&IntOrString::String("0%".into()), 7).is_err());
    let staged = |n: &str| at(n, NodeState::Staged, 5);
    // Budget 2: one node NotReady, one cordoned by someone else: none may start.
    let nodes = [
        not_ready(node("a", OLD)),
        cordoned(node("b", OLD)),
        staged("c"),
        staged("d"),
    ];
    let p = run(&ni("ni-a", IntOrString::Int(2)), &nodes, &[]);
    assert!(
        !acts(&p).iter().any(|a| a.starts_with("Cordon")),
        "{:?}",
        acts(&p)
    );
    // Budget 2 with one disrupted: one more.
    let nodes = [at("a", NodeState::Rebooting, 5), staged("c"), staged("d")];
    let p = run(&ni("ni-a", IntOrString::Int(2)), &nodes, &[]);
    assert_eq!(
        acts(&p).iter().filter(|a| a.starts_with("Cordon")).count(),
        1
    );
}

#[test]
fn staging_runs_one_batch_ahead() {
    let nodes: Vec<Node> = (0..6).map(|i| node(&format!("n{i}"), OLD)).collect();
    let p = run(&ni("ni-a", IntOrString::Int(2)), &nodes, &[]);
    assert_eq!(
        acts(&p),
        [
            "Desire n0 1111",
            "n0 → Staging",
            "Desire n1 1111",
            "n1 → Staging"
        ]
    );
}
