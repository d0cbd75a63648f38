//! The chart's lifecycle in the kind cluster (runs LAST in the test command: it uninstalls and reinstalls Kitfleet).
//!
//! (a) CRD upgrade path: the release is replaced by the chart at a pinned earlier git ref ([`OLD_REF`], whose
//! NodeImage CRD has no `rollout.healthCheck.podSelector`) with the current images; `helm upgrade` to this chart with
//! the CRD hook switched off leaves the old CRD, which prunes the new field (what Helm alone does); `helm upgrade`
//! with the hook then makes the field survive a write and a read back.
//! (b) `helm uninstall` (pre-delete hook): no Kitfleet pod or DaemonSet is left, and on every node (podman exec into
//! the kind node container) no TUN, no route with the agent's protocol tag, no nft table, no conflist, plugin binary
//! or state directory, and no `agent.kitfleet.dev/` Node annotation.
//! Then `helm install` as scripts/kind/up.sh does, and the pods on the pod network are restarted, so the cluster is
//! as the suite found it.
//!
//! Runs only with `KITFLEET_KIND=1` (`kitfleet_e2e::kind`: the kubeconfig is `KITFLEET_KIND_KUBECONFIG`, else
//! `KUBECONFIG`, else the test command's cluster).
//!
//! `KITFLEET_KIND=1 KUBECONFIG=… cargo test -p kitfleet-e2e --test kind_lifecycle -- --test-threads=1`

use std::ops::Deref;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kitfleet_e2e::kind::{KITFLEET_NS, Kind, block_on, connect, podman, repo, run, wait_for};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

/// The chart before `rollout.healthCheck.podSelector` existed (`git log -S podSelector -- crds/`: added by 4980415).
const OLD_REF: &str = "45ed9216244fd59a7397ac657ae5a6a223e9702d";
const RELEASE: &str = "kitfleet";
const CRDS: [&str; 2] = ["nodeimages.kitfleet.dev", "securitypolicies.kitfleet.dev"];

/// The cluster (`kitfleet_e2e::kind`) and what this suite does with it.
struct Cluster(Kind);

impl Deref for Cluster {
    type Target = Kind;
    fn deref(&self) -> &Kind {
        &self.0
    }
}

impl Cluster {
    /// The release's values as installed (`helm get values`): what the old chart and the reinstall get too.
    fn values(&self) -> Result<Value> {
        let v: Value = serde_json::from_str(&run(self
            .helm()
            .args(["get", "values", RELEASE, "-o", "json"]))?)?;
        for key in ["image", "nodeAgent"] {
            if v[key].is_null() {
                bail!("the installed release has no {key} values: {v}");
            }
        }
        Ok(v)
    }

    /// `helm ACTION` of `chart` with `args` (values), waiting; returns how long it took.
    fn helm_chart(&self, action: &[&str], chart: &Path, args: &[String]) -> Result<Duration> {
        let t = Instant::now();
        let mut cmd = self.helm();
        cmd.args(action).arg(RELEASE).arg(chart);
        cmd.args(["--wait", "--timeout", "6m"]);
        cmd.args(args);
        run(&mut cmd)?;
        Ok(t.elapsed())
    }

    fn uninstall(&self) -> Result<Duration> {
        let t = Instant::now();
        run(self
            .helm()
            .args(["uninstall", RELEASE, "--wait", "--timeout", "6m"]))?;
        Ok(t.elapsed())
    }

    async fn node_names(&self) -> Result<Vec<String>> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        Ok(nodes
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect())
    }

    /// A NodeImage with the field the old CRD lacks, applied and read back: whether the field survived.
    async fn pod_selector_survives(&self, name: &str) -> Result<bool> {
        let ar = kube::discovery::ApiResource::erase::<kitfleet_api::NodeImage>(&());
        let api: Api<kube::api::DynamicObject> = Api::all_with(self.client.clone(), &ar);
        if api.get_opt(name).await?.is_some() {
            api.delete(name, &DeleteParams::default()).await?;
            wait_for(Duration::from_secs(60), || async {
                Ok(api.get_opt(name).await?.is_none().then_some(()))
            })
            .await
            .context("old NodeImage gone")?;
        }
        let obj: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kitfleet.dev/v1alpha1", "kind": "NodeImage",
            "metadata": {"name": name},
            "spec": {
                "kernel": {"image": "kitfleet-registry:5000/lifecycle/kernel:1"},
                "init": ["kitfleet-registry:5000/lifecycle/init:1"],
                "formats": ["kernel+initrd"],
                "output": {"repository": "kitfleet-registry:5000/kitfleet/nodes/lifecycle"},
                "rollout": {"nodeSelector": {"matchLabels": {"kitfleet.dev/pool": "none"}},
                            "healthCheck": {"podSelector": {"matchLabels": {"app": "web"}}}}
            }
        }))?;
        api.create(&Default::default(), &obj).await?;
        let back = serde_json::to_value(api.get(name).await?)?;
        let kept = !back["spec"]["rollout"]["healthCheck"]["podSelector"].is_null();
        self.delete_nodeimages(Some(name)).await?;
        Ok(kept)
    }

    /// Deletes NodeImage `name` (or every NodeImage) without waiting for an operator: deleted, then its finalizers
    /// dropped (once deletion has started none can be added).
    async fn delete_nodeimages(&self, name: Option<&str>) -> Result<()> {
        let ar = kube::discovery::ApiResource::erase::<kitfleet_api::NodeImage>(&());
        let api: Api<kube::api::DynamicObject> = Api::all_with(self.client.clone(), &ar);
        let names: Vec<String> = match name {
            Some(n) => vec![n.to_string()],
            None => (api.list(&ListParams::default()).await?.items.into_iter())
                .filter_map(|o| o.metadata.name)
                .collect(),
        };
        let unfinalize = json!({"metadata": {"finalizers": null}});
        for n in &names {
            match api.delete(n, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => continue,
                Err(e) => return Err(e.into()),
            }
            match api
                .patch(n, &PatchParams::default(), &Patch::Merge(&unfinalize))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        for n in &names {
            wait_for(Duration::from_secs(60), || async {
                Ok(api.get_opt(n).await?.is_none().then_some(()))
            })
            .await
            .context("NodeImage gone")?;
        }
        Ok(())
    }

    /// Nothing of Kitfleet's is left on any node, in the namespace or in the Node annotations.
    async fn nothing_left(&self) -> Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), KITFLEET_NS);
        wait_for(Duration::from_secs(120), || async {
            let left: Vec<String> = (pods.list(&ListParams::default()).await?.items.iter())
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            Ok(left.is_empty().then_some(()))
        })
        .await
        .context("Kitfleet's pods gone")?;
        let ds: Api<DaemonSet> = Api::all(self.client.clone());
        let dss: Vec<String> = (ds.list(&ListParams::default()).await?.items.iter())
            .filter(|d| d.metadata.namespace.as_deref() == Some(KITFLEET_NS))
            .filter_map(|d| d.metadata.name.clone())
            .collect();
        if !dss.is_empty() {
            bail!("DaemonSets left: {dss:?}");
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        for n in nodes.list(&ListParams::default()).await? {
            let name = n.metadata.name.clone().unwrap_or_default();
            let agent: Vec<&String> = (n.metadata.annotations.iter().flatten())
                .map(|(k, _)| k)
                .filter(|k| k.starts_with("agent.kitfleet.dev/"))
                .collect();
            if !agent.is_empty() {
                bail!("Node {name} still has {agent:?}");
            }
            // One shell per node: every check prints what it found.
            let script = "ip -o link show kfwg0 2>/dev/null; \
                ip route show table all proto 75; ip -6 route show table all proto 75; \
                nft list tables | grep kitfleet; \
                ls -d /etc/cni/net.d/10-kitfleet.conflist /opt/cni/bin/kitfleet-wg /run/kitfleet /var/lib/kitfleet \
                  /var/lib/cni/kitfleet-wg /var/log/kitfleet-wg.log 2>/dev/null; true";
            let found = run(podman().args(["exec", &name, "sh", "-c", script]))?;
            if !found.trim().is_empty() {
                bail!("node {name} still has Kitfleet state:\n{found}");
            }
        }
        Ok(())
    }

    /// Deletes every pod on the pod network outside Kitfleet's namespace (their addresses came from the IPAM store
    /// the uninstall removed): their controllers make new ones once a CNI is back.
    async fn restart_pod_network_pods(&self) -> Result<usize> {
        let all: Api<Pod> = Api::all(self.client.clone());
        let mut n = 0;
        for p in all.list(&ListParams::default()).await? {
            let host = (p.spec.as_ref().and_then(|s| s.host_network)).unwrap_or(false);
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            if host || ns == KITFLEET_NS {
                continue;
            }
            let name = p.metadata.name.clone().unwrap_or_default();
            match Api::<Pod>::namespaced(self.client.clone(), &ns)
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await
            {
                Ok(_) => n += 1,
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }

    /// Waits until the nodes are Ready, restarts the pods on the pod network again and waits for CoreDNS.
    async fn settle_after_reinstall(&self) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        wait_for(Duration::from_secs(180), || async {
            let all = nodes.list(&ListParams::default()).await?;
            let ready = all.items.iter().all(|n| {
                (n.status.as_ref().and_then(|s| s.conditions.as_ref()))
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            Ok(ready.then_some(()))
        })
        .await
        .context("every node Ready")?;
        self.restart_pod_network_pods().await?;
        let kube_system: Api<Pod> = Api::namespaced(self.client.clone(), "kube-system");
        wait_for(Duration::from_secs(180), || async {
            let lp = ListParams::default().labels("k8s-app=kube-dns");
            let pods = kube_system.list(&lp).await?.items;
            let ready = !pods.is_empty()
                && pods.iter().all(|p| {
                    (p.status.as_ref().and_then(|s| s.conditions.as_ref()))
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                });
            Ok(ready.then_some(()))
        })
        .await
        .context("CoreDNS Ready again")
    }
}

/// The chart at `OLD_REF`, extracted with `git archive` into `dir`.
fn old_chart(dir: &Path) -> Result<std::path::PathBuf> {
    let tar = dir.join("chart.tar");
    run(Command::new("git")
        .arg("-C")
        .arg(repo())
        .args(["archive", "--format=tar", "-o"])
        .arg(&tar)
        .args([OLD_REF, "charts/kitfleet"]))?;
    run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(dir))?;
    Ok(dir.join("charts/kitfleet"))
}

#[test]
fn upgrade_from_an_older_chart_keeps_new_crd_fields_and_uninstall_leaves_no_node_state() {
    block_on(async {
        match connect().await {
            Some(k) => lifecycle(&Cluster(k)).await,
            None => Ok(()),
        }
    });
}

async fn lifecycle(c: &Cluster) -> Result<()> {
    // Every value the release was installed with (images, cluster CIDRs, registries, the kind upgrade executor):
    // the old chart ignores those it does not know.
    let values = c.values()?;
    let tmp_values = tempfile::tempdir()?;
    let values_file = tmp_values.path().join("values.json");
    std::fs::write(&values_file, serde_json::to_vec(&values)?)?;
    let sets = vec!["-f".to_string(), values_file.to_string_lossy().into_owned()];
    let current = repo().join("charts/kitfleet");
    let tmp = tempfile::tempdir()?;
    let old = old_chart(tmp.path())?;

    // Start from the old chart's first install: no release, no CRDs (Helm then installs the old chart's crds/).
    let t = c
        .uninstall()
        .context("helm uninstall of the current release")?;
    eprintln!(
        "lifecycle: helm uninstall (pre-delete cleanup hook) took {} ms",
        t.as_millis()
    );
    c.nothing_left()
        .await
        .context("after the first uninstall")?;
    c.restart_pod_network_pods().await?;
    c.delete_nodeimages(None).await?;
    for crd in CRDS {
        let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
        if crds.get_opt(crd).await?.is_some() {
            crds.delete(crd, &DeleteParams::default()).await?;
        }
        wait_for(Duration::from_secs(60), || async {
            Ok(crds.get_opt(crd).await?.is_none().then_some(()))
        })
        .await
        .context("CRD deleted")?;
    }
    let t = c
        .helm_chart(&["install"], &old, &sets)
        .context("helm install of the old chart")?;
    eprintln!(
        "lifecycle: helm install of the chart at {} took {} ms",
        &OLD_REF[..7],
        t.as_millis()
    );
    assert!(
        !c.pod_selector_survives("lifecycle-old").await?,
        "the old chart's CRD should prune healthCheck.podSelector (is OLD_REF right?)"
    );

    // Helm alone (hook off): the old CRD stays and prunes the new field.
    let mut no_hook = sets.clone();
    no_hook.extend(["--set".to_string(), "hooks.crds.enabled=false".into()]);
    let t = c
        .helm_chart(&["upgrade"], &current, &no_hook)
        .context("helm upgrade without the CRD hook")?;
    eprintln!(
        "lifecycle: helm upgrade without the CRD hook took {} ms",
        t.as_millis()
    );
    assert!(
        !c.pod_selector_survives("lifecycle-nohook").await?,
        "without the hook Helm does not update crds/: the field must be pruned"
    );

    // With the hook: the CRD is upgraded and the field survives.
    let t = c
        .helm_chart(&["upgrade"], &current, &sets)
        .context("helm upgrade with the CRD hook")?;
    eprintln!(
        "lifecycle: helm upgrade with the CRD hook took {} ms",
        t.as_millis()
    );
    let mut kept = false;
    for _ in 0..10 {
        if c.pod_selector_survives("lifecycle-hook").await? {
            kept = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        kept,
        "healthCheck.podSelector pruned after helm upgrade with the CRD hook"
    );

    // Uninstall: nothing left on any node.
    let t = c.uninstall().context("helm uninstall")?;
    eprintln!(
        "lifecycle: helm uninstall (pre-delete cleanup hook) took {} ms",
        t.as_millis()
    );
    c.nothing_left().await.context("after helm uninstall")?;
    c.restart_pod_network_pods().await?;

    // Back to the state the suite found: installed as scripts/kind/up.sh does, pods renumbered.
    let t = c
        .helm_chart(&["install"], &current, &sets)
        .context("helm install (reinstall)")?;
    eprintln!(
        "lifecycle: helm install (reinstall) took {} ms",
        t.as_millis()
    );
    c.settle_after_reinstall().await?;
    let nodes = c.node_names().await?;
    eprintln!("lifecycle: done; {} nodes Ready", nodes.len());
    Ok(())
}
