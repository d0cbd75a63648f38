//! The rollout controller: gathers the planner's inputs from reflector stores (NodeImages, Nodes, Pods,
//! PodDisruptionBudgets — no LIST per reconcile), runs [`plan`](super::plan::plan) with the clock, and carries the plan
//! out: Node patches (field manager [`FIELD_MANAGER`], each with the Node's resourceVersion as a precondition, in the
//! planner's order, stopping at the first that fails), the drain's pod actions ([`super::drain`]), the rollout part
//! of the status (a merge patch with the NodeImage's resourceVersion as a precondition), one Event per node
//! transition. It runs on the leader only, next to the build controller.
//!
//! Deletion: a NodeImage with `spec.rollout` carries the finalizer [`FINALIZER`]; when it is deleted the planner
//! winds its nodes down (uncordons the nodes Kitfleet cordoned, removes the operator's keys) and only then is the
//! finalizer removed.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kitfleet_api::NodeImage;
use kitfleet_api::constants::{ANNOTATION_ROLLOUT_NODEIMAGE, ANNOTATION_ROLLOUT_STATE};
use kube::api::{Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument as _, info, instrument, warn};

use super::drain::{self, DrainError};
use super::status::{COND_DEGRADED, is_rollout_reason};
use super::{Action, NodeEvent, NodeState, Plan, RolloutStatus, plan};
use crate::build::conditions::{MAX_MESSAGE, clamp, set_condition};
use crate::metrics::Metrics;

/// Field manager of every write the rollout controller makes (Node annotations and cordons, NodeImage status).
pub const FIELD_MANAGER: &str = "kitfleet-rollout";
/// Finalizer on a NodeImage with `spec.rollout`: its deletion releases (and uncordons) its nodes first.
pub const FINALIZER: &str = "kitfleet.dev/rollout-cleanup";
/// How soon a reconcile whose write met a newer object (409) plans again.
const CONFLICT_RETRY: Duration = Duration::from_secs(1);
/// How long a reconcile waits for the Node cache to show its own patches (so the next plan never reads a Node
/// older than what this one wrote).
const CACHE_WAIT: Duration = Duration::from_secs(5);

/// A reconciliation failure (retried by [`error_policy`] with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API server: {0}")]
    Kube(#[from] kube::Error),
    #[error("drain: {0}")]
    Drain(#[from] DrainError),
    #[error("the {0} cache stopped (its watch ended)")]
    CacheStopped(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The `reason` label of the error counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "rollout-kube",
            Error::Drain(_) => "rollout-drain",
            Error::CacheStopped(_) => "rollout-cache",
        }
    }
}

struct Writers {
    nodeimages: Writer<NodeImage>,
    nodes: Writer<Node>,
    pods: Writer<Pod>,
    pdbs: Writer<PodDisruptionBudget>,
}

/// What the reconciler works with.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The clock (tests may pin it).
    pub now: fn() -> Timestamp,
    pub nodeimages: Store<NodeImage>,
    pub nodes: Store<Node>,
    pub pods: Store<Pod>,
    pub pdbs: Store<PodDisruptionBudget>,
    writers: Mutex<Option<Writers>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("rollout::Context").finish_non_exhaustive()
    }
}

impl Context {
    /// A context publishing Events as `kitfleet-rollout` (instance `identity`).
    pub fn new(client: Client, metrics: Arc<Metrics>, identity: &str) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity.to_string()),
        };
        let (nodeimages, ni_w) = reflector::store();
        let (nodes, node_w) = reflector::store();
        let (pods, pod_w) = reflector::store();
        let (pdbs, pdb_w) = reflector::store();
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            now: Timestamp::now,
            nodeimages,
            nodes,
            pods,
            pdbs,
            writers: Mutex::new(Some(Writers {
                nodeimages: ni_w,
                nodes: node_w,
                pods: pod_w,
                pdbs: pdb_w,
            })),
            failures: Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reconciles one NodeImage's rollout.
#[instrument(skip(ni, ctx), fields(name = %ni.name_any()))]
pub async fn reconcile(ni: Arc<NodeImage>, ctx: Arc<Context>) -> Result<Requeue> {
    ctx.metrics.reconciles.inc();
    let name = ni.name_any();
    let result = reconcile_inner(&ni, &ctx).await;
    if result.is_ok() {
        ctx.failures().remove(&name);
    }
    result
}

async fn reconcile_inner(ni: &NodeImage, ctx: &Context) -> Result<Requeue> {
    ctx.nodes
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheStopped("Node"))?;
    ctx.pods
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheStopped("Pod"))?;
    ctx.pdbs
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheStopped("PodDisruptionBudget"))?;
    let has_finalizer = ni.finalizers().iter().any(|f| f == FINALIZER);
    let deleting = ni.metadata.deletion_timestamp.is_some();
    if deleting && !has_finalizer {
        return Ok(Requeue::await_change());
    }
    if !deleting && ni.spec.rollout.is_some() && !has_finalizer {
        // The next event (this patch) plans.
        set_finalizer(ni, true, ctx).await?;
        return Ok(Requeue::await_change());
    }
    let nodes = relevant_nodes(ni, ctx);
    let plan = {
        let names: BTreeSet<&str> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        let pods: Vec<Pod> = ctx
            .pods
            .state()
            .iter()
            .filter(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .is_some_and(|n| names.contains(n))
            })
            .map(|p| (**p).clone())
            .collect();
        let namespaces: BTreeSet<&str> = pods
            .iter()
            .filter_map(|p| p.metadata.namespace.as_deref())
            .collect();
        let pdbs: Vec<PodDisruptionBudget> = ctx
            .pdbs
            .state()
            .iter()
            .filter(|b| {
                b.metadata
                    .namespace
                    .as_deref()
                    .is_some_and(|n| namespaces.contains(n))
            })
            .map(|b| (**b).clone())
            .collect();
        let others: Vec<NodeImage> = ctx
            .nodeimages
            .state()
            .iter()
            .filter(|o| o.metadata.name != ni.metadata.name && o.spec.rollout.is_some())
            .map(|o| (**o).clone())
            .collect();
        plan(&super::Input {
            ni,
            others: &others,
            nodes: &nodes,
            pods: &pods,
            pdbs: &pdbs,
            now: (ctx.now)(),
        })
    };
    let complete = execute(ni, &nodes, &plan, ctx).await?;
    if !complete {
        return Ok(Requeue::requeue(CONFLICT_RETRY));
    }
    let owns = |name: &str| {
        ctx.nodes.state().iter().any(|n| {
            n.annotations()
                .get(ANNOTATION_ROLLOUT_NODEIMAGE)
                .is_some_and(|o| o == name)
        })
    };
    if has_finalizer && (deleting || ni.spec.rollout.is_none()) && !owns(&ni.name_any()) {
        set_finalizer(ni, false, ctx).await?;
        return Ok(Requeue::await_change());
    }
    Ok(match plan.requeue_after {
        Some(after) => Requeue::requeue(after.max(Duration::from_millis(200))),
        None => Requeue::requeue(Duration::from_secs(600)),
    })
}

/// The Nodes the plan needs: those the rollout selects and those it drove before (to release them).
fn relevant_nodes(ni: &NodeImage, ctx: &Context) -> Vec<Node> {
    let name = ni.name_any();
    let selector = ni
        .spec
        .rollout
        .as_ref()
        .and_then(|r| r.node_selector.clone())
        .and_then(|s| Selector::try_from(s).ok());
    ctx.nodes
        .state()
        .iter()
        .filter(|n| {
            n.annotations()
                .get(ANNOTATION_ROLLOUT_NODEIMAGE)
                .is_some_and(|o| *o == name)
                || selector.as_ref().is_some_and(|s| s.matches(n.labels()))
        })
        .map(|n| (**n).clone())
        .collect()
}

/// Carries a plan out. `Ok(false)`: a write met a newer object (409), the rest was left for the next plan.
async fn execute(ni: &NodeImage, nodes: &[Node], plan: &Plan, ctx: &Context) -> Result<bool> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let mut applied: Vec<(String, Option<String>)> = Vec::new();
    let mut outcome: Result<bool> = Ok(true);
    for (node, patch) in plan.node_patches() {
        let rv = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(&node))
            .and_then(|n| n.metadata.resource_version.clone());
        let mut body = patch.to_merge_patch();
        body["metadata"]["resourceVersion"] = json!(rv);
        match api.patch(&node, &pp, &Patch::Merge(&body)).await {
            Ok(n) => {
                info!(node = %node, patch = %body, "patched node");
                applied.push((node, n.metadata.resource_version));
            }
            // Deleted meanwhile: it leaves the plan.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {
                info!(node = %node, "node changed since the plan; planning again");
                outcome = Ok(false);
                break;
            }
            Err(e) => {
                outcome = Err(e.into());
                break;
            }
        }
    }
    let written: BTreeSet<&str> = applied.iter().map(|(n, _)| n.as_str()).collect();
    let all_nodes = matches!(outcome, Ok(true));
    for ev in plan.events() {
        if (ev.node.is_empty() && all_nodes) || written.contains(ev.node.as_str()) {
            publish(ni, ev, ctx).await;
        }
    }
    wait_for_cache(&ctx.nodes, &applied).await;
    if !outcome? {
        return Ok(false);
    }
    let round = drain::run(&ctx.client, &plan.actions).await?;
    if !round.blocked.is_empty() {
        info!(blocked = ?round.blocked, "evictions refused for now (PodDisruptionBudget)");
    }
    for a in &plan.actions {
        if let Action::UpdateStatus(want) = a
            && !write_status(ni, want, ctx).await?
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Waits (bounded) until the Node cache holds at least the versions this reconcile wrote.
async fn wait_for_cache(store: &Store<Node>, written: &[(String, Option<String>)]) {
    let newer = |have: Option<&str>, want: &str| match (
        have.and_then(|h| h.parse::<u64>().ok()),
        want.parse::<u64>(),
    ) {
        (Some(h), Ok(w)) => h >= w,
        _ => have == Some(want),
    };
    let deadline = tokio::time::Instant::now() + CACHE_WAIT;
    loop {
        let behind = written.iter().any(|(name, rv)| {
            let Some(rv) = rv else { return false };
            store
                .get(&ObjectRef::new(name))
                .is_some_and(|n| !newer(n.metadata.resource_version.as_deref(), rv))
        });
        if !behind || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the rollout may write its `Degraded` intent over the current one: its own it may always change; the
/// build controller's it never clears, and overrides only a `False`.
fn may_write_degraded(
    current: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    want: bool,
) -> bool {
    match current {
        None => true,
        Some(c) if is_rollout_reason(&c.reason) => true,
        Some(c) => want && c.status != "True",
    }
}

/// The rollout part of the status with the rollout's conditions merged into the current ones; `None` when the
/// status already says it all.
pub fn status_patch(
    ni: &NodeImage,
    want: &RolloutStatus,
    now: Timestamp,
) -> Option<serde_json::Value> {
    let cur = ni.status.clone().unwrap_or_default();
    let mut conds = cur.conditions.clone();
    for c in &want.conditions {
        let current = conds.iter().find(|x| x.type_ == c.type_);
        if c.type_ == COND_DEGRADED && !may_write_degraded(current, c.status) {
            continue;
        }
        let message = clamp(&c.message, MAX_MESSAGE);
        set_condition(
            &mut conds,
            &c.type_,
            c.status,
            &c.reason,
            &message,
            ni.metadata.generation,
            now,
        );
    }
    if cur.nodes == want.nodes && cur.failures == want.failures && conds == cur.conditions {
        return None;
    }
    let failures = match want.failures.is_empty() {
        true => serde_json::Value::Null,
        false => json!(want.failures),
    };
    Some(json!({
        "metadata": {"resourceVersion": ni.metadata.resource_version},
        "status": {"nodes": want.nodes, "failures": failures, "conditions": conds},
    }))
}

/// Writes the rollout part of the status. `Ok(false)`: the NodeImage changed since it was read (409).
async fn write_status(ni: &NodeImage, want: &RolloutStatus, ctx: &Context) -> Result<bool> {
    let Some(body) = status_patch(ni, want, (ctx.now)()) else {
        return Ok(true);
    };
    let api: Api<NodeImage> = Api::all(ctx.client.clone());
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    match api
        .patch_status(&ni.name_any(), &pp, &Patch::Merge(&body))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Adds or removes [`FINALIZER`] (a merge patch of the whole list, with the resourceVersion as a precondition).
async fn set_finalizer(ni: &NodeImage, present: bool, ctx: &Context) -> Result<()> {
    let mut list: Vec<String> = ni
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if present {
        list.push(FINALIZER.into());
    }
    let body =
        json!({"metadata": {"resourceVersion": ni.metadata.resource_version, "finalizers": list}});
    let api: Api<NodeImage> = Api::all(ctx.client.clone());
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    match api.patch(&ni.name_any(), &pp, &Patch::Merge(&body)).await {
        Ok(_) => {
            info!(present, "rollout finalizer set");
            Ok(())
        }
        // A stale object, or it is gone: the next event decides again.
        Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn publish(ni: &NodeImage, ev: &NodeEvent, ctx: &Context) {
    let related = (!ev.node.is_empty()).then(|| ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(ev.node.clone()),
        ..Default::default()
    });
    let event = KubeEvent {
        type_: if ev.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: ev.reason.clone(),
        note: Some(clamp(&ev.note, 1024)),
        action: "Rollout".into(),
        secondary: related,
    };
    if let Err(e) = ctx.recorder.publish(&event, &ni.object_ref(&())).await {
        warn!(error = %e, reason = %ev.reason, "could not publish Event");
    }
}

/// Requeues a failed reconciliation with a per-object exponential backoff (1 s, 2 s, … 1 min) and counts the error.
pub fn error_policy(ni: Arc<NodeImage>, err: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.error(err.reason());
    let mut failures = ctx.failures();
    let n = failures.entry(ni.name_any()).or_insert(0);
    *n = n.saturating_add(1);
    let delay = Duration::from_secs(1u64 << (*n - 1).min(6)).min(Duration::from_secs(60));
    warn!(name = %ni.name_any(), error = %err, retry_in = ?delay, "rollout reconcile failed");
    Requeue::requeue(delay)
}

/// The NodeImages a Node change concerns: the one driving it, and every one whose selector matches it.
fn node_triggers(nis: &Store<NodeImage>, node: &Node) -> Vec<ObjectRef<NodeImage>> {
    let mut out: Vec<ObjectRef<NodeImage>> = node
        .annotations()
        .get(ANNOTATION_ROLLOUT_NODEIMAGE)
        .map(|o| ObjectRef::new(o))
        .into_iter()
        .collect();
    for ni in nis.state() {
        let sel = ni
            .spec
            .rollout
            .as_ref()
            .and_then(|r| r.node_selector.clone())
            .and_then(|s| Selector::try_from(s).ok());
        if sel.is_some_and(|s| s.matches(node.labels())) {
            out.push(ObjectRef::new(&ni.name_any()));
        }
    }
    out
}

/// The NodeImage a Pod change concerns: the one whose rollout has the pod's node in progress.
fn pod_trigger(nodes: &Store<Node>, pod: &Pod) -> Option<ObjectRef<NodeImage>> {
    let node = pod.spec.as_ref()?.node_name.as_deref()?;
    let n = nodes.get(&ObjectRef::new(node))?;
    let ann = n.annotations();
    let state = ann
        .get(ANNOTATION_ROLLOUT_STATE)
        .and_then(|s| NodeState::parse(s))?;
    state
        .in_progress()
        .then(|| ann.get(ANNOTATION_ROLLOUT_NODEIMAGE))
        .flatten()
        .map(|o| ObjectRef::new(o))
}

/// Keeps of a Node what the planner reads (labels, annotations, cordon, conditions).
fn slim_node(n: &mut Node) {
    n.metadata.managed_fields = None;
    if let Some(st) = n.status.as_mut() {
        *st = k8s_openapi::api::core::v1::NodeStatus {
            conditions: st.conditions.take(),
            ..Default::default()
        };
    }
    if let Some(spec) = n.spec.as_mut() {
        *spec = k8s_openapi::api::core::v1::NodeSpec {
            unschedulable: spec.unschedulable,
            ..Default::default()
        };
    }
}

/// Keeps of a Pod what the planner reads (owners, labels, the mirror annotation, node, phase, conditions).
fn slim_pod(p: &mut Pod) {
    p.metadata.managed_fields = None;
    if let Some(a) = p.metadata.annotations.as_mut() {
        a.retain(|k, _| k == super::view::MIRROR_POD_ANNOTATION);
    }
    if let Some(spec) = p.spec.as_mut() {
        *spec = k8s_openapi::api::core::v1::PodSpec {
            node_name: spec.node_name.take(),
            ..Default::default()
        };
    }
    if let Some(st) = p.status.as_mut() {
        *st = k8s_openapi::api::core::v1::PodStatus {
            phase: st.phase.take(),
            conditions: st.conditions.take(),
            ..Default::default()
        };
    }
}

/// Runs the controller until `shutdown` resolves; then finishes the reconciliations in flight.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let Some(w) = ctx.writers.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        warn!("the rollout controller of this context already ran");
        return;
    };
    let client = ctx.client.clone();
    let cfg = watcher::Config::default();
    let nis = reflector::reflector(
        w.nodeimages,
        watcher(Api::<NodeImage>::all(client.clone()), cfg.clone()),
    )
    .default_backoff()
    .applied_objects();
    let nodes = reflector::reflector(
        w.nodes,
        watcher(Api::<Node>::all(client.clone()), cfg.clone()).modify(slim_node),
    )
    .default_backoff()
    .touched_objects();
    let running = cfg
        .clone()
        .fields("status.phase!=Succeeded,status.phase!=Failed");
    let pods = reflector::reflector(
        w.pods,
        watcher(Api::<Pod>::all(client.clone()), running).modify(slim_pod),
    )
    .default_backoff()
    .touched_objects();
    let pdbs = reflector::reflector(
        w.pdbs,
        watcher(Api::<PodDisruptionBudget>::all(client), cfg),
    )
    .default_backoff()
    .touched_objects();
    let ni_store = ctx.nodeimages.clone();
    let node_store = ctx.nodes.clone();
    Controller::for_stream(nis, ctx.nodeimages.clone())
        .watches_stream(nodes, move |n| node_triggers(&ni_store, &n))
        .watches_stream(pods, move |p| pod_trigger(&node_store, &p))
        // Blocked evictions are retried on the drain's poll; PDB changes only need to be in the cache.
        .watches_stream(pdbs, |_| None::<ObjectRef<NodeImage>>)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(name = %obj.name, "rollout reconciled"),
                Err(e) => tracing::debug!(error = %e, "rollout reconcile error"),
            }
        })
        .instrument(tracing::info_span!("rollout-controller"))
        .await;
}
