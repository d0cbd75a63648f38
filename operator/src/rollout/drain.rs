//! The drain's edges: the planner decides which pods leave a node ([`Action::Evict`], [`Action::DeletePod`]); this
//! module moves them.
//!
//! - Evictions go through the Eviction API (`pods/eviction` create), so PodDisruptionBudgets are always respected:
//!   the API server answers 429 while a budget allows no disruption. A 429 is transient: the pod stays, the planner
//!   looks at the node again after [`DRAIN_POLL`](super::plan::DRAIN_POLL) and evicts again, until
//!   `drain.timeout` fails the node (`DrainTimeout`, naming the pods and the budgets that block them).
//! - `drain.force` deletes pods no controller manages (nothing would recreate them, so there is nothing to evict).
//! - DaemonSet and mirror pods and pods matching `skipPodSelector` are never touched (the planner leaves them out).
//! - `gracePeriodSeconds` is passed to both as the deletion's grace period.
//!
//! Cordoning is not done here with `Api::cordon`: that call patches `spec.unschedulable` alone, while the record that
//! Kitfleet cordoned the node (`operator.kitfleet.dev/cordoned`) must land in the same write — a crash between two
//! writes would leave a cordon nobody uncordons. The controller applies both as one patch ([`super::NodePatch`]);
//! only nodes carrying that record are ever uncordoned.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, EvictParams};
use kube::{Api, Client};
use tracing::{debug, info};

use super::Action;

/// A pod action that could not be carried out (an API error other than "not now").
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("evicting pod {namespace}/{pod}: {source}")]
    Evict {
        namespace: String,
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting pod {namespace}/{pod}: {source}")]
    Delete {
        namespace: String,
        pod: String,
        #[source]
        source: kube::Error,
    },
}

/// What became of one pod action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Evicted or deleted (graceful deletion started).
    Done,
    /// Refused for now (429: a PodDisruptionBudget allows no disruption); retried on a later plan.
    Blocked(String),
    /// The pod was already gone.
    Gone,
}

/// What a drain round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    pub done: usize,
    pub gone: usize,
    /// `ns/name: why` of the pods refused for now.
    pub blocked: Vec<String>,
}

/// How long one eviction may take before it counts as refused for now.
pub const EVICT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn params(grace: Option<i64>) -> DeleteParams {
    DeleteParams {
        grace_period_seconds: grace.and_then(|g| u32::try_from(g).ok()),
        ..DeleteParams::default()
    }
}

/// Evicts a pod through the Eviction API.
pub async fn evict(
    client: &Client,
    namespace: &str,
    pod: &str,
    grace: Option<i64>,
) -> Result<Outcome, DrainError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let ep = EvictParams {
        delete_options: Some(params(grace)),
        ..EvictParams::default()
    };
    // kube's default client retries a 429 itself (up to 15 times, after the server's Retry-After): a refused
    // eviction would hold the reconcile for minutes. Not answered in time = refused for now.
    let Ok(answer) = tokio::time::timeout(EVICT_WAIT, api.evict(pod, &ep)).await else {
        return Ok(Outcome::Blocked(format!(
            "no answer within {EVICT_WAIT:?} (the API server refuses it for now: 429, retried by the client)"
        )));
    };
    match answer {
        Ok(_) => Ok(Outcome::Done),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Outcome::Gone),
        Err(kube::Error::Api(e)) if e.code == 429 => Ok(Outcome::Blocked(e.message)),
        Err(source) => Err(DrainError::Evict {
            namespace: namespace.into(),
            pod: pod.into(),
            source,
        }),
    }
}

/// Deletes a pod no controller manages (`drain.force`).
pub async fn delete(
    client: &Client,
    namespace: &str,
    pod: &str,
    grace: Option<i64>,
) -> Result<Outcome, DrainError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match api.delete(pod, &params(grace)).await {
        Ok(_) => Ok(Outcome::Done),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Outcome::Gone),
        Err(source) => Err(DrainError::Delete {
            namespace: namespace.into(),
            pod: pod.into(),
            source,
        }),
    }
}

/// Carries out every pod action of a plan, in order; the first API error ends the round (the plan is made again).
pub async fn run(client: &Client, actions: &[Action]) -> Result<Round, DrainError> {
    let mut round = Round::default();
    for a in actions {
        let (outcome, ns, pod) = match a {
            Action::Evict {
                namespace,
                pod,
                grace_period_seconds,
            } => (
                evict(client, namespace, pod, *grace_period_seconds).await?,
                namespace,
                pod,
            ),
            Action::DeletePod {
                namespace,
                pod,
                grace_period_seconds,
            } => (
                delete(client, namespace, pod, *grace_period_seconds).await?,
                namespace,
                pod,
            ),
            _ => continue,
        };
        match outcome {
            Outcome::Done => {
                info!(pod = %format!("{ns}/{pod}"), delete = matches!(a, Action::DeletePod { .. }), "pod drained");
                round.done += 1;
            }
            Outcome::Gone => round.gone += 1,
            Outcome::Blocked(why) => {
                debug!(pod = %format!("{ns}/{pod}"), %why, "eviction refused for now");
                round.blocked.push(format!("{ns}/{pod}: {why}"));
            }
        }
    }
    Ok(round)
}
