//! The rollout suite on kind: the node agent's upgrade DaemonSet (`kitfleet-node-upgrade`, kind executor: a simulated
//! reboot restarting the node's pods, containerd and kubelet) driven first by the test playing the operator, then by
//! the operator's rollout controller over both workers while a PDB-guarded Deployment serves HTTP.
//!
//! Needs a cluster from `bash scripts/kind/up.sh` (which installs the chart with `nodeAgent.upgrade.executor=kind`).
//! The tests run only with `KITFLEET_KIND=1` (what the test command sets); then a missing cluster fails them.
//! `KITFLEET_KIND_KUBECONFIG` picks the cluster's kubeconfig.
//!
//! Each test cleans up after itself, also when it fails (NodeImage deleted and gone, labels and the workload's
//! namespace removed, the operator keys it wrote removed) and then waits until the cluster is healthy again — every
//! node Ready, uncordoned and out of any rollout, every Kitfleet pod Ready — since the suites after it share the
//! cluster.
//!
//! `KITFLEET_KIND=1 KITFLEET_KIND_KUBECONFIG=… cargo test -p kitfleet-e2e --test kind_rollout -- --test-threads=1`

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Deref;
use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kitfleet_api::NodeImage;
use kitfleet_api::constants::{
    ANNOTATION_BOOTED_BUILD_KEY, ANNOTATION_DESIRED_ARTIFACT, ANNOTATION_DESIRED_BUILD_KEY,
    ANNOTATION_ROLLOUT_SINCE, ANNOTATION_ROLLOUT_STATE, ANNOTATION_STAGED_BUILD_KEY,
    ANNOTATION_UPGRADE_FAILURE, ANNOTATION_UPGRADE_METHOD,
};
use kitfleet_e2e::kind::{KITFLEET_NS, Kind, REGISTRY, block_on, connect, repo, run, wait_for};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};

/// `assert_eq!` as an error, so that a failed check still reaches the suite's cleanup.
macro_rules! ensure_eq {
    ($a:expr, $b:expr $(,)?) => {{
        // `match` keeps the operands' temporaries alive, as `assert_eq!` does.
        #[allow(clippy::match_single_binding)]
        match (&$a, &$b) {
            (a, b) => anyhow::ensure!(a == b, "{a:?} != {b:?}"),
        }
    }};
}

static SERIAL: Mutex<()> = Mutex::new(());

const NS: &str = "kf-rollout";
const POOL_LABEL: &str = "kitfleet.dev/e2e-pool";

/// The cluster (`kitfleet_e2e::kind`) and what this suite does with it.
struct Cluster(Kind);

impl Deref for Cluster {
    type Target = Kind;
    fn deref(&self) -> &Kind {
        &self.0
    }
}

impl Cluster {
    fn diagnostics(&self) -> String {
        format!(
            "upgrade agents:\n{}\noperator:\n{}",
            self.logs(KITFLEET_NS, "app.kubernetes.io/component=node-upgrade"),
            self.logs(KITFLEET_NS, "app.kubernetes.io/component=operator")
        )
    }

    /// The pod of `component` (kitfleet-system) on `node`: (name, container id, restarts).
    async fn component_pod(&self, component: &str, node: &str) -> Result<(String, String, i32)> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), KITFLEET_NS);
        let lp = ListParams::default()
            .labels(&format!("app.kubernetes.io/component={component}"))
            .fields(&format!("spec.nodeName={node}"));
        let p = pods
            .list(&lp)
            .await?
            .items
            .into_iter()
            .next()
            .context("no pod")?;
        let cs = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .context("no container status")?;
        Ok((
            p.metadata.name.clone().unwrap_or_default(),
            cs.container_id.clone().unwrap_or_default(),
            cs.restart_count,
        ))
    }

    /// A NodeImage built in the cluster from the fixtures (its own repository and content per call).
    async fn built(&self, name: &str, rollout: Option<serde_json::Value>) -> Result<NodeImage> {
        let refs = push_fixtures().await?;
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis();
        let mut spec = serde_json::json!({
            "kernel": {"image": refs["kernel"], "cmdline": "console=ttyS0 panic=-1"},
            "init": [refs["init"]],
            "onboot": [{"name": "hello", "image": refs["hello"], "command": ["/bin/echo", "kitfleet-onboot-ok"]}],
            "files": [{"path": "etc/kitfleet/nonce", "contents": format!("{nonce}\n"), "mode": "0644"}],
            "formats": ["kernel+initrd"],
            "output": {"repository": format!("{REGISTRY}/e2e/rollout/{name}-{nonce}")}
        });
        if let Some(r) = rollout {
            spec["rollout"] = r;
        }
        let ni: NodeImage = serde_json::from_value(serde_json::json!({
            "apiVersion": "kitfleet.dev/v1alpha1", "kind": "NodeImage",
            "metadata": {"name": name}, "spec": spec
        }))?;
        let nis: Api<NodeImage> = Api::all(self.client.clone());
        let _ = nis.delete(name, &DeleteParams::default()).await;
        wait_for(Duration::from_secs(60), || async {
            Ok(nis.get_opt(name).await?.is_none().then_some(()))
        })
        .await?;
        nis.create(&PostParams::default(), &ni).await?;
        wait_for(Duration::from_secs(600), || async {
            let ni = nis.get(name).await?;
            let st = ni.status.clone().unwrap_or_default();
            match st.conditions.iter().find(|c| c.type_ == "Built") {
                Some(c) if c.status == "True" && st.artifact.is_some() => Ok(Some(ni)),
                Some(c) if c.reason == "Failed" => bail!("Built=False: {}", c.message),
                _ => Ok(None),
            }
        })
        .await
        .with_context(|| self.diagnostics())
    }

    /// Deletes a NodeImage and waits until it is gone (its rollout finalizer released its nodes).
    async fn delete_nodeimage(&self, name: &str) -> Result<()> {
        let nis: Api<NodeImage> = Api::all(self.client.clone());
        let _ = nis.delete(name, &DeleteParams::background()).await;
        wait_for(Duration::from_secs(120), || async {
            Ok(nis.get_opt(name).await?.is_none().then_some(()))
        })
        .await
        .with_context(|| format!("NodeImage {name} still there\n{}", self.diagnostics()))
    }

    /// Removes what the rollout test made (NodeImage, pool label, the workload's namespace), waits until it is gone,
    /// then until the cluster is healthy again.
    async fn clean_rollout(&self, name: &str) -> Result<()> {
        self.delete_nodeimage(name).await?;
        let nodes: Api<Node> = Api::all(self.client.clone());
        for w in &self.workers {
            let patch = serde_json::json!({"metadata": {"labels": {POOL_LABEL: null}}});
            nodes
                .patch(w, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces.delete(NS, &DeleteParams::background()).await;
        wait_for(Duration::from_secs(180), || async {
            Ok(namespaces.get_opt(NS).await?.is_none().then_some(()))
        })
        .await
        .with_context(|| format!("namespace {NS} still there"))?;
        self.healthy().await
    }

    /// Waits until every node is Ready, uncordoned and free of the operator's rollout keys, and every Kitfleet pod
    /// that is not a finished Job's runs Ready: what the suites after this one expect.
    async fn healthy(&self) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), KITFLEET_NS);
        wait_for(Duration::from_secs(240), || async {
            let mut problems = Vec::new();
            for n in nodes.list(&ListParams::default()).await?.items {
                let name = n.metadata.name.clone().unwrap_or_default();
                if !ready(&n) {
                    problems.push(format!("node {name} is not Ready"));
                }
                if n.spec
                    .as_ref()
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false)
                {
                    problems.push(format!("node {name} is cordoned"));
                }
                if let Some(st) = n
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_ROLLOUT_STATE))
                {
                    problems.push(format!("node {name} is still {st}"));
                }
            }
            for p in pods.list(&ListParams::default()).await?.items {
                let st = p.status.as_ref();
                if st.and_then(|s| s.phase.as_deref()) == Some("Succeeded") {
                    continue;
                }
                let ready = st
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if !ready {
                    problems.push(format!(
                        "pod {KITFLEET_NS}/{} is not Ready",
                        p.metadata.name.unwrap_or_default()
                    ));
                }
            }
            match problems.is_empty() {
                true => Ok(Some(())),
                false => bail!("{}", problems.join("; ")),
            }
        })
        .await
        .context("the cluster is not healthy after the suite")
    }

    async fn annotate(&self, node: &str, ann: serde_json::Value) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let patch = serde_json::json!({"metadata": {"annotations": ann}});
        nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    async fn annotation(&self, node: &str, key: &str) -> Result<Option<String>> {
        let n = Api::<Node>::all(self.client.clone()).get(node).await?;
        Ok(n.metadata.annotations.and_then(|a| a.get(key).cloned()))
    }
}

fn ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The build key (hex) and the artifact reference (`REPO@sha256:…`) of a built NodeImage.
fn key_and_artifact(ni: &NodeImage) -> Result<(String, String)> {
    let st = ni.status.as_ref().context("status")?;
    let key = st.build_key.as_deref().context("status.buildKey")?;
    let key = key.strip_prefix("sha256:").unwrap_or(key).to_string();
    let digest = &st.artifact.as_ref().context("status.artifact")?.digest;
    Ok((key, format!("{}@{digest}", ni.spec.output.repository)))
}

async fn push_fixtures() -> Result<BTreeMap<&'static str, String>> {
    use kitfleet_builder::fixtures;
    let kernel = format!("{REGISTRY}/fixtures/kernel:6.1");
    let init = format!("{REGISTRY}/fixtures/init:1");
    let hello = format!("{REGISTRY}/fixtures/hello:1");
    fixtures::kernel_image()?.build()?.push(&kernel).await?;
    fixtures::init_image()?.build()?.push(&init).await?;
    fixtures::marker_image("kitfleet-onboot-ok")?
        .build()?
        .push(&hello)
        .await?;
    Ok(BTreeMap::from([
        ("kernel", kernel),
        ("init", init),
        ("hello", hello),
    ]))
}

/// The operator keys the test writes when it plays the operator, removed again.
const OPERATOR_KEYS: [&str; 5] = [
    ANNOTATION_DESIRED_BUILD_KEY,
    ANNOTATION_DESIRED_ARTIFACT,
    ANNOTATION_UPGRADE_METHOD,
    ANNOTATION_ROLLOUT_STATE,
    ANNOTATION_ROLLOUT_SINCE,
];

#[test]
fn the_agent_stages_then_simulates_a_reboot_only_when_its_node_says_so() {
    suite(|c| async move {
        let outcome = agent_driven_by_the_test(&c).await;
        // Always, also after a failure: the operator's keys the test wrote, the NodeImage.
        let nulls: serde_json::Map<_, _> = OPERATOR_KEYS
            .iter()
            .map(|k| (k.to_string(), serde_json::Value::Null))
            .collect();
        let cleaned = async {
            c.annotate(&c.workers[0], serde_json::Value::Object(nulls))
                .await?;
            c.delete_nodeimage("e2e-agent").await?;
            c.healthy().await
        }
        .await;
        outcome?;
        cleaned
    })
}

async fn agent_driven_by_the_test(c: &Cluster) -> Result<()> {
    let ni = c.built("e2e-agent", None).await?;
    let (key, artifact) = key_and_artifact(&ni)?;
    let node = c.workers[0].clone();
    let nodes: Api<Node> = Api::all(c.client.clone());
    let (mesh_pod, mesh_before, _) = c.component_pod("node-agent", &node).await?;
    let (up_pod, up_before, up_restarts) = c.component_pod("node-upgrade", &node).await?;
    // Playing the operator: Staging.
    let t0 = Instant::now();
    c.annotate(
        &node,
        serde_json::json!({
            ANNOTATION_DESIRED_BUILD_KEY: key, ANNOTATION_DESIRED_ARTIFACT: artifact,
            ANNOTATION_UPGRADE_METHOD: "reboot", ANNOTATION_ROLLOUT_STATE: "Staging",
            ANNOTATION_ROLLOUT_SINCE: k8s_openapi::jiff::Timestamp::now().to_string(),
        }),
    )
    .await?;
    wait_for(Duration::from_secs(180), || async {
        Ok((c
            .annotation(&node, ANNOTATION_STAGED_BUILD_KEY)
            .await?
            .as_deref()
            == Some(&key))
        .then_some(()))
    })
    .await
    .with_context(|| c.diagnostics())?;
    let staging = t0.elapsed();
    // Staged but not told to switch: nothing restarted, nothing booted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let booted = c.annotation(&node, ANNOTATION_BOOTED_BUILD_KEY).await?;
    anyhow::ensure!(
        booted.as_deref() != Some(key.as_str()),
        "{key} booted before Rebooting"
    );
    anyhow::ensure!(
        c.component_pod("node-agent", &node).await?.1 == mesh_before,
        "{mesh_pod} restarted before Rebooting"
    );
    // Rebooting: the simulated reboot, then the key reported once the Node is Ready again.
    let t1 = Instant::now();
    c.annotate(
        &node,
        serde_json::json!({ANNOTATION_ROLLOUT_STATE: "Rebooting"}),
    )
    .await?;
    wait_for(Duration::from_secs(300), || async {
        let n = nodes.get(&node).await?;
        let booted = n
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_BOOTED_BUILD_KEY));
        Ok((booted == Some(&key) && ready(&n)).then_some(()))
    })
    .await
    .with_context(|| c.diagnostics())?;
    let reboot = t1.elapsed();
    // The node's other pods were restarted; the executor's own pod was not.
    let mesh_after = wait_for(Duration::from_secs(120), || async {
        let (_, id, _) = c.component_pod("node-agent", &node).await?;
        Ok((!id.is_empty() && id != mesh_before).then_some(id))
    })
    .await
    .context("the mesh container was not restarted by the simulated reboot")?;
    let (up_pod2, up_after, up_restarts2) = c.component_pod("node-upgrade", &node).await?;
    ensure_eq!(
        (up_pod2.as_str(), up_after.as_str(), up_restarts2),
        (up_pod.as_str(), up_before.as_str(), up_restarts)
    );
    eprintln!(
        "agent: staged in {staging:?}, simulated reboot to Ready+booted in {reboot:?} (mesh {mesh_before} -> {mesh_after})"
    );
    // A key the artifact does not have: a terminal failure naming both keys, no switch.
    let wrong = "0".repeat(64);
    c.annotate(
        &node,
        serde_json::json!({
            ANNOTATION_DESIRED_BUILD_KEY: wrong, ANNOTATION_ROLLOUT_STATE: "Staging",
            ANNOTATION_ROLLOUT_SINCE: k8s_openapi::jiff::Timestamp::now().to_string(),
        }),
    )
    .await?;
    let failure = wait_for(Duration::from_secs(120), || async {
        c.annotation(&node, ANNOTATION_UPGRADE_FAILURE).await
    })
    .await
    .with_context(|| c.diagnostics())?;
    anyhow::ensure!(failure.starts_with(&format!("{wrong} ")), "{failure}");
    anyhow::ensure!(
        failure.contains(&key) && failure.contains("not the desired"),
        "{failure}"
    );
    ensure_eq!(
        c.annotation(&node, ANNOTATION_BOOTED_BUILD_KEY)
            .await?
            .as_deref(),
        Some(key.as_str())
    );
    // Clean up: the operator's keys go; the agent clears its failure once the key is no longer desired.
    let nulls: serde_json::Map<_, _> = OPERATOR_KEYS
        .iter()
        .map(|k| (k.to_string(), serde_json::Value::Null))
        .collect();
    c.annotate(&node, serde_json::Value::Object(nulls)).await?;
    wait_for(Duration::from_secs(60), || async {
        Ok(c.annotation(&node, ANNOTATION_UPGRADE_FAILURE)
            .await?
            .is_none()
            .then_some(()))
    })
    .await
    .context("the failure stayed after the desired key went")?;
    Ok(())
}

/// Probes `addr` with `GET /` every 200 ms until `stop`; returns the times of the successful answers.
fn probe(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Vec<Instant>, usize)> {
    std::thread::spawn(move || {
        let mut ok = Vec::new();
        let mut tries = 0usize;
        while !stop.load(Ordering::Relaxed) {
            tries += 1;
            let t = Instant::now();
            let answered = (|| -> std::io::Result<bool> {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(1000))?;
                s.set_read_timeout(Some(Duration::from_millis(1000)))?;
                s.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")?;
                let mut buf = Vec::new();
                s.read_to_end(&mut buf)?;
                Ok(buf.starts_with(b"HTTP/1.") && buf.windows(12).any(|w| w == b"kitfleet-e2e"))
            })();
            if answered.unwrap_or(false) {
                ok.push(t);
            }
            std::thread::sleep(Duration::from_millis(200).saturating_sub(t.elapsed()));
        }
        (ok, tries)
    })
}

#[test]
fn a_rollout_over_both_workers_keeps_a_pdb_guarded_service_answering() {
    suite(|c| async move {
        let outcome = rollout_with_a_service(&c).await;
        // Always, also after a failure: the suites after this one share the cluster.
        let cleaned = c.clean_rollout("e2e-rollout").await;
        outcome?;
        cleaned
    })
}

async fn rollout_with_a_service(c: &Cluster) -> Result<()> {
    // The workload: 2 replicas on the 2 workers (anti-affinity), a PDB allowing 1 down, a NodePort Service.
    let image = run(Command::new("bash").arg(repo().join("scripts/kind/fixtures.sh")))?;
    let image = image.trim().lines().last().unwrap_or_default().to_string();
    let ssa = PatchParams::apply("kitfleet-e2e").force();
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": NS}}))?;
    Api::<Namespace>::all(c.client.clone())
        .patch(NS, &ssa, &Patch::Apply(&ns))
        .await?;
    let manifest = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": NS},
         "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
          "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
            "terminationGracePeriodSeconds": 2,
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}},
            "containers": [{"name": "web", "image": image,
                "command": ["sh", "-c", "exec httpd -f -p 8080 -h /www"],
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}}]}}}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "web", "namespace": NS},
         "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
         "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}
    ]});
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), serde_json::to_vec(&manifest)?)?;
    run(c
        .kubectl()
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(file.path()))?;
    run(c.kubectl().args([
        "-n",
        NS,
        "rollout",
        "status",
        "deploy/web",
        "--timeout=180s",
    ]))?;
    let port = run(c.kubectl().args([
        "-n",
        NS,
        "get",
        "svc",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]))?;
    let cp = Api::<Node>::all(c.client.clone()).get(&c.control).await?;
    let ip = cp
        .status
        .and_then(|s| s.addresses)
        .into_iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .context("control plane InternalIP")?
        .address;
    let addr: SocketAddr = format!("{ip}:{}", port.trim()).parse()?;
    // Select the workers, start probing, then the NodeImage with its rollout.
    let nodes: Api<Node> = Api::all(c.client.clone());
    for w in &c.workers {
        let patch = serde_json::json!({"metadata": {"labels": {POOL_LABEL: "rollout"}}});
        nodes
            .patch(w, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe(addr, stop.clone());
    let rollout = serde_json::json!({
        "nodeSelector": {"matchLabels": {POOL_LABEL: "rollout"}},
        "maxUnavailable": 1,
        // The suite shares the test command's cluster: earlier suites leave bare pods on the workers (kind.rs's
        // kf-e2e/net-0), which a drain without `force` refuses (`UnmanagedPod`, as the CRD documents).
        "drain": {"timeout": "5m", "gracePeriodSeconds": 2, "force": true},
        "healthCheck": {"timeout": "5m", "podSelector": {"matchLabels": {"app": "web"}}},
        "method": "reboot"
    });
    let name = "e2e-rollout";
    let result = async {
        let ni = c.built(name, Some(rollout)).await?;
        let (key, _) = key_and_artifact(&ni)?;
        let start = Instant::now();
        let nis: Api<NodeImage> = Api::all(c.client.clone());
        // Every state each worker passes through, and how many workers were cordoned at once.
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut max_cordoned = 0;
        loop {
            let list = nodes
                .list(&ListParams::default().labels(&format!("{POOL_LABEL}=rollout")))
                .await?;
            let mut cordoned = 0;
            for n in &list.items {
                let nm = n.metadata.name.clone().unwrap_or_default();
                let st = n
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_ROLLOUT_STATE))
                    .cloned();
                if n.spec
                    .as_ref()
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false)
                {
                    cordoned += 1;
                }
                let v = seen.entry(nm).or_default();
                if let Some(st) = st
                    && v.last() != Some(&st)
                {
                    v.push(st);
                }
            }
            max_cordoned = max_cordoned.max(cordoned);
            let st = nis.get(name).await?.status.unwrap_or_default();
            if let Some(f) = st.failures.first() {
                bail!(
                    "rollout failed on {}: {}: {}\n{seen:?}",
                    f.node,
                    f.reason,
                    f.message
                );
            }
            if st
                .nodes
                .as_ref()
                .is_some_and(|n| n.total == 2 && n.updated == 2)
            {
                break;
            }
            if start.elapsed() > Duration::from_secs(900) {
                bail!("rollout not done after 15 min: {:?}\n{seen:?}", st.nodes);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let wall = start.elapsed();
        anyhow::Ok((key, wall, seen, max_cordoned))
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let (ok, tries) = prober
        .join()
        .map_err(|_| anyhow::anyhow!("prober panicked"))?;
    let (key, wall, seen, max_cordoned) = result.with_context(|| c.diagnostics())?;
    let max_gap = ok.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    eprintln!(
        "rollout of 2 workers (maxUnavailable 1): {wall:?}; probes {} ok of {tries}, longest gap without an answer {max_gap:?}; states {seen:?}",
        ok.len()
    );
    anyhow::ensure!(max_cordoned <= 1, "{max_cordoned} workers cordoned at once");
    for w in &c.workers {
        let states = &seen[w];
        let pos = |s: &str| {
            states
                .iter()
                .position(|x| x == s)
                .with_context(|| format!("{w} never {s}: {states:?}"))
        };
        anyhow::ensure!(
            pos("Draining")? < pos("Rebooting")? && pos("Rebooting")? < pos("Done")?,
            "{w}: {states:?}"
        );
        let n = nodes.get(w).await?;
        anyhow::ensure!(
            !n.spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            "{w} left cordoned"
        );
        ensure_eq!(
            c.annotation(w, ANNOTATION_BOOTED_BUILD_KEY)
                .await?
                .as_deref(),
            Some(key.as_str())
        );
    }
    anyhow::ensure!(
        ok.len() > 10,
        "the service hardly answered: {} of {tries}",
        ok.len()
    );
    anyhow::ensure!(
        max_gap < Duration::from_secs(3),
        "a gap of {max_gap:?} without an answer"
    );
    Ok(())
}

fn suite<F, Fut>(step: F)
where
    F: FnOnce(Cluster) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    block_on(async {
        match connect().await {
            Some(k) => step(Cluster(k)).await,
            None => Ok(()),
        }
    });
}
