//! The rollout controller against a real kube-apiserver (the `kitfleet-e2e` fixture), running under the chart's
//! operator RBAC (its ServiceAccount, the ClusterRole rendered by `helm`). No kubelet, scheduler or
//! controller-manager runs: the test creates the Nodes and sets their `Ready` condition, binds Pods to them
//! (`nodeName`, owner references, phase `Running` and `Ready`, which is what makes the Eviction API consult the
//! PodDisruptionBudgets), writes the budgets' status itself (the disruption controller's part), finishes evicted pods
//! (the kubelet's part: a graceful deletion completed with grace 0) and plays the node agent (writes
//! `agent.kitfleet.dev/staged-build-key` once a node is asked for a key, `…/booted-build-key` once it is `Rebooting`).
//!
//! Scenarios, in order, on one controller: (a) three nodes, `maxUnavailable: 1` → `Done` on every node, never more
//! than one cordoned, all uncordoned, the agent contract keys written, status counts and one Event per transition;
//! (b) a PDB that allows no disruption → the drain waits, times out, the node `Failed`, the rollout halts
//! (`Degraded`, `status.failures`) with no other node cordoned; fixing the PDB and setting `kitfleet.dev/retry`
//! finishes it; (c) pausing mid-drain starts no other node and leaves no node cordoned once the drain finishes;
//! deleting a NodeImage mid-drain uncordons and releases its node before it goes; (d) two NodeImages selecting one
//! node → the later one `Degraded` naming the conflict, and it touches no shared node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kitfleet_api::NodeImage;
use kitfleet_api::constants::{
    ANNOTATION_BOOTED_BUILD_KEY, ANNOTATION_CORDONED, ANNOTATION_DESIRED_ARTIFACT,
    ANNOTATION_DESIRED_BUILD_KEY, ANNOTATION_ROLLOUT_NODEIMAGE, ANNOTATION_ROLLOUT_STATE,
    ANNOTATION_STAGED_BUILD_KEY, ANNOTATION_UPGRADE_METHOD,
};
use kitfleet_e2e::apiserver;
use kitfleet_operator::build::registry::artifact_tag;
use kitfleet_operator::metrics::Metrics;
use kitfleet_operator::rollout::controller::{self, Context};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

mod common;
use common::{NS, apply_chart_rbac};

const KEY: &str = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12";
const DIGEST: &str = "sha256:cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";
const OLD: &str = "0000000000000000000000000000000000000000000000000000000000000000";

async fn wait<T>(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ann<'a>(n: &'a Node, k: &str) -> Option<&'a str> {
    n.annotations().get(k).map(String::as_str)
}

fn cordoned(n: &Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

fn cond(ni: &NodeImage, t: &str) -> Option<(String, String, String)> {
    ni.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

struct Env {
    admin: Client,
    nis: Api<NodeImage>,
    nodes: Api<Node>,
}

impl Env {
    /// Nodes labelled `kitfleet.dev/pool=<pool>`, Ready, booted on the old key.
    async fn nodes(&self, pool: &str, n: usize) -> Vec<String> {
        let mut names = Vec::new();
        for i in 1..=n {
            let name = format!("{pool}-{i}");
            let node: Node = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"kitfleet.dev/pool": pool},
                             "annotations": {ANNOTATION_BOOTED_BUILD_KEY: OLD}},
            }))
            .unwrap();
            self.nodes
                .create(&PostParams::default(), &node)
                .await
                .unwrap();
            let t = k8s_openapi::jiff::Timestamp::now().to_string();
            let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "test", "lastHeartbeatTime": t, "lastTransitionTime": t}]}});
            self.nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .unwrap();
            names.push(name);
        }
        names
    }

    /// A running, Ready pod on `node`, owned by a (fictitious) ReplicaSet.
    async fn pod(&self, ns: &str, name: &str, node: &str, app: &str) {
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), ns);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": app},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": app,
                    "uid": "6b1f3c1e-0000-4000-8000-000000000001", "controller": true}]},
            "spec": {"nodeName": node, "automountServiceAccountToken": false,
                     "containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let t = k8s_openapi::jiff::Timestamp::now().to_string();
        let status = json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": t}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    /// A NodeImage rolled onto `pool` whose artifact for [`KEY`] is published (the build controller's part).
    async fn nodeimage(&self, name: &str, pool: &str, rollout: Value) -> NodeImage {
        let mut r = json!({"nodeSelector": {"matchLabels": {"kitfleet.dev/pool": pool}}});
        r.as_object_mut()
            .unwrap()
            .extend(rollout.as_object().unwrap().clone());
        let ni: NodeImage = serde_json::from_value(json!({
            "apiVersion": "kitfleet.dev/v1alpha1", "kind": "NodeImage",
            "metadata": {"name": name},
            "spec": {"kernel": {"image": "127.0.0.1:5000/fixtures/kernel:6.1"},
                     "init": ["127.0.0.1:5000/fixtures/init:v1"], "formats": ["kernel+initrd"],
                     "output": {"repository": format!("127.0.0.1:5000/kitfleet/{name}")},
                     "rollout": r},
        }))
        .unwrap();
        self.nis.create(&PostParams::default(), &ni).await.unwrap();
        let key = format!("sha256:{KEY}");
        let reference = format!(
            "127.0.0.1:5000/kitfleet/{name}:{}@{DIGEST}",
            artifact_tag(&key)
        );
        let status = json!({"status": {"buildKey": key, "artifact": {
            "reference": reference, "digest": DIGEST, "shortDigest": &DIGEST[7..19]}}});
        self.nis
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap()
    }

    async fn until(&self, name: &str, what: &str, f: impl Fn(&NodeImage) -> bool) -> NodeImage {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ni = self.nis.get_opt(name).await.unwrap();
            if let Some(ni) = ni.as_ref().filter(|n| f(n)) {
                return ni.clone();
            }
            if Instant::now() > deadline {
                let nodes: Vec<_> = self
                    .nodes
                    .list(&ListParams::default())
                    .await
                    .unwrap()
                    .items
                    .into_iter()
                    .map(|n| (n.name_any(), cordoned(&n), n.metadata.annotations))
                    .collect();
                panic!(
                    "timed out waiting until {what}: status {:?}; nodes {nodes:?}",
                    ni.and_then(|n| n.status)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn pool(&self, pool: &str) -> Vec<Node> {
        self.nodes
            .list(&ListParams::default().labels(&format!("kitfleet.dev/pool={pool}")))
            .await
            .unwrap()
            .items
    }

    async fn events(&self, name: &str, reason: &str) -> Vec<Event> {
        let ev: Api<Event> = Api::namespaced(self.admin.clone(), "default");
        ev.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                    && e.reason.as_deref() == Some(reason)
            })
            .collect()
    }
}

impl Env {
    /// A PodDisruptionBudget over `app` whose status (the disruption controller's part) allows `allowed`.
    async fn pdb(&self, ns: &str, app: &str, allowed: i32) {
        let api: Api<PodDisruptionBudget> = Api::namespaced(self.admin.clone(), ns);
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": app},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": app}}},
        }))
        .unwrap();
        api.create(&PostParams::default(), &pdb).await.unwrap();
        self.pdb_allows(ns, app, allowed).await;
    }

    async fn pdb_allows(&self, ns: &str, name: &str, allowed: i32) {
        let api: Api<PodDisruptionBudget> = Api::namespaced(self.admin.clone(), ns);
        let pdb = api.get(name).await.unwrap();
        let status = json!({"status": {"observedGeneration": pdb.metadata.generation,
            "disruptionsAllowed": allowed, "currentHealthy": 2, "desiredHealthy": 1, "expectedPods": 2}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    async fn namespace(&self, ns: &str) {
        apiserver::ensure_namespace(&self.admin, ns).await.unwrap();
        apiserver::ensure_service_account(&self.admin, ns, "default")
            .await
            .unwrap();
    }

    async fn node_until(&self, name: &str, what: &str, f: impl Fn(&Node) -> bool) -> Node {
        let nodes = self.nodes.clone();
        wait(what, 60, async || {
            nodes.get(name).await.ok().filter(|n| f(n))
        })
        .await
    }

    async fn patch_ni(&self, name: &str, patch: Value) {
        self.nis
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
}

/// Plays the node agents and the kubelets until `stop`: stages what a node is asked for, boots it once the node
/// is `Rebooting`, and completes the graceful deletion of evicted pods.
fn spawn_agents(admin: Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let nodes: Api<Node> = Api::all(admin.clone());
        let pods: Api<Pod> = Api::all(admin.clone());
        while !stop.load(Ordering::Relaxed) {
            // A failed list (the fixture under load) is retried on the next round, as a kubelet would.
            let listed = nodes.list(&ListParams::default()).await;
            for n in listed.map(|l| l.items).unwrap_or_default() {
                let Some(want) = ann(&n, ANNOTATION_DESIRED_BUILD_KEY) else {
                    continue;
                };
                let mut set = BTreeMap::new();
                if ann(&n, ANNOTATION_STAGED_BUILD_KEY) != Some(want) {
                    set.insert(ANNOTATION_STAGED_BUILD_KEY, want);
                }
                if ann(&n, ANNOTATION_ROLLOUT_STATE) == Some("Rebooting")
                    && ann(&n, ANNOTATION_BOOTED_BUILD_KEY) != Some(want)
                {
                    set.insert(ANNOTATION_BOOTED_BUILD_KEY, want);
                }
                if !set.is_empty() {
                    let p = json!({"metadata": {"annotations": set}});
                    let pp = PatchParams::apply("kitfleet-node-agent");
                    let _ = nodes
                        .patch(
                            &n.name_any(),
                            &PatchParams {
                                field_manager: pp.field_manager,
                                ..Default::default()
                            },
                            &Patch::Merge(&p),
                        )
                        .await;
                }
            }
            let listed = pods.list(&ListParams::default()).await;
            for p in listed.map(|l| l.items).unwrap_or_default() {
                if p.metadata.deletion_timestamp.is_some() {
                    let api: Api<Pod> =
                        Api::namespaced(admin.clone(), p.metadata.namespace.as_deref().unwrap());
                    let _ = api
                        .delete(&p.name_any(), &DeleteParams::default().grace_period(0))
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    })
}

/// Samples how many nodes of `pool` are cordoned at once, until `stop`.
fn spawn_budget_watch(
    nodes: Api<Node>,
    pool: &'static str,
    stop: Arc<AtomicBool>,
    max: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let lp = ListParams::default().labels(&format!("kitfleet.dev/pool={pool}"));
            let items = nodes.list(&lp).await.map(|l| l.items).unwrap_or_default();
            let n = items.iter().filter(|n| cordoned(n)).count();
            max.fetch_max(n, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolls_nodes_out_against_a_real_apiserver() {
    let Some(api) = apiserver::shared() else {
        return;
    };
    // Warnings only unless RUST_LOG says otherwise (`RUST_LOG=info` shows every node patch): CI shows the start of a
    // failed test's output, and the panic message must be in it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let admin = api.admin_client().await.unwrap();
    apply_chart_rbac(&admin).await;
    let operator = api
        .service_account_client(NS, "kitfleet-operator")
        .await
        .unwrap();
    let env = Env {
        admin: admin.clone(),
        nis: Api::all(admin.clone()),
        nodes: Api::all(admin.clone()),
    };
    let ctx = Arc::new(Context::new(
        operator,
        Arc::new(Metrics::default()),
        "rollout-test",
    ));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let ctl = tokio::spawn(controller::run(ctx, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let agents = spawn_agents(admin.clone(), stop.clone());

    scenario_a(&env, api, stop.clone()).await;
    scenario_b(&env).await;
    scenario_c(&env).await;
    scenario_d(&env).await;

    stop.store(true, Ordering::Relaxed);
    agents.await.unwrap();
    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(30), ctl)
        .await
        .expect("the controller stops")
        .unwrap();
}

/// (a) Three nodes, `maxUnavailable: 1`: every node Done, never more than one cordoned, all uncordoned.
async fn scenario_a(env: &Env, api: &apiserver::Apiserver, stop: Arc<AtomicBool>) {
    let ns = "ro-a";
    apiserver::ensure_namespace(&env.admin, ns).await.unwrap();
    apiserver::ensure_service_account(&env.admin, ns, "default")
        .await
        .unwrap();
    let _ = api;
    let nodes = env.nodes("ro-a", 3).await;
    for (i, n) in nodes.iter().enumerate() {
        env.pod(ns, &format!("web-{i}"), n, "web").await;
    }
    let max = Arc::new(AtomicUsize::new(0));
    let watch_stop = Arc::new(AtomicBool::new(false));
    let watch = spawn_budget_watch(env.nodes.clone(), "ro-a", watch_stop.clone(), max.clone());
    let _ = stop;
    env.nodeimage(
        "ro-a",
        "ro-a",
        json!({"maxUnavailable": 1, "method": "kexec"}),
    )
    .await;
    let ni = env
        .until("ro-a", "the rollout is done", |ni| {
            cond(ni, "RolledOut").is_some_and(|c| c.0 == "True")
        })
        .await;
    watch_stop.store(true, Ordering::Relaxed);
    watch.await.unwrap();
    let counts = ni.status.as_ref().unwrap().nodes.clone().unwrap();
    assert_eq!(
        (
            counts.total,
            counts.updated,
            counts.in_progress,
            counts.failed,
            counts.progress.as_str()
        ),
        (3, 3, 0, 0, "3/3")
    );
    assert_eq!(cond(&ni, "Degraded").unwrap().0, "False");
    assert!(ni.finalizers().iter().any(|f| f == controller::FINALIZER));
    assert_eq!(
        max.load(Ordering::Relaxed),
        1,
        "one node cordoned at a time"
    );
    for n in env.pool("ro-a").await {
        assert!(!cordoned(&n), "{} uncordoned", n.name_any());
        assert_eq!(ann(&n, ANNOTATION_ROLLOUT_STATE), Some("Done"));
        assert_eq!(ann(&n, ANNOTATION_ROLLOUT_NODEIMAGE), Some("ro-a"));
        assert_eq!(ann(&n, ANNOTATION_DESIRED_BUILD_KEY), Some(KEY));
        assert_eq!(
            ann(&n, ANNOTATION_DESIRED_ARTIFACT),
            Some(format!("127.0.0.1:5000/kitfleet/ro-a@{DIGEST}").as_str())
        );
        assert_eq!(ann(&n, ANNOTATION_UPGRADE_METHOD), Some("kexec"));
        assert_eq!(ann(&n, ANNOTATION_CORDONED), None);
    }
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), ns);
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "every pod evicted"
    );
    for reason in [
        "NodeStaging",
        "NodeStaged",
        "NodeDraining",
        "NodeRebooting",
        "NodeVerifying",
        "NodeDone",
    ] {
        assert_eq!(env.events("ro-a", reason).await.len(), 3, "{reason} Events");
    }
    // Deleting the NodeImage releases its nodes (the operator's keys go) before it is gone.
    env.nis
        .delete("ro-a", &DeleteParams::default())
        .await
        .unwrap();
    let nis = env.nis.clone();
    wait("ro-a is gone", 30, async || {
        nis.get_opt("ro-a").await.unwrap().is_none().then_some(())
    })
    .await;
    for n in env.pool("ro-a").await {
        assert_eq!(
            ann(&n, ANNOTATION_ROLLOUT_STATE),
            None,
            "{} released",
            n.name_any()
        );
    }
}

/// (b) A PDB allowing no disruption: the drain waits, times out, the node fails, the rollout halts with no other
/// node cordoned; fixing the PDB and setting `kitfleet.dev/retry` finishes it.
async fn scenario_b(env: &Env) {
    let ns = "ro-b";
    env.namespace(ns).await;
    let nodes = env.nodes("ro-b", 3).await;
    env.pod(ns, "db-0", &nodes[0], "db").await;
    env.pod(ns, "db-1", &nodes[0], "db").await;
    env.pod(ns, "web-1", &nodes[1], "web").await;
    env.pod(ns, "web-2", &nodes[2], "web").await;
    env.pdb(ns, "db", 0).await;
    let max = Arc::new(AtomicUsize::new(0));
    let watch_stop = Arc::new(AtomicBool::new(false));
    let watch = spawn_budget_watch(env.nodes.clone(), "ro-b", watch_stop.clone(), max.clone());
    env.nodeimage(
        "ro-b",
        "ro-b",
        json!({"maxUnavailable": 1, "drain": {"timeout": "3s"}}),
    )
    .await;
    let ni = env
        .until("ro-b", "the rollout halts", |ni| {
            cond(ni, "Degraded").is_some_and(|c| c.0 == "True" && c.1 == "RolloutHalted")
        })
        .await;
    let st = ni.status.as_ref().unwrap();
    assert_eq!(st.failures.len(), 1, "{:?}", st.failures);
    assert_eq!(st.failures[0].node, "ro-b-1");
    assert_eq!(st.failures[0].reason, "DrainTimeout");
    assert!(
        st.failures[0]
            .message
            .contains("blocked by PodDisruptionBudget db"),
        "{}",
        st.failures[0].message
    );
    assert_eq!(st.nodes.as_ref().unwrap().failed, 1);
    let degraded = cond(&ni, "Degraded").unwrap().2;
    assert!(degraded.contains("kitfleet.dev/retry"), "{degraded}");
    // Halted: nothing else is cordoned, and stays so.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in env.pool("ro-b").await {
        let failed = n.name_any() == "ro-b-1";
        assert_eq!(cordoned(&n), failed, "{} cordoned", n.name_any());
        if !failed {
            assert!(
                !matches!(
                    ann(&n, ANNOTATION_ROLLOUT_STATE),
                    Some("Draining" | "Rebooting" | "Verifying" | "Done")
                ),
                "{} not started",
                n.name_any()
            );
        }
    }
    assert!(!env.events("ro-b", "NodeFailed").await.is_empty());
    // Fix the budget, retry.
    env.pdb_allows(ns, "db", 10).await;
    env.patch_ni(
        "ro-b",
        json!({"metadata": {"annotations": {"kitfleet.dev/retry": "1"}}}),
    )
    .await;
    let ni = env
        .until("ro-b", "the retried rollout is done", |ni| {
            cond(ni, "RolledOut").is_some_and(|c| c.0 == "True")
        })
        .await;
    watch_stop.store(true, Ordering::Relaxed);
    watch.await.unwrap();
    let st = ni.status.as_ref().unwrap();
    assert!(st.failures.is_empty(), "{:?}", st.failures);
    assert_eq!(st.nodes.as_ref().unwrap().updated, 3);
    assert_eq!(cond(&ni, "Degraded").unwrap().0, "False");
    assert_eq!(
        max.load(Ordering::Relaxed),
        1,
        "one node cordoned at a time"
    );
    for n in env.pool("ro-b").await {
        assert!(!cordoned(&n), "{} uncordoned", n.name_any());
    }
}

/// (c) Pausing mid-drain finishes the node in progress, starts no other and leaves none cordoned; deleting the
/// NodeImage mid-drain uncordons and releases its node before it goes.
async fn scenario_c(env: &Env) {
    let ns = "ro-c";
    env.namespace(ns).await;
    let nodes = env.nodes("ro-c", 3).await;
    env.pod(ns, "db-0", &nodes[0], "db").await;
    env.pod(ns, "dbb-0", &nodes[1], "dbb").await;
    env.pdb(ns, "db", 0).await;
    env.pdb(ns, "dbb", 0).await;
    env.nodeimage(
        "ro-c",
        "ro-c",
        json!({"maxUnavailable": 1, "drain": {"timeout": "1h"}}),
    )
    .await;
    env.node_until("ro-c-1", "ro-c-1 drains", |n| {
        cordoned(n) && ann(n, ANNOTATION_ROLLOUT_STATE) == Some("Draining")
    })
    .await;
    env.patch_ni("ro-c", json!({"spec": {"rollout": {"paused": true}}}))
        .await;
    env.pdb_allows(ns, "db", 10).await;
    env.node_until("ro-c-1", "ro-c-1 is done", |n| {
        ann(n, ANNOTATION_ROLLOUT_STATE) == Some("Done")
    })
    .await;
    // The status may say `Paused` before ro-c-1's `Done` reaches it (the pause landed mid-drain): wait until it
    // says both.
    env.until(
        "ro-c",
        "the rollout says it is paused with ro-c-1 updated",
        |ni| {
            cond(ni, "RolledOut").is_some_and(|c| c.1 == "Paused")
                && ni
                    .status
                    .as_ref()
                    .and_then(|s| s.nodes.as_ref())
                    .map(|n| n.updated)
                    == Some(1)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in env.pool("ro-c").await {
        assert!(!cordoned(&n), "{} not cordoned while paused", n.name_any());
        if n.name_any() != "ro-c-1" {
            assert!(
                !matches!(
                    ann(&n, ANNOTATION_ROLLOUT_STATE),
                    Some("Draining" | "Rebooting" | "Verifying" | "Done")
                ),
                "{} not started while paused",
                n.name_any()
            );
        }
    }
    // Resume: ro-c-2 drains (its budget blocks it); delete the NodeImage meanwhile.
    env.patch_ni("ro-c", json!({"spec": {"rollout": {"paused": false}}}))
        .await;
    env.node_until("ro-c-2", "ro-c-2 drains", |n| {
        cordoned(n) && ann(n, ANNOTATION_ROLLOUT_STATE) == Some("Draining")
    })
    .await;
    env.nis
        .delete("ro-c", &DeleteParams::default())
        .await
        .unwrap();
    let nis = env.nis.clone();
    wait("ro-c is gone", 30, async || {
        nis.get_opt("ro-c").await.unwrap().is_none().then_some(())
    })
    .await;
    for n in env.pool("ro-c").await {
        assert!(!cordoned(&n), "{} uncordoned on deletion", n.name_any());
        assert_eq!(
            ann(&n, ANNOTATION_ROLLOUT_STATE),
            None,
            "{} released",
            n.name_any()
        );
        assert_eq!(ann(&n, ANNOTATION_CORDONED), None);
    }
}

/// (d) Two NodeImages selecting one node: the later one is Degraded naming the conflict and leaves the node alone.
async fn scenario_d(env: &Env) {
    env.nodes("ro-d", 1).await;
    env.nodeimage("ro-d-first", "ro-d", json!({})).await;
    env.node_until("ro-d-1", "ro-d-first drives ro-d-1", |n| {
        ann(n, ANNOTATION_ROLLOUT_NODEIMAGE) == Some("ro-d-first")
    })
    .await;
    env.nodeimage("ro-d-second", "ro-d", json!({})).await;
    let ni = env
        .until("ro-d-second", "the conflict is reported", |ni| {
            cond(ni, "Degraded").is_some_and(|c| c.0 == "True")
        })
        .await;
    let (_, reason, message) = cond(&ni, "Degraded").unwrap();
    assert_eq!(reason, "RolloutConflict");
    assert!(
        message.contains("ro-d-1") && message.contains("ro-d-first"),
        "{message}"
    );
    let first = env
        .until("ro-d-first", "the first rollout is done", |ni| {
            cond(ni, "RolledOut").is_some_and(|c| c.0 == "True")
        })
        .await;
    assert_eq!(cond(&first, "Degraded").unwrap().0, "False");
    let n = env.nodes.get("ro-d-1").await.unwrap();
    assert_eq!(ann(&n, ANNOTATION_ROLLOUT_NODEIMAGE), Some("ro-d-first"));
    assert_eq!(env.events("ro-d-second", "NodeStaging").await.len(), 0);
}
