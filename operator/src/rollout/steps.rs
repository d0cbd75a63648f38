//! One node's steps that look at pods and deadlines: the drain, the restart, the health gate.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kitfleet_api::nodeimage::RolloutSpec;
use kube::core::{Selector, SelectorExt};

use super::plan::{DEFAULT_DRAIN_TIMEOUT, DEFAULT_HEALTH_TIMEOUT, DRAIN_POLL, Planner, Slot};
use super::view::{self, PodDrain};
use super::{Action, NodeState};

/// A spec timeout, or its default.
pub(super) fn timeout(d: Option<kube::core::Duration>, default: Duration) -> Duration {
    d.map_or(default, Duration::from)
}

impl<'a> Planner<'a> {
    /// The recorded deadline, else the state's start plus `t`.
    pub(super) fn deadline(&self, s: &Slot, t: Duration) -> Option<Timestamp> {
        let since = s.v.since.map(|at| {
            let d = k8s_openapi::jiff::SignedDuration::try_from(t).unwrap_or_default();
            at.checked_add(d).unwrap_or(Timestamp::MAX)
        });
        s.v.deadline.or(since)
    }

    fn past(&mut self, deadline: Option<Timestamp>) -> bool {
        match deadline {
            Some(d) if d <= self.inp.now => true,
            Some(d) => {
                self.requeue(
                    Duration::try_from(d.duration_since(self.inp.now)).unwrap_or_default(),
                );
                false
            }
            None => false,
        }
    }

    pub(super) fn drain(&mut self, r: &RolloutSpec, s: &mut Slot<'a>, deadline: Option<Timestamp>) {
        let skip = r
            .drain
            .skip_pod_selector
            .clone()
            .and_then(|l| Selector::try_from(l).ok());
        let pods: Vec<_> = self
            .pods
            .get(s.v.name)
            .into_iter()
            .flatten()
            .copied()
            .map(|p| (p, view::pod_drain(p, skip.as_ref())))
            .filter(|(_, d)| *d != PodDrain::Skip)
            .collect();
        let health = timeout(r.health_check.timeout, DEFAULT_HEALTH_TIMEOUT);
        if pods.is_empty() {
            return self.mark(s, NodeState::Rebooting, Some(self.after(health)), None);
        }
        if let Some(msg) = self.unmanaged(r, s) {
            return self.fail(s, "UnmanagedPod", msg);
        }
        if self.past(deadline) {
            let names: Vec<String> = pods.iter().map(|(p, _)| self.blocked(p)).collect();
            let t = timeout(r.drain.timeout, DEFAULT_DRAIN_TIMEOUT);
            let msg = format!(
                "{} pods still on the node after drain.timeout {t:?}: {}",
                names.len(),
                names.join(", ")
            );
            return self.fail(s, "DrainTimeout", msg);
        }
        for (p, d) in pods
            .iter()
            .filter(|(p, _)| p.metadata.deletion_timestamp.is_none())
        {
            let namespace = p
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let pod = p.metadata.name.clone().unwrap_or_default();
            let grace_period_seconds = r.drain.grace_period_seconds;
            self.push(match d {
                PodDrain::Evict => Action::Evict {
                    namespace,
                    pod,
                    grace_period_seconds,
                },
                _ => Action::DeletePod {
                    namespace,
                    pod,
                    grace_period_seconds,
                },
            });
        }
        self.requeue(DRAIN_POLL);
    }

    /// A pod on the node that no controller manages, when `drain.force` is off (a drain cannot move it).
    pub(super) fn unmanaged(&self, r: &RolloutSpec, s: &Slot) -> Option<String> {
        if r.drain.force {
            return None;
        }
        let skip = r
            .drain
            .skip_pod_selector
            .clone()
            .and_then(|l| Selector::try_from(l).ok());
        let p = self
            .pods
            .get(s.v.name)
            .into_iter()
            .flatten()
            .find(|p| view::pod_drain(p, skip.as_ref()) == PodDrain::Unmanaged)?;
        Some(format!(
            "pod {} has no controller; set spec.rollout.drain.force to delete it",
            view::pod_name(p)
        ))
    }

    /// `ns/name`, with the PDBs that allow no disruption of it.
    fn blocked(&self, p: &k8s_openapi::api::core::v1::Pod) -> String {
        let pdbs = view::blocking_pdbs(p, self.inp.pdbs);
        let names: Vec<String> = pdbs
            .iter()
            .map(|b| b.metadata.name.clone().unwrap_or_default())
            .collect();
        match names.is_empty() {
            true => view::pod_name(p),
            false => format!(
                "{} (blocked by PodDisruptionBudget {})",
                view::pod_name(p),
                names.join(", ")
            ),
        }
    }

    pub(super) fn rebooting(&mut self, r: &RolloutSpec, s: &mut Slot<'a>) {
        if let Some(msg) = s.v.agent_failed() {
            return self.fail(s, "BootFailed", msg.to_string());
        }
        let deadline = self.deadline(s, timeout(r.health_check.timeout, DEFAULT_HEALTH_TIMEOUT));
        if s.v.ready && s.v.booted.is_some() && s.v.booted == s.desired {
            self.uncordon(s);
            self.mark(s, NodeState::Verifying, deadline, None);
            return self.verify(r, s);
        }
        if self.past(deadline) {
            let msg = self.unhealthy(r, s).join("; ");
            self.fail(
                s,
                "RebootTimeout",
                format!("not back by healthCheck.timeout: {msg}"),
            );
        }
    }

    pub(super) fn verify(&mut self, r: &RolloutSpec, s: &mut Slot<'a>) {
        let missing = self.unhealthy(r, s);
        if missing.is_empty() {
            return self.mark(s, NodeState::Done, None, None);
        }
        let deadline = self.deadline(s, timeout(r.health_check.timeout, DEFAULT_HEALTH_TIMEOUT));
        if self.past(deadline) {
            self.fail(
                s,
                "HealthCheckTimeout",
                format!("unhealthy at healthCheck.timeout: {}", missing.join("; ")),
            );
        }
    }

    /// What keeps the node from passing the health gate.
    fn unhealthy(&self, r: &RolloutSpec, s: &Slot) -> Vec<String> {
        let mut out = Vec::new();
        if !s.v.ready {
            out.push("node is not Ready".to_string());
        }
        if s.v.booted != s.desired {
            let booted = s.v.booted.unwrap_or("nothing");
            out.push(format!(
                "agent reports {booted} booted, want {}",
                s.desired.unwrap_or_default()
            ));
        }
        let sel = r
            .health_check
            .pod_selector
            .clone()
            .and_then(|l| Selector::try_from(l).ok());
        if let Some(sel) = sel {
            for p in self.pods.get(s.v.name).into_iter().flatten() {
                if sel.matches(view::labels(&p.metadata)) && !view::pod_ready(p) {
                    out.push(format!("pod {} is not Ready", view::pod_name(p)));
                }
            }
        }
        out
    }
}
