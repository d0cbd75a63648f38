//! The SecurityPolicy status controller (runs on the leader): watches SecurityPolicies, Pods and Nodes, and after
//! every change (debounced) recomputes each policy's status from the pods its selector matches and the nodes'
//! sandbox reports ([`status`], pure), applies it when it differs (server-side apply on `/status`), and publishes a
//! Warning Event `PodRefused` on the policy for every pod a node reports refused (once per pod, stage and reason
//! while this replica leads).

pub mod status;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kitfleet_api::SecurityPolicy;
use kitfleet_api::constants::{ANNOTATION_SANDBOX_REPORT, OPERATOR_FIELD_MANAGER};
use kitfleet_api::security::NodeSandboxReport;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::wake;
use status::{NodeView, PodView};

/// Why a status could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The status patch failed.
    #[error("applying the status of SecurityPolicy {namespace}/{name}: {source}")]
    Patch {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The error.
        source: kube::Error,
    },
}

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// Wait this long after a change before recomputing (changes in between are folded in).
    pub debounce: Duration,
    /// Recompute at least this often.
    pub resync: Duration,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(300),
            resync: Duration::from_secs(60),
        }
    }
}

fn pod_view(p: &Pod) -> PodView {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    PodView {
        namespace: p.namespace().unwrap_or_default(),
        labels: p.labels().clone(),
        live: p.metadata.deletion_timestamp.is_none()
            && !matches!(phase, Some("Succeeded" | "Failed")),
    }
}

/// A node's view; a report that does not parse counts as none (logged once per change by the caller's debug).
pub fn node_view(n: &Node) -> NodeView {
    let report = n
        .annotations()
        .get(ANNOTATION_SANDBOX_REPORT)
        .and_then(|v| serde_json::from_str::<NodeSandboxReport>(v).ok());
    NodeView {
        name: n.name_any(),
        report,
    }
}

fn watch_into<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    changed: Arc<Notify>,
    what: &'static str,
) -> impl Future<Output = ()>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    wake::notify_each(stream, changed, what)
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    client: Client,
    identity: &str,
    settings: PolicySettings,
    shutdown: impl Future<Output = ()>,
) {
    let changed = Arc::new(Notify::new());
    let (policies, pw) = reflector::store::<SecurityPolicy>();
    let (pods, podw) = reflector::store::<Pod>();
    let (nodes, nw) = reflector::store::<Node>();
    let tasks = [
        tokio::spawn(watch_into(
            Api::<SecurityPolicy>::all(client.clone()),
            pw,
            changed.clone(),
            "SecurityPolicy",
        )),
        tokio::spawn(watch_into(
            Api::<Pod>::all(client.clone()),
            podw,
            changed.clone(),
            "Pod",
        )),
        tokio::spawn(watch_into(
            Api::<Node>::all(client.clone()),
            nw,
            changed.clone(),
            "Node",
        )),
    ];
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: OPERATOR_FIELD_MANAGER.into(),
            instance: Some(identity.to_string()),
        },
    );
    let mut ctl = Controller {
        client,
        recorder,
        emitted: HashSet::new(),
    };
    info!("starting the SecurityPolicy status controller");
    let (debounce, resync) = (settings.debounce, settings.resync);
    let mut passes = wake::Passes::new(changed, debounce, resync, shutdown);
    while passes.next().await {
        ctl.pass(&policies, &pods, &nodes).await;
    }
    for t in tasks {
        t.abort();
    }
}

struct Controller {
    client: Client,
    recorder: Recorder,
    /// (policy uid, pod uid, stage, reason) of the Events published.
    emitted: HashSet<(String, String, String, String)>,
}

impl Controller {
    /// One recompute of every policy.
    async fn pass(
        &mut self,
        policies: &Store<SecurityPolicy>,
        pods: &Store<Pod>,
        nodes: &Store<Node>,
    ) {
        let pods: Vec<PodView> = pods.state().iter().map(|p| pod_view(p)).collect();
        let nodes: Vec<NodeView> = nodes.state().iter().map(|n| node_view(n)).collect();
        let now = Time(Timestamp::now());
        let mut seen = HashSet::new();
        for p in policies.state() {
            if p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let uid = p.uid().unwrap_or_default();
            let new = status::status(&p, &pods, &nodes, p.status.as_ref(), &now);
            if p.status.as_ref() != Some(&new)
                && let Err(e) = apply(&self.client, &p, &new).await
            {
                warn!(error = %e, "SecurityPolicy status");
            }
            for r in status::refusals(&p, &nodes) {
                let key = (
                    uid.clone(),
                    r.refusal.pod_uid.clone(),
                    r.refusal.stage.clone(),
                    r.refusal.reason.clone(),
                );
                seen.insert(key.clone());
                if self.emitted.contains(&key) {
                    continue;
                }
                let ev = KubeEvent {
                    type_: EventType::Warning,
                    reason: "PodRefused".into(),
                    note: Some(clamp(&r.note(), 1024)),
                    action: "Enforce".into(),
                    secondary: None,
                };
                match self.recorder.publish(&ev, &p.object_ref(&())).await {
                    Ok(()) => {
                        info!(policy = %p.name_any(), pod = %r.refusal.pod, node = %r.node, "PodRefused Event");
                        self.emitted.insert(key);
                    }
                    Err(e) => warn!(error = %e, "could not publish the PodRefused Event"),
                }
            }
        }
        // Forget refusals no node reports any more (the set stays bounded by what the reports hold).
        self.emitted.retain(|k| seen.contains(k));
        debug!(
            policies = policies.state().len(),
            "SecurityPolicy statuses recomputed"
        );
    }
}

fn clamp(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Applies `status` to the policy's `/status` (server-side apply, the operator's field manager).
pub async fn apply(
    client: &Client,
    p: &SecurityPolicy,
    status: &kitfleet_api::SecurityPolicyStatus,
) -> Result<(), PolicyError> {
    let ns = p.namespace().unwrap_or_default();
    let name = p.name_any();
    let api: Api<SecurityPolicy> = Api::namespaced(client.clone(), &ns);
    let body = serde_json::json!({
        "apiVersion": "kitfleet.dev/v1alpha1",
        "kind": "SecurityPolicy",
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
    .map_err(|source| PolicyError::Patch {
        namespace: ns,
        name,
        source,
    })
}
