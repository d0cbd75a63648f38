//! KSPP in the kind cluster (issue 16 item 4): every node's agent writes the Node condition `KitfleetHardened`, and
//! it tells the truth about the node — kind nodes are containers on the host's kernel, not LinuxKit images built
//! with `hardening.kspp: apply`, so what they meet is whatever the host's command line and sysctls give. The test
//! reads the same files inside each node container (`podman exec`: `/proc/cmdline` and `/proc/sys/...`, the view
//! the host-network agent has) and computes the expected verdict from `kitfleet_api::kspp`'s tables. Then a
//! NodeImage selecting the workers (paused, unresolvable: nothing is built or rolled out) shows the summary in
//! `status.hardening`.
//!
//! Runs only with `KITFLEET_KIND=1` (`kitfleet_e2e::kind`).
//!
//! `KITFLEET_KIND=1 KUBECONFIG=… cargo test -p kitfleet-e2e --test kind_hardening -- --test-threads=1`

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use kitfleet_api::NodeImage;
use kitfleet_api::constants::CONDITION_KITFLEET_HARDENED;
use kitfleet_api::kspp::{Arch, BOOT_PARAMS, SYSCTLS};
use kitfleet_e2e::kind::{
    CONTROL_PLANE_LABEL, Kind, REGISTRY, block_on, connect, podman, run, wait_for,
};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;

const NAME: &str = "kspp-summary";

fn hardened(n: &Node) -> Option<NodeCondition> {
    (n.status.as_ref()?.conditions.as_ref()?)
        .iter()
        .find(|c| c.type_ == CONDITION_KITFLEET_HARDENED)
        .cloned()
}

fn is_control_plane(n: &Node) -> bool {
    (n.metadata.labels.iter().flatten()).any(|(k, _)| k == CONTROL_PLANE_LABEL)
}

/// What the node container shows the agent: the names of KSPP's boot parameters and sysctls it does not meet
/// (lockdown left out: whether securityfs is visible inside a kind node is the runtime's business), and how many
/// were checked.
fn expected_unmet(node: &str) -> Result<(BTreeSet<String>, usize)> {
    let mut script = String::from("cat /proc/cmdline; echo '--'; ");
    for s in SYSCTLS {
        let path = format!("/proc/sys/{}", s.key.replace('.', "/"));
        script.push_str(&format!("cat {path} 2>/dev/null || echo absent; "));
    }
    let out = run(podman().args(["exec", node, "sh", "-c", &script]))?;
    let (cmdline, sysctls) = out.split_once("--\n").context("podman exec output")?;
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    let arch = if cfg!(target_arch = "aarch64") {
        Arch::Arm64
    } else {
        Arch::X86_64
    };
    let mut unmet = BTreeSet::new();
    let mut total = 0;
    for p in BOOT_PARAMS.iter().filter(|p| p.arch.applies_to(arch)) {
        if p.name() == "lockdown" {
            continue;
        }
        total += 1;
        if !words.contains(&p.param) {
            unmet.insert(p.name().to_string());
        }
    }
    let values: Vec<&str> = sysctls.lines().map(str::trim).collect();
    if values.len() != SYSCTLS.len() {
        bail!("{node}: expected {} sysctl lines: {out}", SYSCTLS.len());
    }
    for (s, v) in SYSCTLS.iter().zip(values) {
        total += 1;
        if v != s.value {
            unmet.insert(s.key.to_string());
        }
    }
    Ok((unmet, total))
}

/// The names in the condition's `unmet:` list (`name (found …, want …)`), and its `met/total`.
fn reported(c: &NodeCondition) -> (BTreeSet<String>, Option<(usize, usize)>) {
    let m = c.message.clone().unwrap_or_default();
    let counts = m
        .find(" boot parameters and sysctls met")
        .and_then(|i| m[..i].rsplit(' ').next())
        .and_then(|t| t.split_once('/'))
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    let names = m
        .split_once("; unmet: ")
        .map(|(_, list)| {
            list.split("), ")
                .filter_map(|item| item.split(" (").next())
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty() && !n.starts_with('…'))
                .collect()
        })
        .unwrap_or_default();
    (names, counts)
}

#[test]
fn every_node_reports_kspp_truthfully_and_a_nodeimage_sums_up_its_workers() {
    block_on(async {
        match connect().await {
            Some(k) => check(&k).await,
            None => Ok(()),
        }
    });
}

async fn check(k: &Kind) -> Result<()> {
    let client = k.client.clone();
    let nodes: Api<Node> = Api::all(client.clone());
    // Every node carries the condition (the agent writes it at mesh start).
    let all = wait_for(Duration::from_secs(120), || async {
        let all = nodes.list(&ListParams::default()).await?.items;
        Ok(all.iter().all(|n| hardened(n).is_some()).then_some(all))
    })
    .await
    .context("every node has KitfleetHardened")?;
    let mut workers = Vec::new();
    for n in &all {
        let name = n.metadata.name.clone().unwrap_or_default();
        let c = hardened(n).context("condition")?;
        let (want, total) = expected_unmet(&name)?;
        let (got, counts) = reported(&c);
        let lockdown_unmet = got.contains("lockdown");
        let got_no_lockdown: BTreeSet<String> =
            got.iter().filter(|n| *n != "lockdown").cloned().collect();
        eprintln!(
            "kind_hardening: {name}: {} {} — {}",
            c.status,
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default()
        );
        // The agent cuts its message at 1024 bytes (`… and N more`): then the list shown is a part of the truth.
        let message = c.message.clone().unwrap_or_default();
        if message.ends_with(" more") && message.contains(" … and ") {
            assert!(
                got_no_lockdown.is_subset(&want),
                "{name}: unmet items {got_no_lockdown:?} ⊄ {want:?}"
            );
        } else {
            assert_eq!(got_no_lockdown, want, "{name}: unmet items");
        }
        let (met, checked) = counts.context("met/total in the message")?;
        let lockdown_checked = checked == total + 1;
        assert!(
            checked == total || lockdown_checked,
            "{name}: {checked} checked, want {total} (+1 with lockdown)"
        );
        assert_eq!(
            checked - met,
            want.len() + usize::from(lockdown_unmet),
            "{name}: counts"
        );
        let all_met = want.is_empty() && !lockdown_unmet;
        let (status, reason) = if all_met {
            ("True", "KsppMet")
        } else {
            ("False", "KsppUnmet")
        };
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            (status, Some(reason)),
            "{name}"
        );
        if !is_control_plane(n) {
            workers.push((name, status == "True"));
        }
    }
    workers.sort();
    if workers.is_empty() {
        bail!("no worker nodes");
    }

    // A NodeImage selecting the workers (paused, its images unresolvable: no build, no rollout).
    let nis: Api<NodeImage> = Api::all(client.clone());
    if nis.get_opt(NAME).await?.is_some() {
        nis.delete(NAME, &DeleteParams::default()).await?;
        wait_for(Duration::from_secs(60), || async {
            Ok(nis.get_opt(NAME).await?.is_none().then_some(()))
        })
        .await
        .context("old NodeImage gone")?;
    }
    let ni: NodeImage = serde_json::from_value(json!({
        "apiVersion": "kitfleet.dev/v1alpha1", "kind": "NodeImage",
        "metadata": {"name": NAME},
        "spec": {
            "kernel": {"image": format!("{REGISTRY}/kspp/absent-kernel:1")},
            "init": [format!("{REGISTRY}/kspp/absent-init:1")],
            "formats": ["kernel+initrd"],
            "output": {"repository": format!("{REGISTRY}/kitfleet/nodes/kspp-summary")},
            "hardening": {"kspp": "audit"},
            "rollout": {
                "paused": true,
                "nodeSelector": {"matchExpressions": [
                    {"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"}]}
            }
        }
    }))?;
    nis.create(&PostParams::default(), &ni).await?;
    let t = Instant::now();
    let h = wait_for(Duration::from_secs(60), || async {
        Ok(nis
            .get(NAME)
            .await?
            .status
            .and_then(|s| s.hardening)
            .filter(|h| h.nodes_checked == h.nodes_selected))
    })
    .await
    .context("status.hardening of the NodeImage");
    let result = async {
        let h = h?;
        eprintln!(
            "kind_hardening: status.hardening after {} ms: {}",
            t.elapsed().as_millis(),
            serde_json::to_string(&h)?
        );
        let meeting = workers.iter().filter(|w| w.1).count();
        assert_eq!(h.mode, "audit");
        assert_eq!(h.nodes_selected as usize, workers.len());
        assert_eq!(h.nodes_meeting as usize, meeting);
        assert_eq!(h.summary, format!("{meeting}/{}", workers.len()));
        let failing: Vec<&str> = h.nodes_failing.iter().map(|f| f.node.as_str()).collect();
        let want: Vec<&str> = (workers.iter())
            .filter(|w| !w.1)
            .map(|w| w.0.as_str())
            .collect();
        assert_eq!(failing, want);
        for f in &h.nodes_failing {
            assert_eq!(
                (f.status.as_str(), f.reason.as_str()),
                ("False", "KsppUnmet")
            );
            assert!(!f.unmet.is_empty(), "{f:?}");
        }
        anyhow::Ok(())
    }
    .await;
    nis.delete(NAME, &DeleteParams::default()).await?;
    wait_for(Duration::from_secs(60), || async {
        Ok(nis.get_opt(NAME).await?.is_none().then_some(()))
    })
    .await
    .context("NodeImage deleted")?;
    result
}
