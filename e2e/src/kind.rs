//! What the kind suites (`tests/kind*.rs`) share: where the test command's cluster, its Kubernetes binaries and
//! podman's kind state are, running a command with a readable failure, polling, and connecting to the cluster.
//!
//! The suites run only with `KITFLEET_KIND=1` (`scripts/test.sh` sets it after `scripts/kind/up.sh`): never against
//! whatever cluster happens to be reachable — `cargo test --workspace` runs before the test command makes its
//! cluster, and some suites upgrade or uninstall Kitfleet. With `KITFLEET_KIND=1`, a cluster that is not usable fails
//! them (never a skip).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use kube::{Client, Config};

/// The namespace the test command's `helm install` uses.
pub const KITFLEET_NS: &str = "kitfleet-system";
/// The one registry address the host, the pods and every node's containerd reach (`scripts/kind/env.sh`).
pub const REGISTRY: &str = "kitfleet-registry:5000";
/// The label kind (kubeadm) puts on the control-plane node.
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Kitfleet's cache outside the clone (`KITFLEET_CACHE`, default `/var/cache/kitfleet`).
pub fn cache() -> PathBuf {
    std::env::var_os("KITFLEET_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kitfleet"))
}

/// A Kubernetes binary from the newest complete build `scripts/k8s-build.sh` left in the cache.
pub fn k8s_bin(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(cache())
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("k8s-v"))
                && p.join(".complete").exists()
        })
        .collect();
    dirs.sort_by_key(|p| {
        std::fs::metadata(p.join(".complete"))
            .and_then(|m| m.modified())
            .ok()
    });
    dirs.pop().map(|d| d.join("bin").join(name))
}

/// podman's settings for the kind state (`scripts/kind/env.sh`): kind's podman has its own storage.
pub fn podman_env() -> Vec<(String, String)> {
    let p = cache().join("kind/podman");
    [
        ("CONTAINERS_CONF", "containers.conf"),
        ("CONTAINERS_STORAGE_CONF", "storage.conf"),
        ("CONTAINERS_REGISTRIES_CONF", "registries.conf"),
    ]
    .map(|(k, f)| (k.to_string(), p.join(f).to_string_lossy().into_owned()))
    .into()
}

/// `podman` with the kind state's settings.
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.envs(podman_env());
    c
}

/// Runs a command without stdin; its stdout, or an error naming the command with both streams.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `f` every 250 ms until it yields a value; after `timeout`, the last error it returned (or "not done").
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last = None;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if start.elapsed() > timeout {
            return match last {
                Some(e) => Err(e.context(format!("still failing after {timeout:?}"))),
                None => bail!("not done after {timeout:?}"),
            };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The test command's cluster: 1 control plane + 2 workers.
#[allow(missing_debug_implementations)] // kube::Client is not Debug
pub struct Kind {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub client: Client,
    /// The control-plane node's name.
    pub control: String,
    /// The workers' names, sorted.
    pub workers: Vec<String>,
}

impl Kind {
    /// `kubectl` on this cluster.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    /// `helm` on this cluster, in Kitfleet's namespace.
    pub fn helm(&self) -> Command {
        let mut c = Command::new("helm");
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c.args(["--namespace", KITFLEET_NS]);
        c
    }

    /// The last 40 lines of the logs of the pods `selector` picks in `ns`, for failure messages.
    pub fn logs(&self, ns: &str, selector: &str) -> String {
        self.kubectl()
            .args(["logs", "-n", ns, "-l", selector])
            .args(["--all-containers", "--prefix", "--tail", "40"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

/// The cluster named by `KITFLEET_KIND_KUBECONFIG`, else `KUBECONFIG`, else the test command's
/// (`$KITFLEET_CACHE/kind/kubeconfig`). `None` (after saying why) without `KITFLEET_KIND=1`; with it, panics naming
/// what is not usable.
pub async fn connect() -> Option<Kind> {
    if std::env::var("KITFLEET_KIND").as_deref() != Ok("1") {
        eprintln!(
            "skipping: the kind suites run only with KITFLEET_KIND=1 (scripts/test.sh sets it)"
        );
        return None;
    }
    let kubeconfig = std::env::var_os("KITFLEET_KIND_KUBECONFIG")
        .or_else(|| std::env::var_os("KUBECONFIG"))
        .map(PathBuf::from)
        .unwrap_or_else(|| cache().join("kind/kubeconfig"));
    match try_connect(&kubeconfig).await {
        Ok(k) => Some(k),
        Err(e) => panic!(
            "the kind cluster ({}) is not usable: {e:#} (bash scripts/kind/up.sh makes it)",
            kubeconfig.display()
        ),
    }
}

async fn try_connect(kubeconfig: &Path) -> Result<Kind> {
    let kubectl = k8s_bin("kubectl")
        .filter(|p| p.exists())
        .context("no kubectl from scripts/k8s-build.sh")?;
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cfg = Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = Client::try_from(cfg)?;
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing the Nodes")?;
    let name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
    let (control, workers): (Vec<&Node>, Vec<&Node>) = nodes.items.iter().partition(|n| {
        (n.metadata.labels.as_ref()).is_some_and(|l| l.contains_key(CONTROL_PLANE_LABEL))
    });
    let mut workers: Vec<String> = workers.into_iter().map(name).collect();
    workers.sort();
    ensure!(
        control.len() == 1 && workers.len() == 2,
        "want 1 control plane + 2 workers, found {} + {workers:?}",
        control.len()
    );
    Ok(Kind {
        kubeconfig: kubeconfig.to_path_buf(),
        kubectl,
        client,
        control: name(control[0]),
        workers,
    })
}

/// Runs one suite step on a fresh multi-threaded runtime; an error fails the test with its whole chain.
pub fn block_on(step: impl Future<Output = Result<()>>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(step) {
        panic!("{e:?}");
    }
}
