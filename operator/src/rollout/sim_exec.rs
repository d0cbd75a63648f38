//! The simulated executor and agents: a plan is applied with injected faults, and the agents react to the Nodes'
//! new annotations.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::sim::{Ev, Sim, write_status};
use super::view::NodeView;
use super::{Action, NodePatch, NodeState, Plan};

enum Op {
    Patch(String, NodePatch),
    Pod(Action),
    Status(super::RolloutStatus),
}

impl Sim {
    /// Applies `p` as the controller would, with the configured faults, and schedules the next plan.
    pub(super) fn execute(&mut self, p: Plan) {
        let mut ops: Vec<Op> = p
            .node_patches()
            .into_iter()
            .map(|(n, pa)| Op::Patch(n, pa))
            .collect();
        for a in &p.actions {
            match a {
                Action::Evict { .. } | Action::DeletePod { .. } => ops.push(Op::Pod(a.clone())),
                Action::UpdateStatus(st) => ops.push(Op::Status(st.clone())),
                _ => {}
            }
        }
        let restart = self.rng.chance(self.faults.restart);
        let cut = if restart {
            self.rng.range(0, ops.len() as i64) as usize
        } else {
            ops.len()
        };
        let mut failed = false;
        let mut wrote = false;
        for op in ops.into_iter().take(cut) {
            if self.rng.chance(self.faults.api_error) {
                // The executor stops at the first failed write.
                failed = true;
                break;
            }
            match op {
                Op::Patch(n, pa) => {
                    self.patch(&n, &pa, &p);
                    wrote = true;
                }
                Op::Pod(a) => self.pod_action(&a),
                Op::Status(st) => write_status(&mut self.ni, &st, self.now),
            }
        }
        let now = self.now.as_second();
        if restart {
            self.stats.restarts += 1;
            self.down_until = now + self.faults.restart_delay.max(1);
            self.wake = Some(self.down_until);
        } else if failed {
            self.wake = Some(now + 2);
        } else if wrote {
            // The operator's own Node writes come back as watch events.
            self.wake = Some(now + 1);
        } else if let Some(after) = p.requeue_after {
            self.wake = Some(now + (after.as_secs() as i64).max(1));
        }
    }

    fn patch(&mut self, n: &str, pa: &NodePatch, p: &Plan) {
        let Some(node) = self.node_mut(n) else { return };
        let mut from = NodeView::of(node).state.unwrap_or(NodeState::Pending);
        pa.apply_to(node);
        for a in &p.actions {
            if let Action::MarkState { node, state, .. } = a
                && node == n
            {
                self.stats
                    .transitions
                    .push((self.now, n.to_string(), from, *state));
                from = *state;
            }
        }
        self.track();
        self.agent(n);
    }

    fn pod_action(&mut self, a: &Action) {
        let (Action::Evict { namespace, pod, .. } | Action::DeletePod { namespace, pod, .. }) = a
        else {
            return;
        };
        if matches!(a, Action::Evict { .. }) && self.rng.chance(self.faults.evict_429) {
            return;
        }
        let name = format!("{namespace}/{pod}");
        let now = self.now;
        let Some(p) = self.pod_mut(&name) else { return };
        if p.metadata.deletion_timestamp.is_some() {
            return;
        }
        p.metadata.deletion_timestamp = Some(Time(now));
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let d = self.draw(self.timings.evict);
        let slowest = self.stats.evict.entry(node).or_default();
        *slowest = (*slowest).max(d);
        self.at(d, Ev::PodGone(name));
    }

    /// The node's agent: stages the desired key, or restarts into it, once per request.
    fn agent(&mut self, n: &str) {
        let Some(node) = self.node(n) else { return };
        let v = NodeView::of(node);
        let Some(key) = v.desired.map(String::from) else {
            return;
        };
        let work = match v.state {
            Some(NodeState::Staging) if v.staged != Some(key.as_str()) => "stage",
            Some(NodeState::Rebooting) if v.booted != Some(key.as_str()) => "boot",
            _ => return,
        };
        if !self.busy.insert((n.to_string(), format!("{work} {key}"))) {
            return;
        }
        let name = n.to_string();
        if work == "stage" {
            let d = self.draw(self.timings.stage);
            *self.stats.node_time.entry(name.clone()).or_default() += d;
            *self.stats.stage.entry(name.clone()).or_default() += d;
            self.at(d, Ev::Staged(name, key));
        } else {
            *self
                .stats
                .reboots
                .entry((name.clone(), key.clone()))
                .or_default() += 1;
            let d = self.draw(self.timings.reboot);
            *self.stats.node_time.entry(name.clone()).or_default() += d;
            self.at(1, Ev::Down(name.clone()));
            self.at(d.max(2), Ev::Up(name, key));
        }
    }
}
