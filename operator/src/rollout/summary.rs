//! The rollout's summary: counts, failures and why it is where it is.

use kitfleet_api::constants::ANNOTATION_RETRY;
use kitfleet_api::nodeimage::{NodeFailure, RolloutSpec};

use super::plan::{Planner, Slot, target_key};
use super::status::{self, Summary};
use super::{Action, NodeState};

/// Failures of the target key as the status lists them.
pub(super) fn failures(slots: &[Slot], target: Option<&str>) -> Vec<NodeFailure> {
    slots
        .iter()
        .filter(|s| {
            s.ours && s.state == NodeState::Failed && (target.is_none() || s.desired == target)
        })
        .map(|s| match &s.failure {
            Some(f) => NodeFailure {
                node: s.v.name.to_string(),
                reason: f.reason.clone(),
                message: f.message.clone(),
                time: String::new(),
            },
            None => {
                let (reason, message) =
                    s.v.failure
                        .and_then(|f| f.split_once(": "))
                        .unwrap_or(("Failed", ""));
                NodeFailure {
                    node: s.v.name.to_string(),
                    reason: reason.to_string(),
                    message: message.to_string(),
                    time: s.v.since.map(|t| t.to_string()).unwrap_or_default(),
                }
            }
        })
        .collect()
}

impl Planner<'_> {
    pub(super) fn summarise(&mut self, r: &RolloutSpec, slots: &[Slot], summary: Summary) {
        let target = target_key(self.inp.ni);
        let ours = slots.iter().filter(|s| s.ours);
        let count = |f: &dyn Fn(&&Slot) -> bool| ours.clone().filter(f).count();
        let total = count(&|_| true);
        let updated =
            count(&|s| s.state == NodeState::Done && s.desired.is_some() && s.desired == target);
        let in_progress = count(&|s| s.state.in_progress());
        let mut failures = failures(slots, target);
        // Failures recorded just now carry this plan's time.
        for f in failures.iter_mut().filter(|f| f.time.is_empty()) {
            f.time = self.inp.now.to_string();
        }
        let counts = (r.node_selector.is_some())
            .then(|| status::counts(total, updated, in_progress, failures.len()));
        let want = status::build(counts, failures, &summary);
        if !status::unchanged(self.inp.ni, &want) {
            self.push(Action::UpdateStatus(want));
        }
    }
}

impl Planner<'_> {
    /// Why the rollout is where it is.
    pub(super) fn summary(
        &self,
        r: &RolloutSpec,
        slots: &[Slot],
        mut g: super::advance::Gate,
    ) -> Summary {
        if let Some(n) = &g.halted {
            let why = slots.iter().find(|s| s.v.name == n).and_then(|s| {
                s.failure
                    .as_ref()
                    .map(|f| format!("{}: {}", f.reason, f.message))
                    .or(s.v.failure.map(String::from))
            });
            let msg = format!(
                "halted: node {n} failed ({}); fix the cause, then set annotation {ANNOTATION_RETRY} to a new value to retry",
                why.unwrap_or_default()
            );
            g.problems
                .insert(0, Summary::degraded("RolloutHalted", msg));
        }
        if !g.problems.is_empty() {
            let reason = g.problems[0].reason;
            let msgs: Vec<&str> = g.problems.iter().map(|p| p.message.as_str()).collect();
            return Summary::degraded(reason, msgs.join("; "));
        }
        let ours: Vec<&Slot> = slots.iter().filter(|s| s.ours).collect();
        let updated = ours
            .iter()
            .filter(|s| s.state == NodeState::Done && s.desired.is_some() && s.desired == g.target)
            .count();
        let Some(target) = g.target else {
            return Summary::new(
                "WaitingForArtifact",
                "waiting for the artifact of the current build key",
            );
        };
        if ours.is_empty() {
            return Summary::new("NoNodes", "spec.rollout.nodeSelector selects no node");
        }
        if updated == ours.len() {
            return Summary::new(
                "RolledOut",
                format!("all {updated} nodes run build key {target}"),
            );
        }
        let in_progress = ours.iter().filter(|s| s.state.in_progress()).count();
        let progress = format!(
            "{updated}/{} nodes updated, {in_progress} in progress",
            ours.len()
        );
        if r.paused {
            return Summary::new(
                "Paused",
                format!("paused: {progress}; nodes in progress finish, no node starts"),
            );
        }
        if !g.window_open {
            return Summary::new(
                "OutsideWindow",
                format!("outside the maintenance window: {progress}"),
            );
        }
        let waiting: Vec<&str> = ours
            .iter()
            .filter(|s| s.state == NodeState::Pending && (!s.v.ready || s.v.cordoned_by_others()))
            .map(|s| s.v.name)
            .take(5)
            .collect();
        match waiting.is_empty() {
            true => Summary::new("InProgress", progress),
            false => Summary::new(
                "InProgress",
                format!(
                    "{progress}; waiting for nodes not Ready or cordoned by someone else: {}",
                    waiting.join(", ")
                ),
            ),
        }
    }
}
