//! A simulated cluster for the planner (tests and the `rollout` bench; built with `cfg(test)` or the `sim` feature,
//! never into the operator). Nodes, pods and the NodeImage are real API objects; a simulated clock orders the agents'
//! and kubelets' reactions; the executor applies each plan with injected faults: API errors (a node's patch or an
//! eviction is lost), evictions refused with 429, and operator restarts (the rest of a plan is dropped and the next
//! plan comes after a restart delay). Nothing is kept in memory between plans but the cluster itself.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kitfleet_api::NodeImage;
use kitfleet_api::constants::{
    ANNOTATION_BOOTED_BUILD_KEY, ANNOTATION_STAGED_BUILD_KEY, ANNOTATION_UPGRADE_FAILURE,
};

pub use super::sim_fixtures::*;
use super::view::{self, NodeView};
use super::{Input, NodeState, Plan, RolloutStatus, plan};

/// A small deterministic generator (xorshift64*), so every run is reproducible from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1).max(1) as u64) as i64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
}

/// How long the simulated agents and kubelets take, in seconds (uniform ranges).
#[derive(Debug, Clone)]
pub struct Timings {
    pub stage: (i64, i64),
    pub evict: (i64, i64),
    pub reboot: (i64, i64),
    pub pod_ready: (i64, i64),
}

/// Injected faults.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Chance that one node patch, eviction or status write fails (retried by a later plan).
    pub api_error: f64,
    /// Chance that an eviction is refused with 429.
    pub evict_429: f64,
    /// Chance, per plan, that the operator restarts partway through executing it.
    pub restart: f64,
    /// Seconds a restart takes before the next plan.
    pub restart_delay: i64,
    /// Nodes whose new image never boots healthy (the agent reports a terminal failure).
    pub broken: BTreeSet<String>,
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Most selected nodes NotReady or cordoned at once.
    pub max_unavailable: usize,
    /// Reboots per (node, build key).
    pub reboots: BTreeMap<(String, String), u32>,
    /// (time, node, from, to).
    pub transitions: Vec<(Timestamp, String, NodeState, NodeState)>,
    pub plans: u64,
    pub plan_nanos: u128,
    pub restarts: u64,
    /// Sum of the delays drawn for each node (stage + reboot + pods Ready again); see [`Stats::per_node`].
    pub node_time: BTreeMap<String, i64>,
    /// The slowest eviction drawn per node.
    pub evict: BTreeMap<String, i64>,
    /// The staging time drawn per node (overlaps other nodes' restarts).
    pub stage: BTreeMap<String, i64>,
}

impl Stats {
    /// The time one node takes alone: its drawn delays plus its slowest eviction.
    pub fn per_node(&self, n: &str) -> i64 {
        self.node_time.get(n).copied().unwrap_or(0) + self.evict.get(n).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
pub(super) enum Ev {
    Staged(String, String),
    PodGone(String),
    Down(String),
    Up(String, String),
    PodReady(String),
}

/// A cluster on a simulated clock.
#[derive(Debug, Clone)]
pub struct Sim {
    pub now: Timestamp,
    pub ni: NodeImage,
    /// Sorted by name.
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub timings: Timings,
    pub faults: Faults,
    pub stats: Stats,
    pub rng: Rng,
    pub(super) queue: BTreeMap<(i64, u64), Ev>,
    /// The controller's pending requeue (absolute seconds).
    pub(super) wake: Option<i64>,
    /// The operator is restarting until then.
    pub(super) down_until: i64,
    pub(super) seq: u64,
    /// Agent work already under way: (node, what).
    pub(super) busy: BTreeSet<(String, String)>,
}

/// Writes the rollout status into the NodeImage's status as the controller would.
pub fn write_status(ni: &mut NodeImage, st: &RolloutStatus, now: Timestamp) {
    let status = ni.status.get_or_insert_with(Default::default);
    status.nodes = st.nodes.clone();
    status.failures = st.failures.clone();
    for c in &st.conditions {
        let s = if c.status { "True" } else { "False" }.to_string();
        let new = Condition {
            type_: c.type_.clone(),
            status: s,
            reason: c.reason.clone(),
            message: c.message.clone(),
            observed_generation: None,
            last_transition_time: Time(now),
        };
        match status.conditions.iter_mut().find(|x| x.type_ == c.type_) {
            Some(x) => *x = new,
            None => status.conditions.push(new),
        }
    }
}

impl Sim {
    pub fn new(
        ni: NodeImage,
        nodes: Vec<Node>,
        pods: Vec<Pod>,
        timings: Timings,
        faults: Faults,
        seed: u64,
    ) -> Self {
        let mut nodes = nodes;
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut sim = Sim {
            now: "2026-11-30T00:00:00Z"
                .parse()
                .unwrap_or(Timestamp::UNIX_EPOCH),
            ni,
            nodes,
            pods,
            timings,
            faults,
            stats: Stats::default(),
            rng: Rng::new(seed),
            queue: BTreeMap::new(),
            wake: None,
            down_until: 0,
            seq: 0,
            busy: BTreeSet::new(),
        };
        sim.wake = Some(sim.now.as_second());
        sim
    }

    pub(super) fn at(&mut self, secs: i64, ev: Ev) {
        self.seq += 1;
        self.queue
            .insert((self.now.as_second() + secs, self.seq), ev);
    }

    pub(super) fn draw(&mut self, r: (i64, i64)) -> i64 {
        self.rng.range(r.0, r.1)
    }

    /// Plans once on the current cluster, timing the planner.
    pub fn plan_now(&mut self) -> Plan {
        let input = Input {
            ni: &self.ni,
            others: &[],
            nodes: &self.nodes,
            pods: &self.pods,
            pdbs: &[],
            now: self.now,
        };
        let t = Instant::now();
        let p = plan(&input);
        self.stats.plan_nanos += t.elapsed().as_nanos();
        self.stats.plans += 1;
        p
    }

    /// Runs until nothing is left to happen or `limit` simulated seconds passed; returns the simulated seconds used.
    /// After every instant with events the controller plans (a watch event), unless the operator is restarting; its
    /// own requeue is one pending wake-up, replaced by each plan.
    pub fn run(&mut self, limit: i64) -> i64 {
        let start = self.now.as_second();
        loop {
            let next_ev = self.queue.first_key_value().map(|(&(t, _), _)| t);
            let Some(t) = [next_ev, self.wake].into_iter().flatten().min() else {
                break;
            };
            if t - start > limit {
                break;
            }
            self.now = Timestamp::from_second(t).unwrap_or(self.now);
            while let Some(e) = self.queue.first_entry().filter(|e| e.key().0 == t) {
                let ev = e.remove();
                self.event(ev);
            }
            if t < self.down_until {
                self.wake = Some(self.down_until);
                continue;
            }
            self.wake = None;
            let p = self.plan_now();
            self.execute(p);
        }
        self.now.as_second() - start
    }

    /// The controller plans at the current instant (after a change to the NodeImage).
    pub fn wake_now(&mut self) {
        self.wake = Some(self.now.as_second());
    }

    fn event(&mut self, ev: Ev) {
        match ev {
            Ev::Staged(n, key) => {
                self.busy.remove(&(n.clone(), format!("stage {key}")));
                self.annotate(&n, ANNOTATION_STAGED_BUILD_KEY, &key);
            }
            Ev::PodGone(p) => self.pods.retain(|x| view::pod_name(x) != p),
            Ev::Down(n) => self.set_node_ready(&n, false),
            Ev::Up(n, key) => self.up(&n, &key),
            Ev::PodReady(p) => {
                if let Some(p) = self.pod_mut(&p) {
                    set_ready(
                        &mut p.status.get_or_insert_with(Default::default).conditions,
                        true,
                    );
                }
            }
        }
    }

    pub(super) fn annotate(&mut self, n: &str, k: &str, v: &str) {
        if let Some(node) = self.node_mut(n) {
            node.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(k.into(), v.into());
        }
    }

    fn set_node_ready(&mut self, n: &str, ready: bool) {
        if let Some(node) = self.node_mut(n) {
            set_ready(
                &mut node.status.get_or_insert_with(Default::default).conditions,
                ready,
            );
        }
        let on: Vec<String> = self.pods_on(n);
        for p in on.iter().filter(|_| !ready) {
            if let Some(p) = self.pod_mut(p) {
                set_ready(
                    &mut p.status.get_or_insert_with(Default::default).conditions,
                    false,
                );
            }
        }
        self.track();
    }

    fn pods_on(&self, n: &str) -> Vec<String> {
        let on = |p: &&Pod| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(n);
        self.pods.iter().filter(on).map(view::pod_name).collect()
    }

    pub fn node_mut(&mut self, n: &str) -> Option<&mut Node> {
        let i = self
            .nodes
            .binary_search_by(|x| x.metadata.name.as_deref().unwrap_or_default().cmp(n))
            .ok()?;
        self.nodes.get_mut(i)
    }

    pub fn node(&self, n: &str) -> Option<&Node> {
        let i = self
            .nodes
            .binary_search_by(|x| x.metadata.name.as_deref().unwrap_or_default().cmp(n))
            .ok()?;
        self.nodes.get(i)
    }

    pub fn pod_mut(&mut self, name: &str) -> Option<&mut Pod> {
        self.pods.iter_mut().find(|p| view::pod_name(p) == name)
    }

    /// The node is back: on the new key, or (broken image) on the old one with the agent's failure report.
    fn up(&mut self, n: &str, key: &str) {
        self.busy.remove(&(n.to_string(), format!("boot {key}")));
        if self.faults.broken.contains(n) {
            let msg = format!("{key} {} the new image did not boot healthy", self.now);
            self.annotate(n, ANNOTATION_UPGRADE_FAILURE, &msg);
        } else {
            self.annotate(n, ANNOTATION_BOOTED_BUILD_KEY, key);
        }
        self.set_node_ready(n, true);
        let ready = self.draw(self.timings.pod_ready);
        *self.stats.node_time.entry(n.to_string()).or_default() += ready;
        for p in self.pods_on(n) {
            self.at(ready, Ev::PodReady(p));
        }
    }

    /// Selected nodes NotReady or cordoned now; remembers the most seen.
    pub fn unavailable(&self) -> usize {
        let n = self.nodes.iter().filter(|n| {
            let v = NodeView::of(n);
            !v.ready || v.unschedulable
        });
        n.count()
    }

    pub(super) fn track(&mut self) {
        self.stats.max_unavailable = self.stats.max_unavailable.max(self.unavailable());
    }
}
