//! The rollout part of the NodeImage status: node counts, failures, the `RolledOut` and `Degraded` conditions, and
//! whether it differs from what the status already says.

use kitfleet_api::NodeImage;
use kitfleet_api::nodeimage::{NodeCounts, NodeFailure};

use super::{ConditionIntent, RolloutStatus};

pub const COND_ROLLED_OUT: &str = "RolledOut";
pub const COND_DEGRADED: &str = "Degraded";
/// The `Degraded` reasons the rollout writes (everything else there is the build controller's). Each controller
/// leaves the other's `Degraded` alone: the build's problems stand over the rollout's (which `RolledOut` still
/// tells), and neither clears what the other set.
pub const ROLLOUT_REASONS: &[&str] = &[
    "RolloutHealthy",
    "RolloutHalted",
    "RolloutConflict",
    "InvalidMaxUnavailable",
    "InvalidWindow",
    "InvalidSelector",
];

/// Whether a `Degraded` reason is the rollout's.
pub fn is_rollout_reason(reason: &str) -> bool {
    ROLLOUT_REASONS.contains(&reason)
}

/// The most failures kept in status (the CRD's bound).
pub const MAX_FAILURES: usize = 16;

/// Why the rollout is where it is (the `RolledOut` condition's reason, or `Degraded`'s when `degraded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub reason: &'static str,
    pub message: String,
    pub degraded: bool,
}

impl Summary {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Summary {
            reason,
            message: message.into(),
            degraded: false,
        }
    }

    pub fn degraded(reason: &'static str, message: impl Into<String>) -> Self {
        Summary {
            reason,
            message: message.into(),
            degraded: true,
        }
    }
}

/// Counts as the status reports them.
pub fn counts(total: usize, updated: usize, in_progress: usize, failed: usize) -> NodeCounts {
    let n = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
    NodeCounts {
        total: n(total),
        updated: n(updated),
        in_progress: n(in_progress),
        failed: n(failed),
        progress: format!("{updated}/{total}"),
    }
}

/// The status for these counts, failures (newest first, at most [`MAX_FAILURES`]) and summary.
pub fn build(
    counts: Option<NodeCounts>,
    mut failures: Vec<NodeFailure>,
    s: &Summary,
) -> RolloutStatus {
    failures.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.node.cmp(&b.node)));
    failures.truncate(MAX_FAILURES);
    let done = counts
        .as_ref()
        .is_some_and(|c| c.total > 0 && c.updated == c.total);
    let conditions = vec![
        ConditionIntent {
            type_: COND_ROLLED_OUT.into(),
            status: done && !s.degraded,
            reason: s.reason.into(),
            message: s.message.clone(),
        },
        ConditionIntent {
            type_: COND_DEGRADED.into(),
            status: s.degraded,
            reason: if s.degraded {
                s.reason
            } else {
                "RolloutHealthy"
            }
            .into(),
            message: if s.degraded { s.message.as_str() } else { "" }.into(),
        },
    ];
    RolloutStatus {
        nodes: counts,
        failures,
        conditions,
    }
}

/// Whether the NodeImage's status already says all of `want` (conditions compared by status, reason and message).
pub fn unchanged(ni: &NodeImage, want: &RolloutStatus) -> bool {
    let Some(st) = ni.status.as_ref() else {
        return false;
    };
    st.nodes == want.nodes
        && st.failures == want.failures
        && want.conditions.iter().all(|w| {
            st.conditions.iter().any(|c| {
                c.type_ == w.type_
                    && (c.status == "True") == w.status
                    && c.reason == w.reason
                    && c.message == w.message
            })
        })
}
