//! Rollout planner figures: a 1000-node rollout on a simulated clock (simulated wall time against the ideal
//! ⌈N/k⌉ × per-node time) and the planner's own time for 1000 nodes.
//!
//! `cargo bench -p kitfleet-operator --features sim --bench rollout`

use std::time::Instant;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kitfleet_operator::rollout::sim::{Faults, Sim, cluster, rollout_ni, timings};
use kitfleet_operator::rollout::{Input, plan};

const N: usize = 1000;

fn rollout(label: &str, k: usize, faults: Faults, seed: u64) -> Sim {
    let (nodes, pods) = cluster(N);
    let ni = rollout_ni(IntOrString::String(format!("{}%", k * 100 / N)));
    let mut sim = Sim::new(ni, nodes, pods, timings(), faults, seed);
    let wall = sim.run(30 * 86_400) as f64;
    let names: Vec<String> = sim
        .nodes
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let mean = |f: &dyn Fn(&str) -> i64| names.iter().map(|n| f(n) as f64).sum::<f64>() / N as f64;
    let per_node = mean(&|n| sim.stats.per_node(n));
    let disruptive =
        mean(&|n| sim.stats.per_node(n) - sim.stats.stage.get(n).copied().unwrap_or(0));
    let batches = N.div_ceil(k) as f64;
    let s = &sim.stats;
    println!(
        "{label:<28} k={k:<4} wall {wall:>6.0} s | ideal ⌈N/k⌉×per-node {:>6.0} s (per node {per_node:.1} s) ratio {:.3} | \
         ideal without staging (pulls overlap) {:>6.0} s ratio {:.3} | max unavailable {} | plans {} ({:.2} ms mean) | restarts {}",
        batches * per_node,
        wall / (batches * per_node),
        batches * disruptive,
        wall / (batches * disruptive),
        s.max_unavailable,
        s.plans,
        s.plan_nanos as f64 / s.plans.max(1) as f64 / 1e6,
        s.restarts,
    );
    sim
}

/// The planner alone over a 1000-node cluster caught mid-rollout: median and worst of 200 plans.
fn planner_time(sim: &Sim) {
    let input = Input {
        ni: &sim.ni,
        others: &[],
        nodes: &sim.nodes,
        pods: &sim.pods,
        pdbs: &[],
        now: sim.now,
    };
    let mut times: Vec<f64> = (0..200)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(plan(std::hint::black_box(&input)));
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "planner, {N} nodes + {} pods mid-rollout: median {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        sim.pods.len(),
        times[100],
        times[198],
        times[199]
    );
}

fn main() {
    let clean = Faults::default();
    let faulty = Faults {
        api_error: 0.02,
        evict_429: 0.2,
        restart: 0.01,
        restart_delay: 5,
        ..Faults::default()
    };
    for k in [10, 100] {
        rollout("no faults", k, clean.clone(), 1);
        rollout("transient faults, restarts", k, faulty.clone(), 1);
    }
    // Mid-rollout snapshot for the planner's time.
    let (nodes, pods) = cluster(N);
    let mut sim = Sim::new(
        rollout_ni(IntOrString::String("10%".into())),
        nodes,
        pods,
        timings(),
        faulty,
        3,
    );
    sim.run(900);
    planner_time(&sim);
}
