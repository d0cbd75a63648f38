//! SecurityPolicy enforced in real pods (issue 14): the chart's webhooks, the node agent's CSI plugin, the launcher
//! and the status controller in a kind cluster. The workloads are the sandbox tests' static C probe
//! (`sandbox/tests/fixtures/probe.c`, printing `ok N` or `errno N`) and a static busybox, built into
//! `kitfleet-registry:5000/e2e/probe` by `scripts/kind/probe-image.sh` (nothing pulled from outside).
//!
//! Runs only with `KITFLEET_KIND=1` (`kitfleet_e2e::kind`). The test command runs it on its cluster after `kind.rs`;
//! it leaves its namespaces (and bare pods) behind, which the rollout suite after it drains with `force`.
//!
//! ```sh
//! KITFLEET_IMAGES_FROM_HEAD=1 KIND_CLUSTER=kf-policy bash scripts/kind/up.sh --fresh
//! KITFLEET_KIND=1 KUBECONFIG=/var/cache/kitfleet/kind/kubeconfig-kf-policy \
//!   cargo test -p kitfleet-e2e --test kind_policy -- --test-threads=1
//! cargo test -p kitfleet-e2e --test kind_policy -- --ignored start_latency   # the benchmark (prints figures)
//! ```

use std::ops::Deref;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use kitfleet_api::SecurityPolicy;
use kitfleet_e2e::kind::{Kind, block_on, connect, repo, run, wait_for};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

static SERIAL: Mutex<()> = Mutex::new(());

/// The cluster (`kitfleet_e2e::kind`) and the probe image the suite runs.
struct Cluster {
    kind: Kind,
    probe: String,
}

impl Deref for Cluster {
    type Target = Kind;
    fn deref(&self) -> &Kind {
        &self.kind
    }
}

/// The cluster, or `None` (skip) without `KITFLEET_KIND=1`; builds and pushes the probe image.
async fn cluster() -> Option<Cluster> {
    let kind = connect().await?;
    let probe = run(Command::new("bash").arg(repo().join("scripts/kind/probe-image.sh")))
        .expect("scripts/kind/probe-image.sh");
    let probe = probe.trim().lines().last().unwrap_or_default().to_string();
    Some(Cluster { kind, probe })
}

impl Cluster {
    /// A fresh namespace (deleted first if an earlier run left it).
    async fn namespace(&self, ns: &str) -> Result<()> {
        let nss: Api<Namespace> = Api::all(self.client.clone());
        if nss.get_opt(ns).await?.is_some() {
            let _ = nss.delete(ns, &DeleteParams::default()).await;
            wait_for(Duration::from_secs(120), || async {
                Ok(nss.get_opt(ns).await?.is_none().then_some(()))
            })
            .await
            .context("old namespace deleted")?;
        }
        let n: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        nss.create(&PostParams::default(), &n).await?;
        // Pods need the default ServiceAccount (the controller-manager makes it).
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), ns);
        wait_for(Duration::from_secs(30), || async {
            Ok(sas.get_opt("default").await?.map(|_| ()))
        })
        .await
    }

    async fn policy(&self, ns: &str, name: &str, spec: Value) -> Result<SecurityPolicy> {
        let api: Api<SecurityPolicy> = Api::namespaced(self.client.clone(), ns);
        let p: SecurityPolicy = serde_json::from_value(json!({
            "apiVersion": "kitfleet.dev/v1alpha1", "kind": "SecurityPolicy",
            "metadata": {"name": name}, "spec": spec
        }))?;
        let created = api.create(&PostParams::default(), &p).await?;
        // The webhook's reflector and the namespace label follow the policy within a moment.
        let nss: Api<Namespace> = Api::all(self.client.clone());
        wait_for(Duration::from_secs(30), || async {
            Ok(nss
                .get(ns)
                .await?
                .labels()
                .contains_key(kitfleet_api::constants::LABEL_SANDBOX_NAMESPACE)
                .then_some(()))
        })
        .await
        .context("the sandbox namespace label")?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(created)
    }

    fn pod_json(&self, name: &str, app: &str, node: &str, command: &[&str]) -> Value {
        json!({
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {
                "nodeName": node,
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 0,
                "automountServiceAccountToken": false,
                "containers": [{"name": "c", "image": self.probe, "command": command}]
            }
        })
    }

    async fn create_pod(&self, ns: &str, pod: Value) -> Result<Pod> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        Ok(api
            .create(&PostParams::default(), &serde_json::from_value(pod)?)
            .await?)
    }

    /// The pod's log once it contains `marker`.
    async fn log_until(&self, ns: &str, pod: &str, marker: &str) -> Result<String> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        wait_for(Duration::from_secs(120), || async {
            let log = api.logs(pod, &Default::default()).await?;
            Ok(log.contains(marker).then_some(log))
        })
        .await
        .with_context(|| format!("log of {ns}/{pod} with {marker:?}"))
    }

    /// The container's termination (exit code, signal, reason) once it terminated.
    async fn terminated(&self, ns: &str, pod: &str) -> Result<(i32, String)> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        wait_for(Duration::from_secs(120), || async {
            let p = api.get(pod).await?;
            let t = p
                .status
                .and_then(|s| s.container_statuses)
                .and_then(|c| c.into_iter().next())
                .and_then(|c| c.state)
                .and_then(|s| s.terminated);
            Ok(t.map(|t| (t.exit_code, t.reason.unwrap_or_default())))
        })
        .await
    }

    /// Events of the namespace with this reason whose note or message contains `text`.
    async fn event(&self, ns: &str, reason: &str, text: &str) -> Result<String> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(self.client.clone(), ns);
        wait_for(Duration::from_secs(120), || async {
            let a = api
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .find_map(|e| {
                    let n = e.note.unwrap_or_default();
                    (e.reason.as_deref() == Some(reason) && n.contains(text)).then_some(n)
                });
            if a.is_some() {
                return Ok(a);
            }
            Ok(core
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .find_map(|e| {
                    let m = e.message.unwrap_or_default();
                    (e.reason.as_deref() == Some(reason) && m.contains(text)).then_some(m)
                }))
        })
        .await
        .with_context(|| format!("Event {reason} with {text:?} in {ns}"))
    }

    async fn status(&self, ns: &str, name: &str) -> Result<kitfleet_api::SecurityPolicyStatus> {
        let api: Api<SecurityPolicy> = Api::namespaced(self.client.clone(), ns);
        Ok(api.get(name).await?.status.unwrap_or_default())
    }
}

fn suite<F, Fut>(step: F)
where
    F: FnOnce(Cluster) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    block_on(async {
        match cluster().await {
            Some(c) => step(c).await,
            None => Ok(()),
        }
    });
}

/// Read and execute the image's programs, write only /tmp, connect only to TCP 8081, die on ptrace.
fn confining_spec(app: &str, mode: &str) -> Value {
    json!({
        "podSelector": {"matchLabels": {"app": app}},
        "mode": mode,
        "landlock": {
            "filesystem": [
                {"paths": ["/bin", "/etc"], "access": ["execute", "read-file", "read-dir"]},
                {"paths": ["/tmp"], "access": ["read-file", "read-dir", "write-file", "make-reg", "truncate"]}
            ],
            "network": {"bindTcp": [], "connectTcp": [8081]}
        },
        "seccomp": {"defaultAction": "allow", "rules": [{"names": ["ptrace"], "action": "kill-process"}]}
    })
}

const PROBES: &str = "echo w-data $(probe write /data/x); echo w-tmp $(probe write /tmp/x); \
                      echo c-8081 $(probe connect 8081); echo c-8082 $(probe connect 8082); echo done";

fn line<'a>(log: &'a str, key: &str) -> &'a str {
    log.lines()
        .find(|l| l.starts_with(&format!("{key} ")))
        .map_or("", |l| l[key.len() + 1..].trim())
}

#[test]
fn a_matched_pod_is_confined_and_status_shows_both_workers() {
    suite(|c| async move {
        let ns = "kf-policy-enforce";
        c.namespace(ns).await?;
        c.policy(ns, "probe", confining_spec("probe", "enforce"))
            .await?;
        for (i, w) in c.workers.iter().enumerate() {
            let name = format!("confined-{i}");
            let cmd = format!("{PROBES}; sleep 100000");
            let pod = c
                .create_pod(ns, c.pod_json(&name, "probe", w, &["/bin/sh", "-c", &cmd]))
                .await?;
            let spec = pod.spec.unwrap();
            assert!(
                spec.volumes
                    .unwrap_or_default()
                    .iter()
                    .any(|v| v.csi.is_some()),
                "the webhook added the sandbox volume"
            );
            let log = c.log_until(ns, &name, "done").await?;
            assert_eq!(
                line(&log, "w-data"),
                "errno 13",
                "EACCES outside the allowed paths:\n{log}"
            );
            assert_eq!(line(&log, "w-tmp"), "ok 1", "/tmp is writable:\n{log}");
            assert_eq!(
                line(&log, "c-8081"),
                "errno 111",
                "8081 allowed (refused: nothing listens):\n{log}"
            );
            assert_eq!(
                line(&log, "c-8082"),
                "errno 13",
                "8082 denied by Landlock:\n{log}"
            );
        }
        // ptrace kills the process (SIGSYS: 128 + 31).
        let p = c.pod_json(
            "tracer",
            "probe",
            &c.workers[0],
            &["/bin/probe", "syscall", "101"],
        );
        c.create_pod(ns, p).await?;
        let (code, _) = c.terminated(ns, "tracer").await?;
        assert_eq!(code, 159, "killed by SIGSYS on ptrace");
        // Both workers report the policy enforced.
        let s = wait_for(Duration::from_secs(60), || async {
            let s = c.status(ns, "probe").await?;
            Ok((s.nodes_enforcing == 2).then_some(s))
        })
        .await
        .context("status.nodesEnforcing == 2")?;
        assert!(s.matched_pods >= 2, "{s:?}");
        let mut nodes: Vec<String> = s.nodes.iter().map(|n| n.node.clone()).collect();
        nodes.sort();
        assert_eq!(nodes, c.workers);
        assert!(s.nodes.iter().all(|n| n.landlock_abi >= 4), "{s:?}");
        Ok(())
    });
}

/// The kernel's seccomp audit records (`type=1326`) since `since` for executable `exe` and syscall `nr`, from the
/// host's kernel log (`dmesg`; the kind nodes share the host's kernel).
fn seccomp_log_records(since: std::time::SystemTime, exe: &str, nr: u32) -> Result<Vec<String>> {
    let since = since.duration_since(std::time::UNIX_EPOCH)?.as_secs_f64() - 1.0;
    let log = run(&mut Command::new("dmesg"))
        .context("reading the kernel log (dmesg) for seccomp audit records")?;
    let exe = format!("exe=\"{exe}\"");
    let sc = format!("syscall={nr} ");
    Ok(log
        .lines()
        .filter(|l| l.contains("type=1326") && l.contains(&exe) && l.contains(&sc))
        .filter(|l| {
            // audit(<epoch seconds>.<ms>:<serial>)
            l.split_once("audit(")
                .and_then(|(_, t)| t.split_once(':'))
                .and_then(|(t, _)| t.parse::<f64>().ok())
                .is_some_and(|t| t >= since)
        })
        .map(str::to_string)
        .collect())
}

#[test]
fn audit_lets_a_denied_syscall_run_and_status_says_landlock_is_not_applied() {
    suite(|c| async move {
        let ns = "kf-policy-audit";
        let started = std::time::SystemTime::now();
        c.namespace(ns).await?;
        c.policy(ns, "aud", confining_spec("aud", "audit")).await?;
        let cmd = format!("{PROBES}; echo ptrace $(probe syscall 101 0); echo end; sleep 100000");
        c.create_pod(
            ns,
            c.pod_json("audited", "aud", &c.workers[1], &["/bin/sh", "-c", &cmd]),
        )
        .await?;
        let log = c.log_until(ns, "audited", "end").await?;
        assert_eq!(
            line(&log, "ptrace"),
            "ok 0",
            "ptrace runs (logged only):\n{log}"
        );
        assert_eq!(
            line(&log, "w-data"),
            "ok 1",
            "Landlock is not applied in audit mode:\n{log}"
        );
        // The seccomp LOG action wrote a kernel audit record (type 1326) for the pod's ptrace: kind nodes share the
        // host's kernel, so its log has it.
        let logged = wait_for(Duration::from_secs(30), || async {
            Ok(seccomp_log_records(started, "/bin/probe", 101)?
                .into_iter()
                .find(|r| r.contains("code=0x7ffc0000")))
        })
        .await
        .context("a kernel audit record of the logged ptrace (SECCOMP_RET_LOG)")?;
        eprintln!("logged: {logged}");
        // LandlockApplied follows from the spec at once; nodesEnforcing once the worker's report (written every 2 s)
        // reached the status controller: wait for both (asserting the second right after the first raced it).
        let s = wait_for(Duration::from_secs(60), || async {
            let s = c.status(ns, "aud").await?;
            let audit = s.conditions.iter().any(|x| {
                x.type_ == "LandlockApplied" && x.status == "False" && x.reason == "AuditMode"
            });
            Ok((audit && s.nodes_enforcing == 1).then_some(s))
        })
        .await
        .context("status: LandlockApplied=False/AuditMode and nodesEnforcing == 1")?;
        assert_eq!(s.nodes.len(), 1, "{s:?}");
        assert_eq!(s.nodes[0].node, c.workers[1], "{s:?}");
        Ok(())
    });
}

#[test]
fn a_pod_needing_a_higher_landlock_abi_is_refused_with_an_event() {
    suite(|c| async move {
        let ns = "kf-policy-abi";
        c.namespace(ns).await?;
        let mut spec = confining_spec("strict", "enforce");
        spec["landlock"]["minAbi"] = json!(99);
        c.policy(ns, "strict", spec).await?;
        c.create_pod(
            ns,
            c.pod_json(
                "strict",
                "strict",
                &c.workers[0],
                &["/bin/sh", "-c", "echo RAN"],
            ),
        )
        .await?;
        let (code, _) = c.terminated(ns, "strict").await?;
        assert_ne!(code, 0, "the launcher refused");
        let api: Api<Pod> = Api::namespaced(c.client.clone(), ns);
        let log = api
            .logs("strict", &Default::default())
            .await
            .unwrap_or_default();
        assert!(!log.contains("RAN"), "the workload never ran:\n{log}");
        let note = c.event(ns, "PodRefused", "minAbi").await?;
        assert!(note.contains(&format!("pod {ns}/strict")), "{note}");
        let s = c.status(ns, "strict").await?;
        assert!(s.refused_pods >= 1, "{s:?}");
        Ok(())
    });
}

#[test]
fn a_pod_admitted_before_its_policy_changed_never_runs() {
    suite(|c| async move {
        let ns = "kf-policy-change";
        c.namespace(ns).await?;
        c.policy(ns, "web", confining_spec("web", "enforce"))
            .await?;
        // Admitted now (set pinned), scheduled only after the policy changed.
        let mut p = c.pod_json(
            "late",
            "web",
            &c.workers[0],
            &["/bin/sh", "-c", "echo RAN; sleep 100000"],
        );
        p["spec"].as_object_mut().unwrap().remove("nodeName");
        p["spec"]["schedulingGates"] = json!([{"name": "kitfleet.dev/e2e"}]);
        c.create_pod(ns, p).await?;
        let policies: Api<SecurityPolicy> = Api::namespaced(c.client.clone(), ns);
        policies
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"mode": "enforce-and-log"}})),
            )
            .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);
        pods.patch(
            "late",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"schedulingGates": null}})),
        )
        .await?;
        let msg = c
            .event(ns, "FailedMount", "changed since admission")
            .await?;
        assert!(msg.contains("generation 1 → 2"), "{msg}");
        let p = pods.get("late").await?;
        let running = p
            .status
            .and_then(|s| s.container_statuses)
            .unwrap_or_default()
            .iter()
            .any(|s| {
                s.state
                    .as_ref()
                    .is_some_and(|st| st.running.is_some() || st.terminated.is_some())
            });
        assert!(!running, "the container never started");
        Ok(())
    });
}

#[test]
fn deleting_the_policy_stops_wrapping_new_pods() {
    suite(|c| async move {
        let ns = "kf-policy-delete";
        c.namespace(ns).await?;
        c.policy(ns, "gone", confining_spec("gone", "enforce"))
            .await?;
        let policies: Api<SecurityPolicy> = Api::namespaced(c.client.clone(), ns);
        policies.delete("gone", &DeleteParams::default()).await?;
        // The webhook's watch sees the deletion within moments; each attempt is a new pod (a wrapped one left by
        // an earlier attempt would keep its name while the kubelet tears it down).
        let attempt = std::sync::atomic::AtomicU32::new(0);
        let pod = wait_for(Duration::from_secs(30), || async {
            let name = format!(
                "free-{}",
                attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let p = c
                .create_pod(
                    ns,
                    c.pod_json(
                        &name,
                        "gone",
                        &c.workers[1],
                        &[
                            "/bin/sh",
                            "-c",
                            "echo w-data $(probe write /data/x); sleep 100000",
                        ],
                    ),
                )
                .await?;
            let wrapped = p
                .spec
                .as_ref()
                .unwrap()
                .volumes
                .iter()
                .flatten()
                .any(|v| v.csi.is_some());
            Ok((!wrapped).then_some(p))
        })
        .await
        .context("a pod created after the deletion is not wrapped")?;
        let name = pod.name_any();
        let tries = attempt.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("unwrapped at attempt {tries}");
        assert_eq!(
            pod.spec.unwrap().containers[0]
                .command
                .as_deref()
                .unwrap_or_default()[0],
            "/bin/sh"
        );
        let log = c.log_until(ns, &name, "w-data").await?;
        assert_eq!(line(&log, "w-data"), "ok 1", "{log}");
        Ok(())
    });
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Create → Ready of `n` pods one after another (each deleted after), in ms.
async fn start_times(c: &Cluster, ns: &str, prefix: &str, app: &str, n: usize) -> Result<Vec<f64>> {
    let api: Api<Pod> = Api::namespaced(c.client.clone(), ns);
    let mut out = Vec::new();
    for i in 0..n {
        let name = format!("{prefix}-{i}");
        let w = &c.workers[i % 2];
        let t0 = Instant::now();
        c.create_pod(ns, c.pod_json(&name, app, w, &["/bin/sleep", "100000"]))
            .await?;
        wait_for(Duration::from_secs(60), || async {
            let p = api.get(&name).await?;
            let ready = p
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            Ok(ready.then_some(()))
        })
        .await?;
        out.push(t0.elapsed().as_secs_f64() * 1000.0);
        api.delete(&name, &DeleteParams::default().grace_period(0))
            .await?;
    }
    Ok(out)
}

/// Benchmark (prints figures): extra pod start latency with a SecurityPolicy, create → Ready, 30 pods each,
/// interleaved in rounds of 5 so that load drifts hit both sides.
#[test]
#[ignore]
fn start_latency() {
    suite(|c| async move {
        let ns = "kf-policy-bench";
        c.namespace(ns).await?;
        c.policy(ns, "bench", confining_spec("sandboxed", "enforce"))
            .await?;
        let (mut with, mut without) = (Vec::new(), Vec::new());
        // Warm the image on both workers.
        start_times(&c, ns, "warm", "sandboxed", 2).await?;
        for round in 0..6 {
            with.extend(start_times(&c, ns, &format!("sandboxed-r{round}"), "sandboxed", 5).await?);
            without.extend(start_times(&c, ns, &format!("plain-r{round}"), "plain", 5).await?);
        }
        with.sort_by(f64::total_cmp);
        without.sort_by(f64::total_cmp);
        let (p50w, p95w, p50o, p95o) = (
            percentile(&with, 0.5),
            percentile(&with, 0.95),
            percentile(&without, 0.5),
            percentile(&without, 0.95),
        );
        println!("pod start (create → Ready), {} pods each, ms:", with.len());
        println!("  with policy    p50 {p50w:.0}  p95 {p95w:.0}");
        println!("  without        p50 {p50o:.0}  p95 {p95o:.0}");
        println!(
            "  extra          p50 {:.0}  p95 {:.0}",
            p50w - p50o,
            p95w - p95o
        );
        Ok(())
    });
}
