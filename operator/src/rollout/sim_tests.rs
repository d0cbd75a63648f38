//! The planner driven through simulated clusters: property tests over random clusters, timings, faults and operator
//! restarts between any two steps, and 1000 nodes with transient and terminal faults.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kitfleet_api::constants::ANNOTATION_RETRY;
use kitfleet_api::nodeimage::MaintenanceWindow;
use proptest::prelude::*;

use super::NodeState;
use super::plan::budget;
use super::sim::{Faults, KEY, Sim, cluster, rollout_ni, timings};
use super::view::NodeView;

fn states(sim: &Sim) -> Vec<(String, Option<NodeState>)> {
    sim.nodes
        .iter()
        .map(|n| {
            let v = NodeView::of(n);
            (v.name.to_string(), v.state)
        })
        .collect()
}

fn cordoned(sim: &Sim) -> Vec<String> {
    sim.nodes
        .iter()
        .map(NodeView::of)
        .filter(|v| v.unschedulable)
        .map(|v| v.name.to_string())
        .collect()
}

/// Every node runs the key, passed the gate once, and nothing is left cordoned.
fn assert_done(sim: &Sim, retried: &BTreeSet<String>) {
    for n in &sim.nodes {
        let v = NodeView::of(n);
        assert_eq!(
            (v.state, v.booted),
            (Some(NodeState::Done), Some(KEY)),
            "node {}",
            v.name
        );
        let reboots = sim
            .stats
            .reboots
            .get(&(v.name.to_string(), KEY.to_string()))
            .copied()
            .unwrap_or(0);
        let most = if retried.contains(v.name) { 2 } else { 1 };
        assert!(
            (1..=most).contains(&reboots),
            "node {} rebooted {reboots} times",
            v.name
        );
    }
    assert!(
        cordoned(sim).is_empty(),
        "left cordoned: {:?}",
        cordoned(sim)
    );
    let total = sim.nodes.len();
    let counts = sim
        .ni
        .status
        .as_ref()
        .and_then(|s| s.nodes.clone())
        .expect("status.nodes");
    assert_eq!(counts.progress, format!("{total}/{total}"));
}

fn faults(api_error: f64, restart: f64) -> Faults {
    Faults {
        api_error,
        evict_429: 0.2,
        restart,
        restart_delay: 5,
        broken: BTreeSet::new(),
    }
}

fn max_unavailable(percent: bool, k: i32) -> IntOrString {
    if percent {
        IntOrString::String(format!("{}%", k * 15))
    } else {
        IntOrString::Int(k)
    }
}

const DAY: i64 = 86_400;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn rollout_prop_budget_and_each_node_once(
        n in 1usize..14, k in 1i32..4, percent in any::<bool>(), seed in any::<u64>(),
        api in 0.0f64..0.25, restart in 0.0f64..0.3,
    ) {
        let (nodes, pods) = cluster(n);
        let mu = max_unavailable(percent, k);
        let b = budget(&mu, n).unwrap();
        let mut sim = Sim::new(rollout_ni(mu), nodes, pods, timings(), faults(api, restart), seed);
        sim.run(DAY);
        prop_assert!(sim.stats.max_unavailable <= b, "{} unavailable > budget {b}", sim.stats.max_unavailable);
        assert_done(&sim, &BTreeSet::new());
    }

    #[test]
    fn rollout_prop_pause_starts_nothing_and_finishes_in_progress(
        n in 2usize..10, k in 1i32..3, seed in any::<u64>(), pause_at in 0i64..400, restart in 0.0f64..0.2,
    ) {
        let (nodes, pods) = cluster(n);
        let mut sim = Sim::new(rollout_ni(IntOrString::Int(k)), nodes, pods, timings(), faults(0.05, restart), seed);
        sim.run(pause_at);
        let paused_at = sim.now;
        sim.ni.spec.rollout.as_mut().unwrap().paused = true;
        sim.run(3600);
        let started: Vec<_> = sim.stats.transitions.iter()
            .filter(|(t, _, _, to)| *t > paused_at && matches!(to, NodeState::Staging | NodeState::Draining))
            .collect();
        prop_assert!(started.is_empty(), "started while paused: {started:?}");
        prop_assert!(cordoned(&sim).is_empty(), "cordoned while paused: {:?}", cordoned(&sim));
        prop_assert!(states(&sim).iter().all(|(_, s)| !s.is_some_and(NodeState::disruptive)));
        sim.ni.spec.rollout.as_mut().unwrap().paused = false;
        sim.wake_now();
        sim.run(DAY);
        assert_done(&sim, &BTreeSet::new());
    }

    #[test]
    fn rollout_prop_window_is_respected(n in 1usize..8, seed in any::<u64>(), restart in 0.0f64..0.2) {
        let (nodes, pods) = cluster(n);
        let mut ni = rollout_ni(IntOrString::Int(1));
        // Daily 23:50–00:05 UTC (crossing midnight); the clock starts at midnight, inside it.
        let w = MaintenanceWindow { start: "23:50".into(), end: "00:05".into(), ..Default::default() };
        ni.spec.rollout.as_mut().unwrap().window = Some(w);
        let mut sim = Sim::new(ni, nodes, pods, timings(), faults(0.05, restart), seed);
        sim.run(10 * DAY);
        for (t, node, _, to) in &sim.stats.transitions {
            if matches!(to, NodeState::Staging | NodeState::Draining) {
                let minute = t.as_second().rem_euclid(DAY) / 60;
                prop_assert!(!(5..23 * 60 + 50).contains(&minute), "{node} → {to:?} at {t}");
            }
        }
        assert_done(&sim, &BTreeSet::new());
    }

    #[test]
    fn rollout_prop_halt_on_failure_then_retry_resumes(
        n in 2usize..12, k in 1i32..4, seed in any::<u64>(), bad in 0usize..12, restart in 0.0f64..0.2,
    ) {
        let (nodes, pods) = cluster(n);
        let bad = format!("n{:04}", bad % n);
        let mut f = faults(0.05, restart);
        f.broken.insert(bad.clone());
        let mut sim = Sim::new(rollout_ni(IntOrString::Int(k)), nodes, pods, timings(), f, seed);
        sim.run(DAY);
        let failed: Vec<_> = states(&sim).into_iter().filter(|(_, s)| *s == Some(NodeState::Failed)).collect();
        prop_assert_eq!(failed, vec![(bad.clone(), Some(NodeState::Failed))]);
        let failed_at = sim.stats.transitions.iter().find(|x| x.3 == NodeState::Failed).unwrap().0;
        prop_assert!(!sim.stats.transitions.iter().any(|(t, _, _, to)| *t > failed_at && *to == NodeState::Draining));
        prop_assert_eq!(cordoned(&sim), vec![bad.clone()]);
        let degraded = sim.ni.status.as_ref().unwrap().conditions.iter().any(|c| c.type_ == "Degraded" && c.status == "True");
        prop_assert!(degraded);
        // The cause is fixed and the user asks for a retry.
        sim.faults.broken.clear();
        sim.ni.metadata.annotations = Some([(ANNOTATION_RETRY.to_string(), "1".to_string())].into());
        sim.wake_now();
        sim.run(DAY);
        assert_done(&sim, &[bad].into());
    }
}

#[test]
fn rollout_sim_1000_nodes_with_transient_faults() {
    let (nodes, pods) = cluster(1000);
    let mu = IntOrString::String("10%".into());
    let mut sim = Sim::new(
        rollout_ni(mu),
        nodes,
        pods,
        timings(),
        faults(0.02, 0.01),
        1,
    );
    sim.run(7 * DAY);
    assert!(
        sim.stats.max_unavailable <= 100,
        "{} unavailable",
        sim.stats.max_unavailable
    );
    assert!(sim.stats.restarts > 0, "the run restarted the operator");
    assert_done(&sim, &BTreeSet::new());
}

#[test]
fn rollout_sim_1000_nodes_halts_at_the_first_terminal_failure() {
    let (nodes, pods) = cluster(1000);
    let mut f = faults(0.02, 0.01);
    f.broken = ["n0500".to_string(), "n0900".to_string()].into();
    let mut sim = Sim::new(
        rollout_ni(IntOrString::String("10%".into())),
        nodes,
        pods,
        timings(),
        f,
        2,
    );
    sim.run(7 * DAY);
    let failed: Vec<_> = states(&sim)
        .into_iter()
        .filter(|(_, s)| *s == Some(NodeState::Failed))
        .map(|x| x.0)
        .collect();
    assert_eq!(failed, ["n0500"]);
    assert_eq!(cordoned(&sim), ["n0500"]);
    assert!(
        states(&sim)
            .iter()
            .all(|(_, s)| !s.is_some_and(NodeState::disruptive))
    );
    let failures = &sim.ni.status.as_ref().unwrap().failures;
    assert_eq!(
        (failures.len(), failures[0].reason.as_str()),
        (1, "BootFailed")
    );
}
