//! Advancing the nodes of a rollout: retries and superseded keys, one step for every node in progress, then starting
//! nodes while the budget, the window, `paused` and the halt allow.

use std::time::Duration;

use kitfleet_api::nodeimage::RolloutSpec;

use super::plan::{DEFAULT_DRAIN_TIMEOUT, Planner, Slot, budget, target_key};
use super::status::Summary;
use super::steps::timeout;
use super::{Action, NodeState, window};

/// What gates starting nodes this plan.
pub(super) struct Gate<'a> {
    pub budget: usize,
    pub window_open: bool,
    /// The first failed node of the target key, not retried.
    pub halted: Option<String>,
    pub target: Option<&'a str>,
    pub problems: Vec<Summary>,
}

impl<'a> Planner<'a> {
    pub(super) fn advance(
        &mut self,
        r: &RolloutSpec,
        slots: &mut [Slot<'a>],
        conflict: Option<String>,
    ) -> Gate<'a> {
        let mut g = self.gate(r, slots.len());
        if let Some(c) = conflict {
            g.problems
                .insert(0, Summary::degraded("RolloutConflict", c));
        }
        for s in slots.iter_mut().filter(|s| s.ours) {
            self.reset(s, g.target);
        }
        let halted = |slots: &[Slot]| {
            let failed = |s: &&Slot| {
                s.ours
                    && s.state == NodeState::Failed
                    && (g.target.is_none() || s.desired == g.target)
            };
            slots.iter().find(failed).map(|s| s.v.name.to_string())
        };
        let before = halted(slots);
        for s in slots.iter_mut().filter(|s| s.ours && s.state.in_progress()) {
            self.step(r, s, before.is_some());
        }
        g.halted = halted(slots);
        if let Some(t) = g.target {
            self.already_booted(slots, t);
            if !r.paused && g.window_open && g.halted.is_none() {
                self.disrupt(r, slots, g.budget, t);
                self.stage(slots, g.budget, t);
            }
        }
        if let (Some(w), false) = (&r.window, g.window_open)
            && let Ok(at) = window::next_open(w, self.inp.now)
            && slots
                .iter()
                .any(|s| s.ours && matches!(s.state, NodeState::Pending | NodeState::Staged))
        {
            self.requeue(Duration::try_from(at.duration_since(self.inp.now)).unwrap_or_default());
        }
        g
    }

    fn gate(&self, r: &RolloutSpec, total: usize) -> Gate<'a> {
        let mut problems = Vec::new();
        let budget = budget(&r.max_unavailable, total).unwrap_or_else(|e| {
            problems.push(Summary::degraded("InvalidMaxUnavailable", e));
            0
        });
        let window_open = match &r.window {
            None => true,
            Some(w) => window::is_open(w, self.inp.now).unwrap_or_else(|e| {
                problems.push(Summary::degraded("InvalidWindow", e.to_string()));
                false
            }),
        };
        Gate {
            budget,
            window_open,
            halted: None,
            target: target_key(self.inp.ni),
            problems,
        }
    }

    /// A failed node is retried when `kitfleet.dev/retry` has a new value; a node recorded for a superseded build key
    /// starts over (a node in progress stops before its restart).
    fn reset(&mut self, s: &mut Slot<'a>, target: Option<&str>) {
        let retried =
            s.state == NodeState::Failed && s.v.retry_seen.unwrap_or_default() != self.retry;
        let superseded = target.is_some() && s.desired != target;
        let restart = match s.state {
            NodeState::Failed => retried || superseded,
            NodeState::Staging | NodeState::Staged | NodeState::Draining => superseded,
            NodeState::Done => {
                if superseded {
                    s.state = NodeState::Pending;
                }
                false
            }
            _ => false,
        };
        if restart {
            self.uncordon(s);
            self.mark(s, NodeState::Pending, None, None);
        }
    }

    fn step(&mut self, r: &RolloutSpec, s: &mut Slot<'a>, halted: bool) {
        match s.state {
            NodeState::Staging => {
                if let Some(msg) = s.v.agent_failed() {
                    self.fail(s, "StagingFailed", msg.to_string());
                } else if s.v.staged.is_some() && s.v.staged == s.desired {
                    self.mark(s, NodeState::Staged, None, None);
                }
            }
            NodeState::Draining if halted => {
                self.uncordon(s);
                self.mark(s, NodeState::Staged, None, None);
            }
            NodeState::Draining => {
                let deadline = self.deadline(s, timeout(r.drain.timeout, DEFAULT_DRAIN_TIMEOUT));
                self.drain(r, s, deadline);
            }
            NodeState::Rebooting => self.rebooting(r, s),
            NodeState::Verifying => self.verify(r, s),
            _ => {}
        }
    }

    /// Pending nodes that already booted the target are done without disruption.
    fn already_booted(&mut self, slots: &mut [Slot<'a>], target: &'a str) {
        for s in slots
            .iter_mut()
            .filter(|s| s.ours && s.state == NodeState::Pending && s.v.booted == Some(target))
        {
            self.push(self.desire(s.v.name, target));
            s.desired = Some(target);
            self.mark(s, NodeState::Done, None, None);
        }
    }

    /// Staged nodes are cordoned and drained while the selected nodes unavailable for any reason stay within budget.
    fn disrupt(&mut self, r: &RolloutSpec, slots: &mut [Slot<'a>], budget: usize, target: &str) {
        let mut unavailable = slots
            .iter()
            .filter(|s| !s.v.ready || s.unsched || s.state.disruptive())
            .count();
        for s in slots
            .iter_mut()
            .filter(|s| s.ours && s.state == NodeState::Staged && s.desired == Some(target))
        {
            if unavailable >= budget {
                break;
            }
            if !s.v.ready || s.v.cordoned_by_others() {
                continue;
            }
            if let Some(msg) = self.unmanaged(r, s) {
                self.fail(s, "UnmanagedPod", msg);
                continue;
            }
            if !s.unsched {
                self.push(Action::Cordon {
                    node: s.v.name.to_string(),
                });
                s.unsched = true;
            }
            let deadline = Some(self.after(timeout(r.drain.timeout, DEFAULT_DRAIN_TIMEOUT)));
            self.mark(s, NodeState::Draining, deadline, None);
            unavailable += 1;
            self.drain(r, s, deadline);
        }
    }

    /// Pending nodes start staging while fewer than `budget` nodes wait staged (the next batch is pulled while the
    /// current one restarts).
    fn stage(&mut self, slots: &mut [Slot<'a>], budget: usize, target: &'a str) {
        let mut waiting = slots
            .iter()
            .filter(|s| s.ours && matches!(s.state, NodeState::Staging | NodeState::Staged))
            .count();
        for s in slots
            .iter_mut()
            .filter(|s| s.ours && s.state == NodeState::Pending)
        {
            if waiting >= budget {
                break;
            }
            if !s.v.ready || s.v.cordoned_by_others() {
                continue;
            }
            self.push(self.desire(s.v.name, target));
            s.desired = Some(target);
            self.mark(s, NodeState::Staging, None, None);
            if s.v.staged == Some(target) {
                self.mark(s, NodeState::Staged, None, None);
            }
            waiting += 1;
        }
    }
}
