//! `kitfleet-node-agent cleanup-nodes`: the chart's pre-delete hook. Stops the builds first (deletes the operator's
//! Deployment and waits until its pods are gone, so no new build Job starts, then deletes the operator's build Jobs
//! and their pods and waits until those are gone: they are Kitfleet's workload too, and the NodeImages that own
//! them outlive the release with the CRDs), then stops the node agents (deletes the node
//! agent's and the upgrade agent's DaemonSets and waits until their pods are gone: a running agent would recreate
//! its TUN, state files and annotations), then runs `kitfleet-node-agent cleanup` on every Node in one privileged, host-network pod pinned to
//! it with `nodeName` (tolerating every taint: nodes lose their CNI during this), waits for all of them and reports
//! which node failed, with the tail of its log. The cleanup pods are deleted at the end either way.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::{Client, ResourceExt};

/// Label value (`app.kubernetes.io/component`) of the cleanup pods.
pub const COMPONENT: &str = "node-cleanup";

/// Errors of the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum NodesError {
    #[error("connecting to the apiserver: {0}")]
    Client(#[source] kube::Error),
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("the {what} pods ({selector}) are still there after {waited:?}: {pods}")]
    PodsRemain {
        what: &'static str,
        selector: String,
        waited: Duration,
        pods: String,
    },
    #[error("cleanup failed on {} node(s): {}\n{details}", nodes.len(), nodes.join(", "))]
    NodesFailed { nodes: Vec<String>, details: String },
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> NodesError {
    let what = what.into();
    move |source| NodesError::Kube { what, source }
}

/// `kitfleet-node-agent cleanup-nodes`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodesArgs {
    /// Namespace of the node agents and of the cleanup pods.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// Image of the cleanup pods (the node agent's).
    #[arg(long)]
    pub image: String,
    #[arg(long, default_value = "IfNotPresent")]
    pub image_pull_policy: String,
    #[arg(long = "image-pull-secret")]
    pub image_pull_secrets: Vec<String>,
    /// ServiceAccount of the cleanup pods: the node agent's, whose admission policy lets each pod change only its
    /// own Node's `agent.kitfleet.dev/` annotations.
    #[arg(long, default_value = "kitfleet-node-agent")]
    pub service_account: String,
    /// The operator's Deployment (it creates build Jobs), deleted first.
    #[arg(long, default_value = "kitfleet-operator")]
    pub operator_deployment: String,
    /// Label selector of the operator's pods (waited for until gone).
    #[arg(
        long,
        default_value = "app.kubernetes.io/name=kitfleet,app.kubernetes.io/component=operator"
    )]
    pub operator_selector: String,
    /// Label selector of the operator's build Jobs and their pods (deleted, waited for until gone).
    #[arg(long, default_value = "app.kubernetes.io/managed-by=kitfleet-operator")]
    pub build_selector: String,
    /// The DaemonSets that write node state (the node agent's, the upgrade agent's), deleted first.
    #[arg(
        long = "daemonset",
        default_values = ["kitfleet-node-agent", "kitfleet-node-upgrade"]
    )]
    pub daemonsets: Vec<String>,
    /// Label selector of their pods (waited for until gone).
    #[arg(
        long,
        default_value = "app.kubernetes.io/name=kitfleet,app.kubernetes.io/component in (node-agent,node-upgrade)"
    )]
    pub agent_selector: String,
    #[arg(long, default_value = "kfwg0")]
    pub interface: String,
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: String,
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: String,
    /// Overall budget (agents gone, every node cleaned), in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_seconds: u64,
}

fn selector() -> String {
    format!("app.kubernetes.io/name=kitfleet,app.kubernetes.io/component={COMPONENT}")
}

/// The cleanup pod for `node`.
pub fn cleanup_pod(a: &NodesArgs, node: &str) -> Pod {
    let args = [
        "/usr/local/bin/kitfleet-node-agent".to_string(),
        "cleanup".into(),
        "--host-root=/host".into(),
        format!("--interface={}", a.interface),
        format!("--cni-bin-dir={}", a.cni_bin_dir),
        format!("--cni-conf-dir={}", a.cni_conf_dir),
    ];
    let secrets: Vec<serde_json::Value> = (a.image_pull_secrets.iter())
        .map(|s| serde_json::json!({"name": s}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "kitfleet-cleanup-",
            "namespace": a.namespace,
            "labels": {"app.kubernetes.io/name": "kitfleet", "app.kubernetes.io/component": COMPONENT},
        },
        "spec": {
            "nodeName": node,
            "hostNetwork": true,
            "restartPolicy": "Never",
            "serviceAccountName": a.service_account,
            "priorityClassName": "system-node-critical",
            "tolerations": [{"operator": "Exists"}],
            "terminationGracePeriodSeconds": 5,
            "activeDeadlineSeconds": a.timeout_seconds.max(1),
            "imagePullSecrets": secrets,
            "containers": [{
                "name": "cleanup",
                "image": a.image,
                "imagePullPolicy": a.image_pull_policy,
                "command": args,
                "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                // Deleting links, routes and nft tables in the host namespace, and files anywhere below /host.
                "securityContext": {"privileged": true},
                "volumeMounts": [{"name": "host", "mountPath": "/host"}],
            }],
            "volumes": [{"name": "host", "hostPath": {"path": "/", "type": "Directory"}}],
        },
    }))
    .expect("a valid Pod")
}

/// How one node's cleanup ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed(String),
    Unfinished(String),
}

/// A pod's outcome so far: `None` while it runs.
pub fn outcome(pod: &Pod) -> Option<Outcome> {
    let status = pod.status.as_ref()?;
    match status.phase.as_deref() {
        Some("Succeeded") => Some(Outcome::Succeeded),
        Some("Failed") => {
            let why = (status.container_statuses.iter().flatten())
                .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
                .map(|t| {
                    format!(
                        "exit code {} ({})",
                        t.exit_code,
                        t.reason.clone().unwrap_or_default()
                    )
                })
                .next()
                .or_else(|| status.message.clone())
                .unwrap_or_else(|| "failed".into());
            Some(Outcome::Failed(why))
        }
        _ => None,
    }
}

async fn delete_cleanup_pods(pods: &Api<Pod>) -> Result<(), NodesError> {
    let lp = ListParams::default().labels(&selector());
    for p in pods
        .list(&lp)
        .await
        .map_err(kube_err("listing cleanup pods"))?
    {
        match pods
            .delete(&p.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(kube_err(format!("deleting pod {}", p.name_any()))(e)),
        }
    }
    Ok(())
}

/// Deletes `name` (a 404 is fine: already gone).
async fn delete_one<K>(api: &Api<K>, kind: &str, name: &str) -> Result<bool, NodesError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(kube_err(format!("deleting {kind} {name}"))(e)),
    }
}

/// Waits until no pod matches `selector`; with `delete`, deletes those still there on every round.
async fn wait_pods_gone(
    pods: &Api<Pod>,
    what: &'static str,
    selector: &str,
    delete: bool,
    deadline: Instant,
) -> Result<(), NodesError> {
    let lp = ListParams::default().labels(selector);
    let start = Instant::now();
    loop {
        let left = (pods.list(&lp).await).map_err(kube_err(format!("listing the {what} pods")))?;
        if left.items.is_empty() {
            tracing::info!(
                waited_ms = start.elapsed().as_millis() as u64,
                "{what} pods gone"
            );
            return Ok(());
        }
        if delete {
            for p in left
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
            {
                delete_one(pods, "pod", &p.name_any()).await?;
            }
        }
        if Instant::now() >= deadline {
            let names: Vec<String> = left.iter().map(|p| p.name_any()).collect();
            return Err(NodesError::PodsRemain {
                what,
                selector: selector.to_string(),
                waited: start.elapsed(),
                pods: names.join(", "),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Stops the operator (no new build Job), then deletes its build Jobs and their pods, while the pod network still
/// works (the kubelet tears a pod's sandbox down through the CNI plugin the node cleanup removes later).
async fn stop_builds(client: &Client, a: &NodesArgs, deadline: Instant) -> Result<(), NodesError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &a.namespace);
    if delete_one(&deployments, "Deployment", &a.operator_deployment).await? {
        tracing::info!(deployment = %a.operator_deployment, "operator Deployment deleted");
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &a.namespace);
    wait_pods_gone(&pods, "operator", &a.operator_selector, false, deadline).await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &a.namespace);
    let lp = ListParams::default().labels(&a.build_selector);
    let list = (jobs.list(&lp).await).map_err(kube_err("listing the build Jobs"))?;
    for j in &list {
        delete_one(&jobs, "Job", &j.name_any()).await?;
    }
    tracing::info!(jobs = list.items.len(), "build Jobs deleted");
    wait_pods_gone(&pods, "build", &a.build_selector, true, deadline).await
}

async fn stop_agents(client: &Client, a: &NodesArgs, deadline: Instant) -> Result<(), NodesError> {
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), &a.namespace);
    for name in &a.daemonsets {
        if delete_one(&ds, "DaemonSet", name).await? {
            tracing::info!(daemonset = %name, "DaemonSet deleted");
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &a.namespace);
    wait_pods_gone(&pods, "node agents'", &a.agent_selector, false, deadline).await
}

/// Stops the agents, cleans every node, reports. Returns the nodes cleaned.
pub async fn clean_all(client: &Client, a: &NodesArgs) -> Result<Vec<String>, NodesError> {
    let deadline = Instant::now() + Duration::from_secs(a.timeout_seconds);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &a.namespace);
    delete_cleanup_pods(&pods).await?;
    stop_builds(client, a, deadline).await?;
    stop_agents(client, a, deadline).await?;
    let nodes: Vec<String> = (Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await)
        .map_err(kube_err("listing Nodes"))?
        .iter()
        .map(|n| n.name_any())
        .collect();
    let mut by_pod = BTreeMap::new();
    for node in &nodes {
        let created = (pods
            .create(&PostParams::default(), &cleanup_pod(a, node))
            .await)
            .map_err(kube_err(format!(
                "creating the cleanup pod for node {node}"
            )))?;
        by_pod.insert(created.name_any(), node.clone());
    }
    let mut done: BTreeMap<String, Outcome> = BTreeMap::new();
    while done.len() < by_pod.len() && Instant::now() < deadline {
        let lp = ListParams::default().labels(&selector());
        for p in pods
            .list(&lp)
            .await
            .map_err(kube_err("listing cleanup pods"))?
        {
            if let (Some(node), Some(o)) = (by_pod.get(&p.name_any()), outcome(&p)) {
                done.entry(node.clone()).or_insert(o);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut failed = Vec::new();
    let mut details = String::new();
    for (pod, node) in &by_pod {
        let o = done.get(node).cloned().unwrap_or_else(|| {
            Outcome::Unfinished(format!("not finished within {}s", a.timeout_seconds))
        });
        let log = (pods
            .logs(
                pod,
                &LogParams {
                    tail_lines: Some(20),
                    ..Default::default()
                },
            )
            .await)
            .unwrap_or_else(|e| format!("(no log: {e})"));
        match &o {
            Outcome::Succeeded => {
                for l in log.lines() {
                    println!("{l}");
                }
            }
            Outcome::Failed(why) | Outcome::Unfinished(why) => {
                failed.push(node.clone());
                details.push_str(&format!("--- node {node} (pod {pod}): {why}\n{log}\n"));
            }
        }
    }
    delete_cleanup_pods(&pods).await?;
    if failed.is_empty() {
        Ok(nodes)
    } else {
        Err(NodesError::NodesFailed {
            nodes: failed,
            details,
        })
    }
}

/// Runs `cleanup-nodes` and prints its outcome.
pub fn run(a: NodesArgs) -> Result<(), NodesError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NodesError::Runtime)?;
    let start = Instant::now();
    let nodes = rt.block_on(async {
        let client = Client::try_default().await.map_err(NodesError::Client)?;
        clean_all(&client, &a).await
    })?;
    println!(
        "kitfleet-node-agent cleanup-nodes: {} node(s) cleaned in {} ms: {}",
        nodes.len(),
        start.elapsed().as_millis(),
        nodes.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: NodesArgs,
    }

    #[test]
    fn the_cleanup_pod_is_pinned_privileged_and_tolerates_everything() {
        let t = T::parse_from([
            "t",
            "--namespace=kf",
            "--image=reg/node-agent:1",
            "--image-pull-secret=s1",
        ]);
        let p = serde_json::to_value(cleanup_pod(&t.a, "worker-1")).unwrap();
        let spec = &p["spec"];
        assert_eq!(spec["nodeName"], "worker-1");
        assert_eq!(spec["hostNetwork"], true);
        assert_eq!(
            spec["tolerations"],
            serde_json::json!([{"operator": "Exists"}])
        );
        assert_eq!(spec["serviceAccountName"], "kitfleet-node-agent");
        assert_eq!(
            spec["imagePullSecrets"],
            serde_json::json!([{"name": "s1"}])
        );
        let c = &spec["containers"][0];
        assert_eq!(c["image"], "reg/node-agent:1");
        assert_eq!(c["securityContext"]["privileged"], true);
        assert_eq!(c["command"][1], "cleanup");
        assert_eq!(spec["volumes"][0]["hostPath"]["path"], "/");
        assert_eq!(p["metadata"]["namespace"], "kf");
        assert_eq!(
            t.a.daemonsets,
            ["kitfleet-node-agent", "kitfleet-node-upgrade"]
        );
        assert_eq!(t.a.operator_deployment, "kitfleet-operator");
        // The build Jobs' label (operator build/job.rs `labels`) and the chart's operator pod labels.
        assert_eq!(
            t.a.build_selector,
            format!(
                "{}={}",
                kitfleet_api::constants::LABEL_MANAGED_BY,
                kitfleet_api::constants::OPERATOR_FIELD_MANAGER
            )
        );
    }

    #[test]
    fn outcomes() {
        let pod = |v: serde_json::Value| -> Pod { serde_json::from_value(v).unwrap() };
        assert_eq!(outcome(&pod(serde_json::json!({"metadata": {}}))), None);
        assert_eq!(
            outcome(&pod(serde_json::json!({"status": {"phase": "Running"}}))),
            None
        );
        assert_eq!(
            outcome(&pod(serde_json::json!({"status": {"phase": "Succeeded"}}))),
            Some(Outcome::Succeeded)
        );
        let failed = pod(
            serde_json::json!({"status": {"phase": "Failed", "containerStatuses": [{
            "name": "cleanup", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}}),
        );
        assert_eq!(
            outcome(&failed),
            Some(Outcome::Failed("exit code 1 (Error)".into()))
        );
        let deadline =
            pod(serde_json::json!({"status": {"phase": "Failed", "message": "deadline exceeded"}}));
        assert_eq!(
            outcome(&deadline),
            Some(Outcome::Failed("deadline exceeded".into()))
        );
    }
}
