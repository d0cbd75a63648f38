//! Leader election across `kitfleet-operator` processes (the built binary) on a private real kube-apiserver, under
//! the chart's RBAC: one leads; a leader cut off from the API server stops reconciling before another replica
//! acquires the Lease; after `kill -9` of the leader a standby leads within the Lease duration + retry period; a
//! SIGTERM hands over within about one retry period; one build Job throughout, whoever leads.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kitfleet_api::NodeImage;
use kitfleet_e2e::apiserver::{self, Apiserver};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use tokio::net::{TcpListener, TcpStream};

use common::NS;
const DURATION: u64 = 6;
const RENEW: u64 = 4;
const RETRY: u64 = 1;

mod common;

/// A TCP proxy to the API server that can be cut (existing connections dropped, new ones held without an answer).
struct Proxy {
    addr: String,
    cut: Arc<AtomicBool>,
}

async fn proxy(target: String) -> Proxy {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let cut = Arc::new(AtomicBool::new(false));
    let flag = cut.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut inbound, _)) = l.accept().await else {
                return;
            };
            if flag.load(Ordering::SeqCst) {
                held.push(inbound);
                continue;
            }
            let target = target.clone();
            let flag = flag.clone();
            tokio::spawn(async move {
                let Ok(mut out) = TcpStream::connect(&target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                    _ = async { while !flag.load(Ordering::SeqCst) { tokio::time::sleep(Duration::from_millis(20)).await } } => {}
                }
            });
        }
    });
    Proxy { addr, cut }
}

fn kubeconfig(dir: &Path, name: &str, server: &str, ca: &Path, token: &str) -> PathBuf {
    let p = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(
        &p,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{server}\", certificate-authority: \"{}\"}}}}]\n\
             users: [{{name: u, user: {{token: \"{token}\"}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n",
            ca.display()
        ),
    )
    .unwrap();
    p
}

struct Operator {
    child: Child,
    log: PathBuf,
}

fn start(dir: &Path, identity: &str, kubeconfig: &Path, reg: &str) -> Operator {
    let log = dir.join(format!("{identity}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_kitfleet-operator"))
        .args([
            "run",
            "--builder-image",
            "kitfleet-build:test",
            "--identity",
            identity,
        ])
        .args(["--listen", "127.0.0.1:0", "--insecure-registry", reg])
        .args(["--lease-duration", &DURATION.to_string()])
        .args(["--lease-renew-deadline", &RENEW.to_string()])
        .args(["--lease-retry-period", &RETRY.to_string()])
        .args(["--cache-dir", &dir.join(identity).display().to_string()])
        .env_clear()
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Operator { child, log }
}

impl Operator {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("kitfleet-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

async fn wait_holder(leases: &Api<Lease>, want: &str, secs: u64) -> Duration {
    let t = Instant::now();
    while holder(leases).await.as_deref() != Some(want) {
        assert!(t.elapsed() < Duration::from_secs(secs), "{want} never led");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.elapsed()
}

/// When a log line containing `what` was written (the tracing timestamp that leads it; colour codes skipped).
fn logged_at(log: &str, what: &str) -> Option<Timestamp> {
    let line = log.lines().find(|l| l.contains(what))?;
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_and_fast_takeovers() {
    let Ok(bin) = apiserver::binaries() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("no Kubernetes binaries");
        }
        eprintln!("skipping: no Kubernetes binaries");
        return;
    };
    let api = Apiserver::start_with(&bin).unwrap();
    let registry = common::registry().await;
    let reg = registry.addr.clone();
    let admin: Client = api.admin_client().await.unwrap();
    common::apply_chart_rbac(&admin).await;
    let token = api
        .service_account_token(NS, "kitfleet-operator", None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = api.dir().join("ca.crt");
    let target = api.url().trim_start_matches("https://").to_string();
    let cuttable = proxy(target).await;
    let via_proxy = kubeconfig(
        dir.path(),
        "proxied",
        &format!("https://{}", cuttable.addr),
        &ca,
        &token,
    );
    let direct = kubeconfig(dir.path(), "direct", api.url(), &ca, &token);
    let leases: Api<Lease> = Api::namespaced(admin.clone(), NS);
    let jobs: Api<Job> = Api::namespaced(admin.clone(), NS);

    // op-a starts first (through the proxy) and leads; op-b stands by.
    let a = start(dir.path(), "op-a", &via_proxy, &reg);
    wait_holder(&leases, "op-a", 30).await;
    let b = start(dir.path(), "op-b", &direct, &reg);
    let lease = leases.get("kitfleet-operator").await.unwrap();
    let managers: Vec<_> = lease
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.contains(&"kitfleet-operator-op-a".to_string()),
        "{managers:?}"
    );
    let ni = common::manifest("le", &reg, "");
    Api::<NodeImage>::all(admin.clone())
        .create(&PostParams::default(), &ni)
        .await
        .unwrap();
    let list = ListParams::default().labels("kitfleet.dev/nodeimage=le");
    let t = Instant::now();
    while jobs.list(&list).await.unwrap().items.is_empty() {
        assert!(t.elapsed() < Duration::from_secs(30), "no Job: {}", a.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        holder(&leases).await.as_deref(),
        Some("op-a"),
        "op-b never took over: {}",
        b.log()
    );
    assert!(
        !b.log().contains("acquired leadership"),
        "two leaders: {}",
        b.log()
    );

    // Cut op-a off: it stops reconciling before op-b can acquire.
    cuttable.cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    let took = wait_holder(&leases, "op-b", DURATION + RENEW + 10).await;
    let stopped = logged_at(&a.log(), "stopped reconciling")
        .unwrap_or_else(|| panic!("op-a did not stop: {}", a.log()));
    let acquired = leases
        .get("kitfleet-operator")
        .await
        .unwrap()
        .spec
        .unwrap()
        .acquire_time
        .unwrap()
        .0;
    println!(
        "partition: op-a stopped at {stopped}, op-b acquired at {acquired} ({:?} after the cut)",
        took.min(cut_at.elapsed())
    );
    assert!(
        stopped < acquired,
        "op-a stopped reconciling at {stopped}, after op-b acquired at {acquired}"
    );

    // kill -9 of the leader: a standby leads within the Lease duration + retry period.
    let c = start(dir.path(), "op-c", &direct, &reg);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut b = b;
    b.child.kill().unwrap();
    let killed = Instant::now();
    let _ = b.child.wait();
    wait_holder(&leases, "op-c", DURATION + RETRY + 10).await;
    let after_kill = killed.elapsed();
    println!("kill -9: op-c leads {after_kill:?} after the kill");
    assert!(
        after_kill <= Duration::from_millis(DURATION * 1000 + RETRY * 1200 + 1000),
        "op-c led {after_kill:?} after the kill"
    );

    // SIGTERM: the leader releases the Lease; the standby takes over within about one retry period.
    let d = start(dir.path(), "op-d", &direct, &reg);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let term = Instant::now();
    let pid = c.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_holder(&leases, "op-d", 10).await;
    let handover = term.elapsed();
    println!("SIGTERM: op-d leads {handover:?} after the signal");
    assert!(
        handover <= Duration::from_millis(RETRY * 1200 + 1500),
        "handover took {handover:?}"
    );
    let mut c = c;
    let status = c.child.wait().unwrap();
    assert!(status.success(), "{status}: {}", c.log());
    assert!(c.log().contains("lease released"), "{}", c.log());

    // Whoever led, one build Job for the one build key.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = jobs.list(&list).await.unwrap().items;
    assert_eq!(
        all.len(),
        1,
        "duplicate Jobs: {:?}",
        all.iter().map(|j| &j.metadata.name).collect::<Vec<_>>()
    );
    drop((a, d));
}
