//! A measurement, not a check (`#[ignore]`; run it with
//! `cargo test -p kitfleet-operator --test scale -- --ignored --nocapture`): the `kitfleet-operator` binary on a
//! private real kube-apiserver under the chart's RBAC, with 4 and then 200 NodeImages (each resolved against Debian's
//! `docker-registry` and given a build Job). Prints the operator's RSS and how long 200 NodeImages applied at once
//! take until every one has a status. `KITFLEET_OPERATOR_BIN=target/release/kitfleet-operator` measures a release
//! build (the figures in the README).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kitfleet_api::NodeImage;
use kitfleet_e2e::apiserver::{self, Apiserver};
use kube::Api;
use kube::api::{ListParams, PostParams};

mod common;
use common::NS;

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

async fn with_status(nis: &Api<NodeImage>) -> usize {
    nis.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Built"))
        })
        .count()
}

/// Creates NodeImages `scale-<i>`, 16 requests at a time (as `kubectl apply` of many files would).
async fn create(nis: &Api<NodeImage>, reg: &str, range: std::ops::Range<usize>) {
    use futures::StreamExt as _;
    futures::stream::iter(range)
        .map(|i| async move {
            nis.create(
                &PostParams::default(),
                &common::manifest(&format!("scale-{i:03}"), reg, ""),
            )
            .await
            .unwrap();
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

async fn settle(nis: &Api<NodeImage>, n: usize) -> Duration {
    let t = Instant::now();
    while with_status(nis).await < n {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "not all {n} have a status"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn operator_memory_and_time_to_status() {
    let api = Apiserver::start_with(&apiserver::binaries().expect("Kubernetes binaries")).unwrap();
    let registry = common::registry().await;
    let reg = registry.addr.clone();
    let admin = api.admin_client().await.unwrap();
    common::apply_chart_rbac(&admin).await;
    let token = api
        .service_account_token(NS, "kitfleet-operator", None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{}\", certificate-authority: \"{}\"}}}}]\n\
             users: [{{name: u, user: {{token: \"{token}\"}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n",
            api.url(),
            api.dir().join("ca.crt").display()
        ),
    )
    .unwrap();
    // KITFLEET_OPERATOR_BIN: measure another build (e.g. target/release/kitfleet-operator).
    let bin = std::env::var("KITFLEET_OPERATOR_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_kitfleet-operator").to_string());
    println!("operator binary: {bin}");
    let mut child = Command::new(bin)
        .args([
            "run",
            "--builder-image",
            "kitfleet-build:test",
            "--identity",
            "op-scale",
        ])
        .args(["--listen", "127.0.0.1:0", "--insecure-registry", &reg])
        .args([
            "--cache-dir",
            &dir.path().join("cache").display().to_string(),
        ])
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let nis: Api<NodeImage> = Api::all(admin.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("idle (leading, no NodeImage): RSS {:.1} MiB", rss_mib(pid));
    create(&nis, &reg, 0..4).await;
    let t4 = settle(&nis, 4).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "4 NodeImages: all with a status after {t4:.2?}; RSS {:.1} MiB",
        rss_mib(pid)
    );
    let t = Instant::now();
    create(&nis, &reg, 4..200).await;
    let created = t.elapsed();
    let t200 = settle(&nis, 200).await + created;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(admin.clone(), NS);
    let njobs = jobs.list(&ListParams::default()).await.unwrap().items.len();
    println!(
        "200 NodeImages ({created:.2?} to create 196): all with a status {t200:.2?} after the first create; {njobs} Jobs; RSS {:.1} MiB",
        rss_mib(pid)
    );
    let metrics = admin
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .unwrap();
    let lists = |resource: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("apiserver_request_total{")
                    && l.contains("verb=\"LIST\"")
                    && l.contains(&format!("resource=\"{resource}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    // The test itself lists NodeImages while it waits, and Jobs once.
    println!(
        "LIST requests the apiserver served: jobs {}, pods {}",
        lists("jobs"),
        lists("pods")
    );
    let _ = child.kill();
    let _ = child.wait();
}
