//! `kitfleet-csi-bench`: publish latency of the sandbox CSI plugin, measured the way the kubelet calls it — a
//! tonic client on the plugin's unix socket — with real mounts (needs root). Prints p50/p95/max over N publishes
//! (distinct volumes, one policy set: the first compiles it, the others hit the compile cache and rewrite
//! nothing but their own volume), then the same for unpublish, and the cold (uncached) compile of the set.
//!
//! `kitfleet-csi-bench [--publishes 100] [--launcher PATH]`

use anyhow::Context;
use kitfleet_node_agent::csi::{
    self, attrs,
    driver::{Driver, DriverConfig},
    proto::csi as pb,
    source::{MemorySource, PodFacts, policy_ref},
};
use kitfleet_node_agent::seccomp_profiles::ProfileStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn line(name: &str, mut d: Vec<Duration>) {
    d.sort();
    println!(
        "{name:<28} n={:<4} p50 {:>7.2} ms   p95 {:>7.2} ms   max {:>7.2} ms",
        d.len(),
        pct(&d, 0.5),
        pct(&d, 0.95),
        pct(&d, 1.0)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let n: usize = arg("--publishes")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100);
    let t = tempfile::Builder::new().prefix("kf-csi-bench").tempdir()?;
    let launcher = match arg("--launcher") {
        Some(p) => p.into(),
        None => std::env::current_exe()?,
    };
    let policy: kitfleet_api::SecurityPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "kitfleet.dev/v1alpha1", "kind": "SecurityPolicy",
        "metadata": {"name": "web", "namespace": "bench", "uid": "u1", "generation": 1},
        "spec": {"podSelector": {}, "landlock": {"filesystem": [{"paths": ["/usr"], "access": ["execute", "read-file", "read-dir"]}]},
                 "seccomp": {"base": "runtime/default", "rules": [{"names": ["ptrace"], "action": "kill-process"}]}}
    }))?;
    let src = MemorySource::new();
    src.put_policy(policy.clone());
    src.put_pod(
        "bench",
        "pod",
        PodFacts {
            uid: "pu".into(),
            labels: Default::default(),
        },
    );
    let hash = attrs::set_hash("bench", &[policy_ref(&policy)]);
    let cfg = DriverConfig {
        driver_name: kitfleet_api::constants::CSI_DRIVER.into(),
        node_id: "bench".into(),
        state_dir: t.path().join("state"),
        launcher,
        profiles: ProfileStore::new(t.path().join("seccomp/kitfleet")),
        arches: kitfleet_sandbox::seccomp::Arch::native()
            .into_iter()
            .collect(),
    };
    let sock = t.path().join("csi.sock");
    let driver = Arc::new(Driver::new(cfg, src));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(csi::serve(
        driver,
        csi::Sockets {
            csi: sock.clone(),
            registration: None,
            kubelet_endpoint: None,
        },
        async move {
            let _ = rx.await;
        },
    ));
    let mut node = loop {
        if let Ok(ch) = csi::channel(&sock).await {
            break pb::node_client::NodeClient::new(ch);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let ctx: std::collections::HashMap<String, String> = [
        (attrs::ATTR_EPHEMERAL, "true"),
        (attrs::ATTR_POD_NAME, "pod"),
        (attrs::ATTR_POD_NAMESPACE, "bench"),
        (attrs::ATTR_POD_UID, "pu"),
        (attrs::ATTR_POLICIES, "web@1"),
        (attrs::ATTR_SET_HASH, hash.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cap = pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Mount(Default::default())),
        access_mode: Some(pb::volume_capability::AccessMode { mode: 1 }),
    };
    let (mut publish, mut unpublish) = (Vec::new(), Vec::new());
    let targets: Vec<_> = (0..n)
        .map(|i| t.path().join(format!("pods/{i}/mount")))
        .collect();
    for (i, target) in targets.iter().enumerate() {
        std::fs::create_dir_all(target.parent().unwrap())?;
        let t0 = Instant::now();
        node.node_publish_volume(pb::NodePublishVolumeRequest {
            volume_id: format!("csi-bench-{i}"),
            target_path: target.display().to_string(),
            volume_capability: Some(cap.clone()),
            volume_context: ctx.clone(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("publish {i} (needs root for the mount)"))?;
        publish.push(t0.elapsed());
    }
    for (i, target) in targets.iter().enumerate() {
        let t0 = Instant::now();
        node.node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: format!("csi-bench-{i}"),
            target_path: target.display().to_string(),
        })
        .await?;
        unpublish.push(t0.elapsed());
    }
    let mut cold = Vec::new();
    for _ in 0..10 {
        let t0 = Instant::now();
        kitfleet_sandbox::compile::compile(std::slice::from_ref(&policy), &Default::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        cold.push(t0.elapsed());
    }
    println!("sandbox CSI plugin over a unix socket (tonic client), real read-only bind mounts:");
    line("NodePublishVolume", publish.clone());
    line("  first (compiles the set)", publish[..1].to_vec());
    line("  rest (compile cached)", publish[1..].to_vec());
    line("NodeUnpublishVolume", unpublish);
    line("compile only (both arches)", cold);
    let _ = tx.send(());
    server.await??;
    Ok(())
}
