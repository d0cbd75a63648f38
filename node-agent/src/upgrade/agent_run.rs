//! The upgrade agent's loop against the apiserver: a watch on this node's own Node only (field selector
//! `metadata.name=<node>`), one [`Agent::step`] per change (and again after a transient error, with backoff), and a
//! server-side apply of the agent's keys under its own field manager whenever they differ from the Node's.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;

use super::agent::{Agent, AgentError, FIELD_MANAGER, Outcome, published};
use super::node_exec::NodeExecutor;

/// Errors that end the loop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("the watch on Node {0} ended")]
    WatchEnded(String),
}

/// Publishes the agent's annotations on the Node.
pub trait Publisher {
    fn publish(
        &mut self,
        node: &str,
        annotations: &BTreeMap<String, String>,
    ) -> impl std::future::Future<Output = Result<(), kube::Error>>;
}

/// Server-side apply with [`FIELD_MANAGER`]: keys the agent no longer sets are removed by the apply itself.
#[derive(Debug)]
pub struct KubePublisher(pub Api<Node>);

impl Publisher for KubePublisher {
    async fn publish(
        &mut self,
        node: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<(), kube::Error> {
        let patch = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": node, "annotations": annotations },
        });
        self.0
            .patch(
                node,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        Ok(())
    }
}

/// Backoff after the `n`th consecutive transient error: 1 s doubling, at most 60 s.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.min(6)).min(Duration::from_secs(60))
}

/// One pass: step, then publish what changed. Returns when to look again without a Node change.
pub async fn pass<E: NodeExecutor, P: Publisher>(
    agent: &mut Agent<E>,
    publisher: &mut P,
    node_name: &str,
    node: &Node,
    failures: &mut u32,
) -> Result<Option<Duration>, AgentError> {
    let outcome = agent.step(node, Timestamp::now())?;
    let mut again = match &outcome {
        Outcome::Retry(_) => {
            *failures += 1;
            Some(backoff(*failures))
        }
        Outcome::Waiting(why) => {
            tracing::info!(%why, "waiting");
            None
        }
        // The kind executor confirms its restart from a later Node status; look again soon.
        Outcome::Activated(_) => Some(Duration::from_secs(2)),
        _ => {
            *failures = 0;
            None
        }
    };
    if !matches!(outcome, Outcome::Idle) {
        tracing::info!(?outcome, "step");
    }
    let want = agent.annotations(node);
    if want != published(node) {
        tracing::info!(?want, "publishing");
        if let Err(e) = publisher.publish(node_name, &want).await {
            tracing::warn!(error = %e, "publishing failed; retrying");
            again = Some(again.unwrap_or(backoff(1)).min(backoff(1)));
        }
    }
    Ok(again)
}

/// Runs until `shutdown`: watches `node_name`, steps the agent on every change and publishes its keys.
pub async fn run<E: NodeExecutor>(
    client: kube::Client,
    node_name: &str,
    mut agent: Agent<E>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let api: Api<Node> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let mut events = watcher::watcher(api.clone(), cfg)
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut publisher = KubePublisher(api);
    let mut node: Option<Node> = None;
    let mut again: Option<Duration> = None;
    let mut failures = 0u32;
    tokio::pin!(shutdown);
    loop {
        let wait = again;
        let timer = async move {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            ev = events.next() => match ev {
                Some(Ok(n)) => node = Some(n),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Node watch error; the watcher retries");
                    continue;
                }
                None => return Err(RunError::WatchEnded(node_name.to_string())),
            },
            () = timer => {}
        }
        if let Some(n) = &node {
            again = pass(&mut agent, &mut publisher, node_name, n, &mut failures).await?;
        }
    }
}
