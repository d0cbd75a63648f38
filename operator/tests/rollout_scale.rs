//! A measurement, not a check (`#[ignore]`; run it with
//! `cargo test -p kitfleet-operator --test rollout_scale -- --ignored --nocapture`): the `kitfleet-operator` binary
//! (build, policy and rollout controllers) on a private real kube-apiserver under the chart's RBAC, with 1000 Nodes
//! (Ready, 2 annotations and 3 labels each, 50 pools of 20) and 50 NodeImages with a rollout, each selecting one
//! pool and its artifact published, so that every rollout stages its nodes. Prints the operator's RSS idle, with the
//! Nodes, and once every rollout has written its status. `KITFLEET_OPERATOR_BIN=target/release/kitfleet-operator`
//! measures a release build.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kitfleet_api::NodeImage;
use kitfleet_e2e::apiserver::{self, Apiserver};
use kitfleet_operator::build::registry::artifact_tag;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

mod common;
use common::NS;

const KEY: &str = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12";
const DIGEST: &str = "sha256:cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn operator_memory_with_1000_nodes_and_50_rollouts() {
    let api = Apiserver::start_with(&apiserver::binaries().expect("Kubernetes binaries")).unwrap();
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
    let bin = std::env::var("KITFLEET_OPERATOR_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_kitfleet-operator").to_string());
    println!("operator binary: {bin}");
    let mut child = Command::new(bin)
        .args(["run", "--builder-image", "kitfleet-build:test"])
        .args(["--identity", "op-rollout-scale", "--listen", "127.0.0.1:0"])
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
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "idle (leading, no Node, no NodeImage): RSS {:.1} MiB",
        rss_mib(pid)
    );
    let nodes: Api<Node> = Api::all(admin.clone());
    let t = Instant::now();
    for i in 0..1000 {
        let name = format!("scale-{i:04}");
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name,
            "labels": {"kitfleet.dev/pool": format!("p{}", i % 50), "kubernetes.io/os": "linux",
                       "kubernetes.io/hostname": name},
            "annotations": {"agent.kitfleet.dev/booted-build-key": "00",
                            "agent.kitfleet.dev/wg-public-key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}}))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
        let ts = k8s_openapi::jiff::Timestamp::now().to_string();
        let st = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet is posting ready status", "lastHeartbeatTime": ts, "lastTransitionTime": ts}]}});
        nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&st))
            .await
            .unwrap();
    }
    println!("1000 Nodes created in {:.1?}", t.elapsed());
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!("1000 Nodes, no NodeImage: RSS {:.1} MiB", rss_mib(pid));
    let nis: Api<NodeImage> = Api::all(admin.clone());
    let key = format!("sha256:{KEY}");
    for i in 0..50 {
        let name = format!("scale-{i:02}");
        let ni: NodeImage = serde_json::from_value(json!({
            "apiVersion": "kitfleet.dev/v1alpha1", "kind": "NodeImage", "metadata": {"name": name},
            "spec": {"kernel": {"image": "127.0.0.1:9/fixtures/kernel:6.1"},
                     "init": ["127.0.0.1:9/fixtures/init:v1"], "formats": ["kernel+initrd"],
                     "output": {"repository": format!("127.0.0.1:9/kitfleet/{name}")},
                     "rollout": {"nodeSelector": {"matchLabels": {"kitfleet.dev/pool": format!("p{i}")}},
                                 "maxUnavailable": "10%"}},
        }))
        .unwrap();
        nis.create(&PostParams::default(), &ni).await.unwrap();
        let reference = format!(
            "127.0.0.1:9/kitfleet/{name}:{}@{DIGEST}",
            artifact_tag(&key)
        );
        let st = json!({"status": {"buildKey": key, "artifact": {"reference": reference, "digest": DIGEST,
            "shortDigest": &DIGEST[7..19]}}});
        nis.patch_status(&name, &PatchParams::default(), &Patch::Merge(&st))
            .await
            .unwrap();
    }
    let t = Instant::now();
    let deadline = t + Duration::from_secs(300);
    loop {
        let with = nis
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|n| n.status.as_ref().is_some_and(|s| s.nodes.is_some()))
            .count();
        if with == 50 || Instant::now() > deadline {
            println!(
                "{with}/50 rollouts with status.nodes {:.1?} after the last create",
                t.elapsed()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let staging = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|n| {
            n.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("operator.kitfleet.dev/rollout-state"))
        })
        .count();
    println!(
        "1000 Nodes, 50 rollouts ({staging} nodes staging): RSS {:.1} MiB (floor 128 MiB, goal 64 MiB)",
        rss_mib(pid)
    );
    let _ = child.kill();
    let _ = child.wait();
}
