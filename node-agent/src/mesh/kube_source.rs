//! Nodes from the apiserver: a kube-runtime watcher over `v1/Node`, and a server-side-apply patch
//! for this node's annotations.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};

use super::source::{NodeSource, SourceError};

/// Field manager of the agent's server-side-apply patches.
pub const FIELD_MANAGER: &str = "kitfleet-node-agent";

type EventStream = Pin<Box<dyn Stream<Item = Result<Event<Node>, watcher::Error>> + Send>>;

/// Watches every Node; publishes with server-side apply.
pub struct KubeSource {
    api: Api<Node>,
    stream: EventStream,
    nodes: BTreeMap<String, Node>,
    pending: BTreeMap<String, Node>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

impl KubeSource {
    pub fn new(client: Client) -> Self {
        let api = Api::<Node>::all(client);
        let stream = watcher::watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .boxed();
        KubeSource {
            api,
            stream,
            nodes: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    fn snapshot(&self) -> Vec<Node> {
        self.nodes.values().cloned().collect()
    }
}

impl NodeSource for KubeSource {
    async fn next(&mut self) -> Result<Vec<Node>, SourceError> {
        loop {
            match self.stream.next().await {
                Some(Ok(Event::Init)) => self.pending.clear(),
                Some(Ok(Event::InitApply(n))) => {
                    self.pending.insert(n.name_any(), n);
                }
                Some(Ok(Event::InitDone)) => {
                    self.nodes = std::mem::take(&mut self.pending);
                    return Ok(self.snapshot());
                }
                Some(Ok(Event::Apply(n))) => {
                    self.nodes.insert(n.name_any(), n);
                    return Ok(self.snapshot());
                }
                Some(Ok(Event::Delete(n))) => {
                    self.nodes.remove(&n.name_any());
                    return Ok(self.snapshot());
                }
                Some(Err(e)) => {
                    // The watcher retries by itself (with backoff); keep the last view meanwhile.
                    tracing::warn!(error = %e, "Node watch error; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => return Err(SourceError::Watch("the Node watch stream ended".into())),
            }
        }
    }

    async fn publish(
        &mut self,
        node: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<(), SourceError> {
        let patch = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": node, "annotations": annotations },
        });
        self.api
            .patch(
                node,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "kube_source_tests.rs"]
mod tests;
