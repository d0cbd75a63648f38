//! The NodeImage controller against a real kube-apiserver (the `kitfleet-e2e` fixture: etcd + kube-apiserver, RBAC
//! on, the chart's CRDs), running under the chart's RBAC — its ServiceAccount, with the ClusterRole and Role rendered
//! from the chart by `helm` — and resolving against a real registry (Debian's `docker-registry`). No kubelet or
//! controller-manager runs: the test plays their part where a scenario needs it (a build Pod waiting on an image,
//! a Job's final status, the artifact the Job would have pushed).
//!
//! Scenarios, in order, on one operator: new → finalizer + Job; a loopback registry is flagged; a build pod stuck in
//! `ImagePullBackOff` → its reason in `Built` and in `kubectl get`; success → `status.artifact`; unchanged → no write
//! (resourceVersion unchanged); invalid → `Degraded` + Event, no Job; missing push secret → `Degraded`, no Job, then
//! a Job once the Secret exists; two failed attempts → two Events; supersede → the old Job deleted; deletion → the
//! running Job deleted, the NodeImage gone; the finalizer of an object already deleted → no error.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kitfleet_api::NodeImage;
use kitfleet_builder::cache::Cache;
use kitfleet_builder::source::{SourceOptions, Sources};
use kitfleet_e2e::apiserver;
use kitfleet_operator::build::controller::{self, Context};
use kitfleet_operator::build::registry::BuilderRegistry;
use kitfleet_operator::config::Config;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

mod common;
use common::{NS, apply_chart_rbac, manifest};

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
    jobs: Api<Job>,
}

impl Env {
    async fn jobs_of(&self, name: &str) -> Vec<Job> {
        self.jobs
            .list(&ListParams::default().labels(&format!("kitfleet.dev/nodeimage={name}")))
            .await
            .unwrap()
            .items
    }

    async fn events(&self, name: &str) -> Vec<Event> {
        let ev: Api<Event> = Api::namespaced(self.admin.clone(), "default");
        ev.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect()
    }

    async fn until(&self, name: &str, what: &str, f: impl Fn(&NodeImage) -> bool) -> NodeImage {
        let nis = self.nis.clone();
        wait(what, 30, async || {
            nis.get_opt(name).await.unwrap().filter(|n| f(n))
        })
        .await
    }

    async fn job_status(&self, job: &str, status: Value) {
        let patch = json!({"status": status});
        self.jobs
            .patch_status(job, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("job {job} status: {e}"));
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// The status the Job controller writes for a finished Job.
fn finished(ok: bool) -> Value {
    let t = now();
    let (kind, reason, interim) = if ok {
        ("Complete", "CompletionsReached", "SuccessCriteriaMet")
    } else {
        ("Failed", "BackoffLimitExceeded", "FailureTarget")
    };
    json!({
        "startTime": t, "completionTime": if ok { json!(t) } else { Value::Null },
        "succeeded": if ok { 1 } else { 0 }, "failed": if ok { 0 } else { 1 },
        "conditions": [
            {"type": interim, "status": "True", "reason": reason, "lastTransitionTime": t, "lastProbeTime": t},
            {"type": kind, "status": "True", "reason": reason, "lastTransitionTime": t, "lastProbeTime": t},
        ],
    })
}

/// Publishes what the build Job would have pushed for `key`: a Kitfleet artifact (small stand-in files, real
/// registry, real digests) with `kitfleet-build`'s own push code.
async fn publish(reg: &str, repo: &str, key: &str, dir: &Path) {
    let files = [
        ("kernel", "kernel"),
        ("initrd.img", "initrd"),
        ("cmdline", "cmdline"),
    ];
    let mut outputs = Vec::new();
    for (file, role) in files {
        let path = dir.join(file);
        std::fs::write(&path, format!("{role} of {key}")).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        outputs.push(kitfleet_builder::build::OutputFile {
            format: "kernel+initrd".into(),
            role: role.into(),
            size: bytes.len() as u64,
            digest: format!("sha256:{}", hex_digest(&bytes)),
            path,
        });
    }
    let result = kitfleet_builder::build::BuildResult {
        build_key: key.trim_start_matches("sha256:").into(),
        inputs: Vec::new(),
        outputs,
        cached_segments: 0,
        built_segments: 0,
        kspp: None,
    };
    let sources = Sources::new(
        Cache::open(dir.join("cache")).unwrap(),
        SourceOptions {
            arch: "amd64".into(),
            insecure_registries: vec![reg.to_string()],
            credentials: kitfleet_builder::auth::Credentials::anonymous(),
            offline: false,
        },
    );
    kitfleet_builder::push::push(&sources, repo, &result, "amd64")
        .await
        .unwrap();
}

fn hex_digest(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

fn operator_config(reg: &str) -> Config {
    Config::parse_from([
        "--builder-image",
        "kitfleet-build:test",
        "--identity",
        "op-test",
        "--no-leader-election",
        "--insecure-registry",
        reg,
        "--retry-base",
        "1",
        "--retry-max",
        "2",
        "--listen",
        "127.0.0.1:0",
    ])
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_under_the_chart_rbac() {
    let Some(api) = apiserver::shared() else {
        return;
    };
    let registry = common::registry().await;
    let reg = registry.addr.clone();
    let admin = api.admin_client().await.unwrap();
    apply_chart_rbac(&admin).await;
    let client = api
        .service_account_client(NS, "kitfleet-operator")
        .await
        .unwrap();
    let config = operator_config(&reg);
    let dir = tempfile::tempdir().unwrap();
    let registry_client = BuilderRegistry::new(
        &dir.path().join("op-cache"),
        "amd64",
        vec![reg.clone()],
        None,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(kitfleet_operator::run::run_with(
        config,
        client.clone(),
        registry_client,
        listener,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let env = Env {
        nis: Api::all(admin.clone()),
        jobs: Api::namespaced(admin.clone(), NS),
        admin: admin.clone(),
    };
    let pp = PostParams::default();

    // New → finalizer, resolution, one Job, Building; the loopback registry is flagged.
    env.nis
        .create(&pp, &manifest("s-new", &reg, ""))
        .await
        .unwrap();
    let ni = env
        .until("s-new", "a Job is building", |n| {
            cond(n, "Built").is_some_and(|c| c.1 == "Building")
        })
        .await;
    assert_eq!(ni.finalizers(), ["kitfleet.dev/build-cleanup"]);
    let key = ni.status.as_ref().unwrap().build_key.clone().unwrap();
    let jobs = env.jobs_of("s-new").await;
    assert_eq!(jobs.len(), 1, "one Job");
    let job = jobs[0].name_any();
    assert_eq!(jobs[0].annotations()["kitfleet.dev/build-key"], key);
    let lb = cond(&ni, "LoopbackRegistry").expect("LoopbackRegistry condition");
    assert!(
        lb.2.contains(&format!("spec.kernel.image: {reg}/fixtures/kernel:6.1")),
        "{lb:?}"
    );
    // Events are posted beside the status writes, not before them: give them a moment to arrive.
    let mut events = env.events("s-new").await;
    for _ in 0..50 {
        let has = |r: &str| events.iter().any(|e| e.reason.as_deref() == Some(r));
        if has("BuildStarted") && has("LoopbackRegistry") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        events = env.events("s-new").await;
    }
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("BuildStarted")
                && e.related.as_ref().and_then(|r| r.name.as_deref()) == Some(job.as_str())),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("LoopbackRegistry"))
    );

    // Its pod cannot pull the builder image: the waiting reason shows in Built and in `kubectl get`.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    apiserver::ensure_service_account(&admin, NS, "default")
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": format!("{job}-p"), "labels": {"job-name": job, "app.kubernetes.io/managed-by": "kitfleet-operator"}},
        "spec": {"containers": [{"name": "build", "image": "kitfleet-build:test"}]}
    }))
    .unwrap();
    pods.create(&pp, &pod).await.unwrap();
    let waiting = json!({"status": {"phase": "Pending", "containerStatuses": [{"name": "build", "image": "kitfleet-build:test",
        "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"kitfleet-build:test\""}}}]}});
    pods.patch_status(
        &format!("{job}-p"),
        &PatchParams::default(),
        &Patch::Merge(&waiting),
    )
    .await
    .unwrap();
    let ni = env
        .until("s-new", "Built says ImagePullBackOff", |n| {
            cond(n, "Built").is_some_and(|c| c.1 == "ImagePullBackOff")
        })
        .await;
    assert!(
        cond(&ni, "Built")
            .unwrap()
            .2
            .contains("Back-off pulling image")
    );
    let table = api.kubectl().args(["get", "ni", "s-new"]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("ImagePullBackOff")),
        "{table}"
    );

    // Success: the Job pushed its artifact and the Job controller marks it complete.
    publish(&reg, &format!("{reg}/kitfleet/s-new"), &key, dir.path()).await;
    env.job_status(&job, finished(true)).await;
    let ni = env
        .until("s-new", "Built with the artifact", |n| {
            cond(n, "Built").is_some_and(|c| c.0 == "True")
        })
        .await;
    let artifact = ni
        .status
        .as_ref()
        .unwrap()
        .artifact
        .clone()
        .expect("status.artifact");
    assert!(
        artifact
            .reference
            .starts_with(&format!("{reg}/kitfleet/s-new:bk-")),
        "{artifact:?}"
    );
    assert_eq!(cond(&ni, "Built").unwrap().1, "Built");

    // Unchanged: a reconcile (the Job is touched) writes nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rv = env.nis.get("s-new").await.unwrap().resource_version();
    let touch = json!({"metadata": {"labels": {"touched": "yes"}}});
    env.jobs
        .patch(&job, &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.nis.get("s-new").await.unwrap().resource_version(),
        rv,
        "no write"
    );
    assert_eq!(env.jobs_of("s-new").await.len(), 1);

    // Invalid → Degraded + Event, no Job.
    let mut bad = manifest("s-invalid", &reg, "");
    bad.spec.image.kernel = None;
    env.nis.create(&pp, &bad).await.unwrap();
    let ni = env
        .until("s-invalid", "Degraded", |n| {
            cond(n, "Degraded").is_some_and(|c| c.0 == "True")
        })
        .await;
    assert!(
        cond(&ni, "Degraded")
            .unwrap()
            .2
            .contains("spec.kernel: a kernel is required")
    );
    assert!(
        env.events("s-invalid")
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("InvalidSpec"))
    );
    assert!(env.jobs_of("s-invalid").await.is_empty());

    // Missing push secret → Degraded, no Job; the Secret appears → a Job.
    let mut sec = manifest("s-secret", &reg, "");
    sec.spec.output.push_secret_name = Some("push".into());
    env.nis.create(&pp, &sec).await.unwrap();
    let ni = env
        .until("s-secret", "Degraded PushSecret", |n| {
            cond(n, "Degraded").is_some_and(|c| c.1 == "PushSecret")
        })
        .await;
    assert_eq!(
        cond(&ni, "Degraded").unwrap().2,
        "spec.output.pushSecretName: Secret kitfleet-system/push not found"
    );
    assert!(env.jobs_of("s-secret").await.is_empty());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "push"}, "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": "{\"auths\":{}}"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), NS)
        .create(&pp, &secret)
        .await
        .unwrap();
    env.until("s-secret", "building once the Secret exists", |n| {
        cond(n, "Built").is_some_and(|c| c.1 == "Building")
    })
    .await;
    assert_eq!(env.jobs_of("s-secret").await.len(), 1);

    // Two failed attempts → two Events, each with its attempt.
    let j1 = env.jobs_of("s-secret").await[0].name_any();
    env.job_status(&j1, finished(false)).await;
    let j2 = wait("attempt 2", 30, async || {
        env.jobs_of("s-secret")
            .await
            .into_iter()
            .map(|j| j.name_any())
            .find(|n| n.ends_with("-2"))
    })
    .await;
    env.job_status(&j2, finished(false)).await;
    wait("attempt 3", 30, async || {
        env.jobs_of("s-secret")
            .await
            .into_iter()
            .find(|j| j.name_any().ends_with("-3"))
    })
    .await;
    let failed: Vec<String> = env
        .events("s-secret")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("BuildFailed"))
        .filter_map(|e| e.note)
        .collect();
    assert!(
        failed.iter().any(|n| n.contains("attempt 1 failed")),
        "{failed:?}"
    );
    assert!(
        failed.iter().any(|n| n.contains("attempt 2 failed")),
        "{failed:?}"
    );

    // Supersede: a spec change while attempt 3 runs → its Job is deleted, the new key's Job starts.
    let old_key = env
        .nis
        .get("s-secret")
        .await
        .unwrap()
        .status
        .unwrap()
        .build_key
        .unwrap();
    let change = json!({"spec": {"kernel": {"cmdline": "console=ttyS1"}}});
    env.nis
        .patch("s-secret", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    let ni = env
        .until("s-secret", "a new key", |n| {
            n.status
                .as_ref()
                .and_then(|s| s.build_key.as_ref())
                .is_some_and(|k| *k != old_key)
        })
        .await;
    let new_key = ni.status.unwrap().build_key.unwrap();
    wait("only the new key's Job", 30, async || {
        let jobs = env.jobs_of("s-secret").await;
        let live: Vec<_> = jobs
            .iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .collect();
        (live.len() == 1 && live[0].annotations()["kitfleet.dev/build-key"] == new_key)
            .then_some(())
    })
    .await;

    // Deletion → the running Job is deleted, then the finalizer goes.
    env.nis
        .delete("s-secret", &DeleteParams::default())
        .await
        .unwrap();
    let nis = env.nis.clone();
    wait("s-secret gone", 30, async || {
        nis.get_opt("s-secret")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    wait("its Jobs gone", 30, async || {
        env.jobs_of("s-secret")
            .await
            .iter()
            .all(|j| j.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;

    // A queued reconcile of an object already deleted: removing its finalizer is no error.
    let mut stale = ni_with_finalizer(&env, &reg).await;
    env.nis
        .delete(&stale.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    // The running operator removes the finalizer itself; if it has not yet, the test does.
    let patch = json!({"metadata": {"finalizers": null}});
    let _ = env
        .nis
        .patch(
            &stale.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await;
    wait("s-gone gone", 30, async || {
        nis.get_opt("s-gone").await.unwrap().is_none().then_some(())
    })
    .await;
    stale.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let ctx = Context::new(
        client.clone(),
        BuilderRegistry::new(&dir.path().join("c2"), "amd64", vec![reg.clone()], None).unwrap(),
        kitfleet_operator::run::job_settings(&operator_config(&reg)),
        Arc::default(),
        "op-test-2",
    );
    assert!(ctx.prime_caches(Vec::new(), Vec::new()));
    controller::reconcile(Arc::new(stale), Arc::new(ctx))
        .await
        .expect("no error for an object already gone");

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(20), operator)
        .await
        .expect("the operator stops")
        .unwrap()
        .unwrap();
}

async fn ni_with_finalizer(env: &Env, reg: &str) -> NodeImage {
    let mut n = manifest("s-gone", reg, "");
    n.metadata.finalizers = Some(vec!["kitfleet.dev/build-cleanup".into()]);
    // Invalid, so the running operator leaves it alone apart from its status.
    n.spec.image.kernel = None;
    env.nis.create(&PostParams::default(), &n).await.unwrap()
}
