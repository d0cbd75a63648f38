//! The NodeImage KSPP status (issue 16 item 4; runs on the leader): watches NodeImages and Nodes, and after every
//! change (debounced) sums up, per NodeImage, the `KitfleetHardened` conditions of the nodes its
//! `rollout.nodeSelector` selects ([`summary`], pure) into `status.hardening`.
//!
//! `status.hardening` has its own writer: server-side apply of that one field under the field manager
//! [`FIELD_MANAGER`], so the build controller's applies (`kitfleet-operator`, which leave the field out, see
//! [`without_hardening`]) and the rollout controller's merge patches (`kitfleet-rollout`: `nodes`, `failures`,
//! `conditions`) never remove or overwrite it, and it never touches theirs. No condition is added: `conditions` is
//! an atomic list, so applying one would take the whole list from the other controllers.

pub mod summary;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeStatus};
use kitfleet_api::NodeImage;
use kitfleet_api::constants::CONDITION_KITFLEET_HARDENED;
use kitfleet_api::nodeimage::{HardeningStatus, NodeImageStatus};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::wake;
use summary::NodeView;

/// The field manager of `status.hardening` (and of nothing else).
pub const FIELD_MANAGER: &str = "kitfleet-hardening";

/// Why a status could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum HardeningError {
    /// The status patch failed.
    #[error("applying status.hardening of NodeImage {name}: {source}")]
    Patch {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct HardeningSettings {
    /// Wait this long after a change before recomputing (changes in between are folded in).
    pub debounce: Duration,
    /// Recompute at least this often.
    pub resync: Duration,
}

impl Default for HardeningSettings {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(500),
            resync: Duration::from_secs(120),
        }
    }
}

/// `status` as the build controller applies it: without `hardening`, which it must never own (it reads the whole
/// status from its cache, so a copy of the field would be stale).
pub fn without_hardening(status: &NodeImageStatus) -> NodeImageStatus {
    NodeImageStatus {
        hardening: None,
        ..status.clone()
    }
}

/// A Node cut down to what the summary reads (the reflector keeps only this: labels and the one condition).
fn trim_node(n: &mut Node) {
    n.metadata.managed_fields = None;
    n.metadata.annotations = None;
    n.spec = None;
    let cond = (n.status.take())
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .find(|c| c.type_ == CONDITION_KITFLEET_HARDENED);
    n.status = Some(NodeStatus {
        conditions: Some(cond.into_iter().collect()),
        ..Default::default()
    });
}

/// A (trimmed) Node's view.
pub fn node_view(n: &Node) -> NodeView {
    NodeView {
        name: n.name_any(),
        labels: n.labels().clone(),
        condition: (n.status.as_ref().and_then(|s| s.conditions.as_ref()))
            .and_then(|cs| cs.iter().find(|c| c.type_ == CONDITION_KITFLEET_HARDENED))
            .cloned(),
    }
}

/// Runs the controller until `shutdown` completes.
pub async fn run(client: Client, settings: HardeningSettings, shutdown: impl Future<Output = ()>) {
    let changed = Arc::new(Notify::new());
    let (images, iw) = reflector::store::<NodeImage>();
    let (nodes, nw) = reflector::store::<Node>();
    let image_stream = watcher(Api::<NodeImage>::all(client.clone()), Default::default())
        .default_backoff()
        .modify(|ni| ni.metadata.managed_fields = None);
    let node_stream = watcher(Api::<Node>::all(client.clone()), Default::default())
        .default_backoff()
        .modify(trim_node);
    let tasks = [
        tokio::spawn(wake::notify_each(
            reflector::reflector(iw, image_stream),
            changed.clone(),
            "NodeImage",
        )),
        tokio::spawn(wake::notify_each(
            reflector::reflector(nw, node_stream),
            changed.clone(),
            "Node",
        )),
    ];
    info!("starting the NodeImage KSPP status controller");
    let (debounce, resync) = (settings.debounce, settings.resync);
    let mut passes = wake::Passes::new(changed, debounce, resync, shutdown);
    while passes.next().await {
        pass(&client, &images, &nodes).await;
    }
    for t in tasks {
        t.abort();
    }
}

/// One recompute of every NodeImage; writes only the summaries that changed.
async fn pass(client: &Client, images: &Store<NodeImage>, nodes: &Store<Node>) {
    let views: Vec<NodeView> = nodes.state().iter().map(|n| node_view(n)).collect();
    let mut written = 0;
    for ni in images.state() {
        if ni.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let want = summary::summarize(&ni.spec, &views);
        let have = ni.status.as_ref().and_then(|s| s.hardening.as_ref());
        if want.as_ref() == have {
            continue;
        }
        match apply(client, &ni.name_any(), want.as_ref()).await {
            Ok(()) => written += 1,
            Err(e) => warn!(error = %e, "KSPP status"),
        }
    }
    debug!(
        nodeimages = images.state().len(),
        nodes = views.len(),
        written,
        "KSPP statuses recomputed"
    );
}

/// Server-side-applies `status.hardening` of NodeImage `name` under [`FIELD_MANAGER`]; `None` removes it (the
/// apply then names no field, and the manager owns nothing). A NodeImage deleted meanwhile is not an error.
pub async fn apply(
    client: &Client,
    name: &str,
    hardening: Option<&HardeningStatus>,
) -> Result<(), HardeningError> {
    let api: Api<NodeImage> = Api::all(client.clone());
    let status = match hardening {
        Some(h) => serde_json::json!({ "hardening": h }),
        None => serde_json::json!({}),
    };
    let body = serde_json::json!({
        "apiVersion": "kitfleet.dev/v1alpha1",
        "kind": "NodeImage",
        "metadata": {"name": name},
        "status": status,
    });
    match api
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(HardeningError::Patch {
            name: name.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests;
