//! The kind suite: Kitfleet installed by `helm install` into a local kind cluster (1 control plane + 2 workers, no
//! default CNI) made by `bash scripts/kind/up.sh`, checked through the `kube` client and real tools (kubectl exec,
//! tcpdump in a node's network namespace, helm). The tests share the one cluster and run one at a time.
//!
//! Without a cluster the tests skip with a message, unless `KITFLEET_KIND=1` (what the test command sets after
//! `scripts/kind/up.sh`): then a missing or unhealthy cluster fails them.
//!
//! `bash scripts/kind/up.sh && KITFLEET_KIND=1 cargo test -p kitfleet-e2e --test kind`

use std::collections::BTreeMap;
use std::ops::Deref;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kitfleet_api::NodeImage;
use kitfleet_e2e::kind::{
    KITFLEET_NS, Kind, REGISTRY, block_on, connect, podman, repo, run, wait_for,
};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use std::sync::Mutex;

/// One test at a time: they share the cluster, and some uninstall and reinstall Kitfleet.
static SERIAL: Mutex<()> = Mutex::new(());

const NS: &str = "kf-e2e";

/// The cluster (`kitfleet_e2e::kind`) and what this suite does with it.
struct Cluster(Kind);

impl Deref for Cluster {
    type Target = Kind;
    fn deref(&self) -> &Kind {
        &self.0
    }
}

impl Cluster {
    fn exec(&self, pod: &str, script: &str) -> Result<String> {
        run(self
            .kubectl()
            .args(["exec", "-n", NS, pod, "--", "sh", "-c", script]))
    }

    /// Two busybox pods, one per worker, serving HTTP on 8080, and a Service in front of the second.
    async fn pods(&self) -> Result<[(String, String); 2]> {
        let image = run(Command::new("bash").arg(repo().join("scripts/kind/fixtures.sh")))?;
        let image = image.trim().lines().last().unwrap_or_default().to_string();
        let nss: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": NS}}))?;
        let ssa = PatchParams::apply("kitfleet-e2e").force();
        nss.patch(NS, &ssa, &Patch::Apply(&ns)).await?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        let mut out = Vec::new();
        for (i, node) in self.workers.iter().enumerate() {
            let name = format!("net-{i}");
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": {"app": name}},
                "spec": {
                    "nodeName": node,
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{
                        "name": "c", "image": image,
                        "command": ["sh", "-c", "httpd -p 8080 -h /www && exec sleep 1000000"],
                        "ports": [{"containerPort": 8080}]
                    }]
                }
            }))?;
            pods.patch(&name, &ssa, &Patch::Apply(&pod)).await?;
            out.push(name);
        }
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "net-1"},
            "spec": {"selector": {"app": "net-1"}, "ports": [{"port": 80, "targetPort": 8080}]}
        }))?;
        Api::<Service>::namespaced(self.client.clone(), NS)
            .patch("net-1", &ssa, &Patch::Apply(&svc))
            .await?;
        let mut ips = Vec::new();
        for name in &out {
            let ip = wait_for(Duration::from_secs(120), || async {
                let p = pods.get(name).await?;
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                Ok(if ready {
                    p.status.and_then(|s| s.pod_ip)
                } else {
                    None
                })
            })
            .await
            .with_context(|| format!("pod {name} not Ready"))?;
            ips.push(ip);
        }
        Ok([
            (out[0].clone(), ips[0].clone()),
            (out[1].clone(), ips[1].clone()),
        ])
    }
}

#[test]
fn nodes_are_ready_through_kitfleet_and_the_crds_are_served() {
    suite(|c| async move {
        let nodes: Api<Node> = Api::all(c.client.clone());
        let list = nodes.list(&ListParams::default()).await?;
        assert_eq!(list.items.len(), 3, "1 control plane + 2 workers");
        for n in &list.items {
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            assert!(ready, "{:?} is not Ready", n.metadata.name);
        }
        // The kubelet's network is Kitfleet's: its conflist is the only one on every node.
        for n in list.items.iter().filter_map(|n| n.metadata.name.as_deref()) {
            let conf = run(podman().args(["exec", n, "ls", "/etc/cni/net.d"]))?;
            assert_eq!(
                conf.split_whitespace().collect::<Vec<_>>(),
                ["10-kitfleet.conflist"],
                "{n}"
            );
        }
        let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
        for name in ["nodeimages.kitfleet.dev", "securitypolicies.kitfleet.dev"] {
            let crd = crds.get(name).await?;
            let established = crd.status.and_then(|s| s.conditions).is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            assert!(established, "{name} is not Established");
        }
        let nis: Api<NodeImage> = Api::all(c.client.clone());
        nis.list(&ListParams::default()).await?;
        Ok(())
    })
}

fn example_nodeimage() -> Result<NodeImage> {
    let text = std::fs::read_to_string(repo().join("examples/nodeimage-minimal.yaml"))?;
    Ok(serde_saphyr::from_str(&text)?)
}

#[test]
fn cel_rejects_bad_objects_server_side() {
    suite(|c| async move {
        let nis: Api<NodeImage> = Api::all(c.client.clone());
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let mut good = example_nodeimage()?;
        good.metadata.name = Some("e2e-cel".into());
        nis.create(&dry, &good)
            .await
            .context("the example is accepted")?;
        let mut bad = good.clone();
        let f = bad.spec.formats[0];
        bad.spec.formats = vec![f, f];
        let err = nis.create(&dry, &bad).await.expect_err("duplicate formats");
        let text = format!("{err}");
        assert!(text.contains("formats must be unique"), "{text}");
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == 422),
            "{err:?}"
        );
        Ok(())
    })
}

#[test]
fn pods_on_both_workers_reach_each_other() {
    suite(|c| async move {
        let [(a, a_ip), (b, b_ip)] = c.pods().await?;
        assert_ne!(a_ip, b_ip);
        // (busybox wget -T segfaults in the static build: `timeout` bounds it instead.)
        // ICMP both ways, TCP by IP, through the Service (kube-proxy) and by DNS name (CoreDNS).
        c.exec(&a, &format!("ping -c 2 -W 5 {b_ip}"))
            .context("ICMP worker -> worker2")?;
        c.exec(&b, &format!("ping -c 2 -W 5 {a_ip}"))
            .context("ICMP worker2 -> worker")?;
        let tcp = c.exec(&a, &format!("timeout 10 wget -q -O - http://{b_ip}:8080/"))?;
        assert_eq!(tcp.trim(), "kitfleet-e2e");
        let svc: Service = Api::namespaced(c.client.clone(), NS).get("net-1").await?;
        let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).context("ClusterIP")?;
        let via_svc = c.exec(&a, &format!("timeout 10 wget -q -O - http://{cluster_ip}/"))?;
        assert_eq!(via_svc.trim(), "kitfleet-e2e");
        let via_dns = c.exec(
            &a,
            &format!("timeout 10 wget -q -O - http://net-1.{NS}.svc.cluster.local/"),
        )?;
        assert_eq!(via_dns.trim(), "kitfleet-e2e");
        // The registry's name resolves in pods too (CoreDNS hosts entry).
        let cat = c.exec(
            &a,
            &format!("timeout 10 wget -q -O - http://{REGISTRY}/v2/_catalog"),
        )?;
        assert!(cat.contains("e2e/busybox"), "{cat}");
        Ok(())
    })
}

/// The node container's PID on this machine (podman).
fn node_pid(node: &str) -> Result<String> {
    Ok(
        run(podman().args(["inspect", "-f", "{{.State.Pid}}", node]))?
            .trim()
            .to_string(),
    )
}

fn node_ip(node: &str) -> Result<String> {
    Ok(run(podman().args([
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        node,
    ]))?
    .trim()
    .to_string())
}

#[test]
fn cross_node_pod_traffic_is_only_wireguard_on_the_underlay() {
    suite(|c| async move {
        let [(a, _), (_, b_ip)] = c.pods().await?;
        let pid = node_pid(&c.workers[0])?;
        let (w0, w1) = (node_ip(&c.workers[0])?, node_ip(&c.workers[1])?);
        let dir = tempfile::tempdir()?;
        let pcap = dir.path().join("underlay.pcap");
        // Everything between the two workers on worker's underlay (eth0), while pods talk across them.
        let tcpdump = Command::new("nsenter")
            .args([
                "-t", &pid, "-n", "tcpdump", "-i", "eth0", "-U", "-n", "-s", "0", "-w",
            ])
            .arg(&pcap)
            .args([&format!("host {w0} and host {w1}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("tcpdump (Debian package tcpdump)")?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let marker = "kitfleet-plaintext-marker-0123456789";
        let traffic = c.exec(
        &a,
        &format!(
            "ping -c 3 -W 5 {b_ip} >/dev/null && timeout 10 wget -q -O - 'http://{b_ip}:8080/?{marker}' && \
             timeout 10 wget -q -O /dev/null 'http://{b_ip}:8080/{marker}' ; true"
        ),
    );
        tokio::time::sleep(Duration::from_secs(1)).await;
        run(Command::new("kill").args(["-INT", &tcpdump.id().to_string()]))?;
        let out = tcpdump.wait_with_output()?;
        let traffic = traffic?;
        assert_eq!(traffic.trim(), "kitfleet-e2e");
        let decoded = run(Command::new("tcpdump")
            .args(["-r"])
            .arg(&pcap)
            .args(["-n", "-q"]))
        .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
        let lines: Vec<&str> = decoded.lines().collect();
        assert!(
            lines.len() >= 6,
            "too few packets between the workers:\n{decoded}"
        );
        for l in &lines {
            assert!(
                l.contains(" UDP,") && l.contains(".51820 "),
                "a packet between the workers that is not WireGuard UDP:\n{l}\nall:\n{decoded}"
            );
        }
        eprintln!(
            "{} packets between the workers, all WireGuard UDP",
            lines.len()
        );
        let raw = std::fs::read(&pcap)?;
        assert!(
            !raw.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "the pods' plaintext is visible on the underlay"
        );
        Ok(())
    })
}

#[test]
fn operator_metrics_are_scrapeable() {
    suite(|c| async move {
        let [(a, _), _] = c.pods().await?;
        let body = c.exec(
            &a,
            &format!(
                "timeout 10 wget -q -O - http://kitfleet-operator-metrics.{KITFLEET_NS}.svc:8080/metrics"
            ),
        )?;
        assert!(
            body.lines().any(|l| l.starts_with("kitfleet_")),
            "no kitfleet_ metric:\n{body}"
        );
        Ok(())
    })
}

#[test]
fn the_operator_leader_fails_over() {
    suite(|c| async move {
        let leases: Api<Lease> = Api::namespaced(c.client.clone(), KITFLEET_NS);
        let pods: Api<Pod> = Api::namespaced(c.client.clone(), KITFLEET_NS);
        let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), KITFLEET_NS);
        let holder = || async {
            let lease = leases.get_opt("kitfleet-operator").await?;
            Ok(lease
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity)
                .filter(|h| !h.is_empty()))
        };
        let leader = wait_for(Duration::from_secs(120), holder)
            .await
            .with_context(|| c.logs(KITFLEET_NS, "app.kubernetes.io/component=operator"))?;
        let start = Instant::now();
        pods.delete(&leader, &DeleteParams::default()).await?;
        let next = wait_for(Duration::from_secs(120), || async {
            Ok(holder().await?.filter(|h| *h != leader))
        })
        .await
        .with_context(|| c.logs(KITFLEET_NS, "app.kubernetes.io/component=operator"))?;
        eprintln!(
            "leadership moved from {leader} to {next} in {:?}",
            start.elapsed()
        );
        let pod = pods.get(&next).await?;
        assert!(
            pod.metadata.deletion_timestamp.is_none(),
            "the new leader is being deleted"
        );
        // Both replicas back before the next test.
        wait_for(Duration::from_secs(180), || async {
            let d = deployments.get("kitfleet-operator").await?;
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let ready = d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            Ok((ready == want).then_some(()))
        })
        .await?;
        Ok(())
    })
}

/// Pushes the NodeImage fixtures (kernel, init, onboot marker) to the kind registry; returns their references.
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

#[test]
fn a_nodeimage_builds_in_the_cluster_and_publishes_to_the_registry() {
    suite(|c| async move {
        let refs = push_fixtures().await?;
        let mut ni = example_nodeimage()?;
        let name = "e2e-minimal";
        ni.metadata.name = Some(name.into());
        ni.spec.image.kernel.as_mut().context("kernel")?.image = refs["kernel"].clone();
        ni.spec.image.init = vec![refs["init"].clone()];
        ni.spec.image.onboot[0].image = refs["hello"].clone();
        // A repository of its own per run: the operator (rightly) builds nothing when the artifact already exists.
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis();
        let repo_path = format!("e2e/nodes/minimal-{nonce}");
        ni.spec.output.repository = format!("{REGISTRY}/{repo_path}");
        let nis: Api<NodeImage> = Api::all(c.client.clone());
        let _ = nis.delete(name, &DeleteParams::default()).await;
        wait_for(Duration::from_secs(60), || async {
            Ok(nis.get_opt(name).await?.is_none().then_some(()))
        })
        .await?;
        let start = Instant::now();
        nis.create(&PostParams::default(), &ni).await?;
        let jobs: Api<Job> = Api::namespaced(c.client.clone(), KITFLEET_NS);
        let built = wait_for(Duration::from_secs(600), || async {
            let ni = nis.get(name).await?;
            let st = ni.status.clone().unwrap_or_default();
            if let Some(cond) = st.conditions.iter().find(|c| c.type_ == "Built") {
                if cond.status == "True" {
                    return Ok(Some(ni));
                }
                if cond.reason == "Failed" {
                    bail!("Built=False: {}: {}", cond.reason, cond.message);
                }
            }
            Ok(None)
        })
        .await
        .with_context(|| {
            format!(
                "operator:\n{}\nbuild:\n{}",
                c.logs(KITFLEET_NS, "app.kubernetes.io/component=operator"),
                c.logs(KITFLEET_NS, "kitfleet.dev/nodeimage")
            )
        })?;
        eprintln!("NodeImage built in the cluster in {:?}", start.elapsed());
        let st = built.status.unwrap_or_default();
        let artifact = st.artifact.context("status.artifact")?;
        assert!(artifact.digest.starts_with("sha256:"), "{artifact:?}");
        assert!(!artifact.formats.is_empty());
        assert!(
            st.resolved.iter().all(|r| r.digest.is_some()),
            "{:?}",
            st.resolved
        );
        // The artifact is in the registry under that digest.
        let code = run(Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            &format!(
                "http://{REGISTRY}/v2/{repo_path}/manifests/{}",
                artifact.digest
            ),
        ]))?;
        assert_eq!(code, "200", "artifact manifest in the registry");
        // The build Job ran unprivileged, as non-root.
        let sel = ListParams::default().labels(&format!("kitfleet.dev/nodeimage={name}"));
        let list = jobs.list(&sel).await?;
        assert_eq!(list.items.len(), 1, "one build Job");
        let job_uid = list.items[0].metadata.uid.clone();
        let pod_spec = list.items[0]
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .context("job pod spec")?;
        let sc = pod_spec.security_context.context("pod securityContext")?;
        assert!(sc.run_as_user.is_some_and(|u| u != 0));
        let csc = pod_spec.containers[0]
            .security_context
            .clone()
            .context("container securityContext")?;
        assert_ne!(csc.privileged, Some(true));
        assert_eq!(csc.allow_privilege_escalation, Some(false));
        // `kubectl get ni` shows the columns the CRD declares.
        let table = run(c.kubectl().args(["get", "ni", name]))?;
        let header: Vec<&str> = table
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            ["NAME", "BUILT", "DIGEST", "UPDATED", "AGE"],
            "{table}"
        );
        assert!(table.contains(&artifact.short_digest), "{table}");
        // Applying the same spec again starts no new build.
        let mut again = nis.get(name).await?;
        again.metadata.managed_fields = None;
        nis.replace(name, &PostParams::default(), &again).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let list = jobs.list(&sel).await?;
        assert_eq!(list.items.len(), 1, "no second Job");
        assert_eq!(list.items[0].metadata.uid, job_uid);
        // Deleting the NodeImage removes its Jobs.
        nis.delete(name, &DeleteParams::background()).await?;
        wait_for(Duration::from_secs(120), || async {
            let gone =
                nis.get_opt(name).await?.is_none() && jobs.list(&sel).await?.items.is_empty();
            Ok(gone.then_some(()))
        })
        .await
        .context("NodeImage and its Jobs deleted")?;
        Ok(())
    })
}

/// Runs one step of the suite: alone (the tests share the cluster), on its own runtime, skipped without a cluster.
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
