//! A real control plane for tests: etcd and kube-apiserver as processes on 127.0.0.1, with RBAC, service-account
//! tokens and Kitfleet's CRDs (from the Helm chart) installed.
//!
//! ```no_run
//! # async fn t() {
//! let Some(api) = kitfleet_e2e::apiserver::shared() else { return }; // skipped: binaries not found outside CI
//! let admin = api.admin_client().await.unwrap();
//! let agent = api.service_account_client("kitfleet-system", "kitfleet-node-agent").await.unwrap();
//! # }
//! ```
//!
//! - **Binaries** come from the directory named by [`BIN_ENV`] (`KITFLEET_K8S_BIN`: it must hold `etcd` and
//!   `kube-apiserver`), else from `bash scripts/k8s-build.sh` (cached: instant; cold: builds Kubernetes, minutes).
//!   When neither gives binaries, [`shared`] returns `None` after printing why (tests skip), except under `CI=true`,
//!   where it panics.
//! - **One control plane per test binary** ([`shared`]); [`Apiserver::start`] starts a private one that stops when
//!   dropped. Certificates are made at start (a CA, a serving certificate for `127.0.0.1`/`localhost`, an admin client
//!   certificate in `system:masters`, an ECDSA service-account signing key).
//! - **Teardown**: the processes get `SIGKILL` when the test process ends in any way (`PR_SET_PDEATHSIG`, set for the
//!   fixture's own long-lived thread) and at a normal exit its directory is removed. What a killed run leaves under
//!   `/tmp/kitfleet-apiserver-fixtures/<pid>/` (processes and files) is removed by the next start.
//! - **Failures** (a process exits, or no readiness within 60 s) carry the tails of both logs.
use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;

/// Names the directory holding `etcd` and `kube-apiserver` (and `kubectl`), e.g. `$(bash scripts/k8s-build.sh)/bin`.
pub const BIN_ENV: &str = "KITFLEET_K8S_BIN";
/// Where every fixture keeps its files, one directory per owning test process: `<root>/<pid>/`.
pub const FIXTURES_ROOT: &str = "/tmp/kitfleet-apiserver-fixtures";
/// Field manager of what the fixture applies.
pub const FIELD_MANAGER: &str = "kitfleet-e2e";
/// How long etcd plus the apiserver may take to become ready on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of the fixture.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// No usable Kubernetes binaries.
    #[error(
        "Kubernetes binaries: {0} (set {BIN_ENV} to a directory holding etcd and kube-apiserver)"
    )]
    Binaries(String),
    /// A file or process operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file, directory or binary.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("certificates: {0}")]
    Certificates(#[from] rcgen::Error),
    /// The control plane did not come up.
    #[error(
        "{reason}\n--- etcd log (last lines) ---\n{etcd}\n--- kube-apiserver log (last lines) ---\n{apiserver}"
    )]
    NotReady {
        /// What went wrong.
        reason: String,
        /// The end of etcd's log.
        etcd: String,
        /// The end of kube-apiserver's log.
        apiserver: String,
    },
    /// A kubeconfig the fixture wrote was refused by kube.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// An API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// The call.
        what: String,
        /// The cause.
        source: kube::Error,
    },
    /// The apiserver answered an apply with an error status.
    #[error("applying {object}: HTTP {status}: {body}")]
    Apply {
        /// `kind/name`.
        object: String,
        /// The HTTP status.
        status: u16,
        /// The apiserver's answer.
        body: String,
    },
    /// A manifest is not an object the fixture can apply.
    #[error("{0}")]
    Manifest(String),
}

fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FixtureError {
    let path = path.into();
    move |source| FixtureError::Io { path, source }
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> FixtureError {
    let what = what.into();
    move |source| FixtureError::Kube { what, source }
}

/// How long the last start took.
#[derive(Debug, Clone, Copy)]
pub struct StartTimes {
    /// From spawning etcd to the apiserver's `/readyz` answering `ok`.
    pub ready: Duration,
    /// From spawning etcd to Kitfleet's CRDs being `Established`.
    pub with_crds: Duration,
}

/// A running etcd + kube-apiserver. See the [module documentation](self).
#[derive(Debug)]
pub struct Apiserver {
    dir: PathBuf,
    bin: PathBuf,
    url: String,
    kubeconfig: PathBuf,
    times: StartTimes,
    crd_warnings: Vec<String>,
    stop: Option<mpsc::Sender<()>>,
    keeper: Option<std::thread::JoinHandle<()>>,
}

static SHARED: OnceLock<Result<Apiserver, String>> = OnceLock::new();

/// The test binary's control plane, started on first use. `None` (after printing why) when no Kubernetes binaries
/// are available outside CI; panics when they are missing under `CI=true`, when [`BIN_ENV`] names a directory without
/// them, or when the control plane does not come up.
pub fn shared() -> Option<&'static Apiserver> {
    let bin = match binaries() {
        Ok(bin) => bin,
        Err(e)
            if std::env::var("CI").as_deref() == Ok("true")
                || std::env::var_os(BIN_ENV).is_some() =>
        {
            panic!("{e}")
        }
        Err(e) => {
            eprintln!("skipping: no real apiserver: {e}");
            return None;
        }
    };
    match SHARED.get_or_init(|| Apiserver::start_with(&bin).map_err(|e| e.to_string())) {
        Ok(api) => Some(api),
        Err(e) => panic!("the apiserver fixture did not start: {e}"),
    }
}

static BINARIES: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The directory holding `etcd`, `kube-apiserver` and `kubectl`: [`BIN_ENV`], else what `scripts/k8s-build.sh`
/// prints (with `/bin`). Resolved once per process.
pub fn binaries() -> Result<PathBuf, FixtureError> {
    BINARIES
        .get_or_init(|| find_binaries().map_err(|e| e.to_string()))
        .clone()
        .map_err(FixtureError::Binaries)
}

fn find_binaries() -> Result<PathBuf, String> {
    let dir = match std::env::var_os(BIN_ENV) {
        Some(d) => PathBuf::from(d),
        None => build_script()?,
    };
    for b in ["etcd", "kube-apiserver"] {
        if !dir.join(b).is_file() {
            return Err(format!("{} has no {b}", dir.display()));
        }
    }
    Ok(dir)
}

/// Runs `scripts/k8s-build.sh` (one at a time on the machine: a cold build must not run twice at once).
fn build_script() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/k8s-build.sh");
    if !script.is_file() {
        return Err(format!("{} is missing", script.display()));
    }
    let lock_path = std::env::temp_dir().join("kitfleet-k8s-build.lock");
    let lock =
        std::fs::File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    flock(&lock);
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("bash {}: {e}", script.display()))?;
    drop(lock);
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last() {
        Some(dir) if out.status.success() => Ok(PathBuf::from(dir.trim()).join("bin")),
        _ => Err(format!(
            "`bash {}` failed ({}): {}",
            script.display(),
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 10)
        )),
    }
}

fn flock(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor this function borrows; it only blocks until the lock is granted.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
}

impl Apiserver {
    /// Starts a private control plane with the binaries of [`binaries`]; it stops when dropped.
    pub fn start() -> Result<Apiserver, FixtureError> {
        Apiserver::start_with(&binaries()?)
    }

    /// Starts a private control plane with the binaries in `bin`; it stops when dropped.
    pub fn start_with(bin: &Path) -> Result<Apiserver, FixtureError> {
        reap_stale();
        let (tx, rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let bin = bin.to_path_buf();
        // The processes are spawned by this thread, which lives as long as the fixture: PR_SET_PDEATHSIG fires when
        // the spawning *thread* exits, so a test's own thread (gone after the test) must not spawn them.
        let keeper = std::thread::Builder::new()
            .name("kitfleet-apiserver".into())
            .spawn(move || keeper(&bin, tx, stop_rx))
            .map_err(io("thread"))?;
        match rx.recv() {
            Ok(Ok(mut api)) => {
                api.stop = Some(stop_tx);
                api.keeper = Some(keeper);
                Ok(api)
            }
            Ok(Err(e)) => {
                let _ = keeper.join();
                Err(e)
            }
            Err(_) => Err(FixtureError::Manifest(
                "the fixture thread ended without an answer".into(),
            )),
        }
    }

    /// The apiserver's URL (`https://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The admin kubeconfig (client certificate in `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The fixture's directory (certificates, kubeconfig, logs, etcd data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of the Kubernetes binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// How long this control plane took to start.
    pub fn start_times(&self) -> StartTimes {
        self.times
    }

    /// The `Warning` headers the apiserver sent while the fixture installed Kitfleet's CRDs.
    pub fn crd_warnings(&self) -> &[String] {
        &self.crd_warnings
    }

    /// `kubectl` from the same build, with `KUBECONFIG` set to the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(self.bin.join("kubectl"));
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// An admin client. Call it inside the Tokio runtime that uses it (a client belongs to one runtime).
    pub async fn admin_client(&self) -> Result<kube::Client, FixtureError> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| FixtureError::Kubeconfig(e.to_string()))?;
        client_from(kc).await
    }

    /// A client authenticating with a bearer token.
    pub async fn token_client(&self, token: &str) -> Result<kube::Client, FixtureError> {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fixture, cluster: {{server: \"{}\", certificate-authority: \"{}\"}}}}]\n\
             users: [{{name: token, user: {{token: \"{token}\"}}}}]\n\
             contexts: [{{name: token, context: {{cluster: fixture, user: token}}}}]\ncurrent-context: token\n",
            self.url,
            self.dir.join("ca.crt").display()
        );
        let kc =
            Kubeconfig::from_yaml(&yaml).map_err(|e| FixtureError::Kubeconfig(e.to_string()))?;
        client_from(kc).await
    }

    /// A client acting as ServiceAccount `namespace/name` (created with its namespace when missing), with a token
    /// from the TokenRequest API, valid for an hour.
    pub async fn service_account_client(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<kube::Client, FixtureError> {
        let token = self.service_account_token(namespace, name, None).await?;
        self.token_client(&token).await
    }

    /// A client acting as ServiceAccount `namespace/name` with a token bound to Pod `namespace/pod` (which must run
    /// as that ServiceAccount). When the Pod names a Node that exists, the token carries the node claim and the
    /// apiserver adds `authentication.kubernetes.io/node-name` (and `node-uid`) to the user's extra info — what a
    /// DaemonSet pod's projected token carries.
    pub async fn pod_bound_client(
        &self,
        namespace: &str,
        name: &str,
        pod: &str,
    ) -> Result<kube::Client, FixtureError> {
        let token = self
            .service_account_token(namespace, name, Some(pod))
            .await?;
        self.token_client(&token).await
    }

    /// A token for ServiceAccount `namespace/name` (created with its namespace when missing), bound to Pod `pod`
    /// when given.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        pod: Option<&str>,
    ) -> Result<String, FixtureError> {
        let admin = self.admin_client().await?;
        ensure_service_account(&admin, namespace, name).await?;
        let bound_object_ref = match pod {
            None => None,
            Some(p) => {
                let pod = Api::<Pod>::namespaced(admin.clone(), namespace)
                    .get(p)
                    .await
                    .map_err(kube_err(format!("getting pod {namespace}/{p}")))?;
                Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(p.into()),
                    uid: pod.metadata.uid,
                })
            }
        };
        let req = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: None,
                expiration_seconds: Some(3600),
                bound_object_ref,
            }),
            ..Default::default()
        };
        let sa: Api<ServiceAccount> = Api::namespaced(admin, namespace);
        let tr: TokenRequest = sa
            .create_subresource("token", name, &PostParams::default(), &req)
            .await
            .map_err(kube_err(format!("TokenRequest for {namespace}/{name}")))?;
        tr.status.and_then(|s| s.token).ok_or_else(|| {
            FixtureError::Manifest(format!("TokenRequest for {namespace}/{name}: no status"))
        })
    }
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(k) = self.keeper.take() {
            let _ = k.join();
        }
    }
}

async fn client_from(kc: Kubeconfig) -> Result<kube::Client, FixtureError> {
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| FixtureError::Kubeconfig(e.to_string()))?;
    kube::Client::try_from(config).map_err(kube_err("building a client"))
}

/// Creates Namespace `namespace` and ServiceAccount `namespace/name` unless they exist.
pub async fn ensure_service_account(
    admin: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<(), FixtureError> {
    ensure_namespace(admin, namespace).await?;
    let sa = ServiceAccount {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    create_unless_exists(
        Api::<ServiceAccount>::namespaced(admin.clone(), namespace),
        &sa,
    )
    .await
}

/// Creates Namespace `namespace` unless it exists.
pub async fn ensure_namespace(admin: &kube::Client, namespace: &str) -> Result<(), FixtureError> {
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(namespace.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    create_unless_exists(Api::<Namespace>::all(admin.clone()), &ns).await
}

async fn create_unless_exists<K>(api: Api<K>, obj: &K) -> Result<(), FixtureError>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(FixtureError::Kube {
            what: format!("creating {}", obj.meta().name.as_deref().unwrap_or("?")),
            source: e,
        }),
    }
}

/// What the apiserver answered to a server-side apply.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The HTTP status.
    pub status: u16,
    /// The `Warning` headers' texts.
    pub warnings: Vec<String>,
    /// The answer: the object, or a `Status`.
    pub body: Value,
}

/// Options of [`apply_raw`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// `dryRun=All`: admission and validation run, nothing is stored.
    pub dry_run: bool,
}

/// Server-side applies `object` (any kind the apiserver serves) as [`FIELD_MANAGER`] with `force`, and returns
/// the answer with its warnings whatever its status.
pub async fn apply_raw(
    client: &kube::Client,
    object: &Value,
    opts: ApplyOptions,
) -> Result<Applied, FixtureError> {
    let path = object_path(client, object).await?;
    let mut uri = format!("{path}?fieldManager={FIELD_MANAGER}&force=true");
    if opts.dry_run {
        uri.push_str("&dryRun=All");
    }
    let body = serde_json::to_vec(object).expect("JSON");
    let req = http::Request::builder()
        .method(http::Method::PATCH)
        .uri(&uri)
        .header(http::header::CONTENT_TYPE, "application/apply-patch+yaml")
        .header(http::header::ACCEPT, "application/json")
        .body(kube::client::Body::from(body))
        .expect("a valid request");
    let res = client
        .send(req)
        .await
        .map_err(kube_err(format!("PATCH {uri}")))?;
    let status = res.status().as_u16();
    let warnings = res
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| warning_text(&String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let bytes = res
        .into_body()
        .collect_bytes()
        .await
        .map_err(kube_err(format!("reading the answer to PATCH {uri}")))?;
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Ok(Applied {
        status,
        warnings,
        body,
    })
}

/// Server-side applies `object`; an error status is an error.
pub async fn apply(client: &kube::Client, object: &Value) -> Result<Applied, FixtureError> {
    let a = apply_raw(client, object, ApplyOptions::default()).await?;
    if (200..300).contains(&a.status) {
        Ok(a)
    } else {
        Err(FixtureError::Apply {
            object: describe(object),
            status: a.status,
            body: a.body.to_string(),
        })
    }
}

/// `kind/name` of a manifest.
pub fn describe(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// `299 - "text"` → `text` (RFC 7234 warning header as the apiserver writes it).
fn warning_text(h: &str) -> String {
    match (h.find('"'), h.rfind('"')) {
        (Some(a), Some(b)) if b > a => h[a + 1..b].replace("\\\"", "\""),
        _ => h.to_string(),
    }
}

/// The REST path of `object` (found through discovery, so any served kind works).
async fn object_path(client: &kube::Client, object: &Value) -> Result<String, FixtureError> {
    let api_version = object["apiVersion"]
        .as_str()
        .ok_or_else(|| FixtureError::Manifest(format!("{}: no apiVersion", describe(object))))?;
    let kind = object["kind"]
        .as_str()
        .ok_or_else(|| FixtureError::Manifest(format!("{}: no kind", describe(object))))?;
    let name = object["metadata"]["name"]
        .as_str()
        .ok_or_else(|| FixtureError::Manifest(format!("{}: no metadata.name", describe(object))))?;
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(kube_err(format!("discovering {api_version} {kind}")))?;
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    Ok(match caps.scope {
        kube::discovery::Scope::Namespaced => {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default");
            format!("{prefix}/namespaces/{ns}/{}/{name}", ar.plural)
        }
        kube::discovery::Scope::Cluster => format!("{prefix}/{}/{name}", ar.plural),
    })
}

/// The YAML documents of a multi-document manifest (comments-only documents dropped).
pub fn documents(yaml: &str) -> Result<Vec<Value>, FixtureError> {
    yaml.split("\n---")
        .map(|d| d.strip_prefix("---").unwrap_or(d))
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|d| {
            serde_saphyr::from_str::<Value>(d)
                .map_err(|e| FixtureError::Manifest(format!("{e}\n{d}")))
        })
        .collect()
}

/// Kitfleet's CRDs as the chart ships them (`charts/kitfleet/crds/*.yaml`), sorted by file name.
pub fn chart_crds() -> Result<Vec<Value>, FixtureError> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/kitfleet/crds");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map_err(io(&dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        out.extend(documents(&std::fs::read_to_string(&f).map_err(io(&f))?)?);
    }
    Ok(out)
}

/// Waits until CustomResourceDefinition `name` is `Established`.
pub async fn wait_established(
    client: &kube::Client,
    name: &str,
    timeout: Duration,
) -> Result<(), FixtureError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    loop {
        let crd = api
            .get(name)
            .await
            .map_err(kube_err(format!("getting CRD {name}")))?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(FixtureError::Manifest(format!(
                "CRD {name} not Established within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- processes -------------------------------------------------------------------------------------------------

/// Fixtures alive in this process: their processes and directories, for the exit handler.
static LIVE: Mutex<Vec<(PathBuf, Vec<u32>)>> = Mutex::new(Vec::new());
static EXIT_HANDLER: OnceLock<()> = OnceLock::new();

extern "C" fn at_exit() {
    let live = match LIVE.lock() {
        Ok(mut l) => std::mem::take(&mut *l),
        Err(_) => return,
    };
    for (dir, pids) in live {
        stop_processes(&pids);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn stop_processes(pids: &[u32]) {
    for &pid in pids {
        // SAFETY: kill(2) on a pid this process spawned and has not reaped yet (so it cannot have been reused).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    for &pid in pids {
        // SAFETY: waitpid(2) on our own child; a null status pointer is allowed.
        unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) };
    }
}

/// The keeper thread: starts the control plane, reports it, and keeps it (and the PDEATHSIG anchor) until stopped.
fn keeper(bin: &Path, tx: mpsc::Sender<Result<Apiserver, FixtureError>>, stop: mpsc::Receiver<()>) {
    EXIT_HANDLER.get_or_init(|| {
        // SAFETY: registers a plain `extern "C"` function with no arguments, as atexit(3) expects.
        unsafe { libc::atexit(at_exit) };
    });
    let dir = PathBuf::from(FIXTURES_ROOT).join(format!("{}-{}", std::process::id(), unique()));
    let mut children = Vec::new();
    let mut result = launch(bin, &dir, &mut children);
    // Free ports are found by binding port 0 and closing it: another process may take one before etcd or the
    // apiserver binds it. Such a start is retried with new ports.
    for _ in 0..2 {
        match &result {
            Err(FixtureError::NotReady {
                etcd, apiserver, ..
            }) if etcd.contains("address already in use")
                || apiserver.contains("address already in use") =>
            {
                tracing::warn!(dir = %dir.display(), "a port was taken; starting again with new ports");
                stop_processes(&children.drain(..).map(|c| c.id()).collect::<Vec<_>>());
                let _ = std::fs::remove_dir_all(&dir);
                result = launch(bin, &dir, &mut children);
            }
            _ => break,
        }
    }
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    match result {
        Ok(api) => {
            LIVE.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((dir.clone(), pids.clone()));
            if tx.send(Ok(api)).is_err() {
                stop_processes(&pids);
                return;
            }
            // Until the fixture is dropped, or forever for the shared one (the process exit kills the children).
            let _ = stop.recv();
            LIVE.lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(d, _)| *d != dir);
            stop_processes(&pids);
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(e) => {
            stop_processes(&pids);
            let _ = std::fs::remove_dir_all(&dir);
            let _ = tx.send(Err(e));
        }
    }
}

/// A per-process counter, so one process can hold several fixtures.
fn unique() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn free_port() -> Result<u16, FixtureError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("127.0.0.1:0"))?;
    Ok(l.local_addr().map_err(io("127.0.0.1:0"))?.port())
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<Child, FixtureError> {
    let out = std::fs::File::create(log).map_err(io(log))?;
    let err = out.try_clone().map_err(io(log))?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(io(bin))
}

/// The process's start time (field 22 of `/proc/PID/stat`), to tell a live owner from a reused pid.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19).map(str::to_string)
}

/// Removes what fixtures of dead processes left under [`FIXTURES_ROOT`]: kills their etcd and apiserver when still
/// running (only processes whose command line names that fixture's directory), then deletes the directory.
pub fn reap_stale() {
    let Ok(entries) = std::fs::read_dir(FIXTURES_ROOT) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let owner = std::fs::read_to_string(dir.join("owner")).unwrap_or_default();
        let mut it = owner.split_whitespace();
        let (Some(pid), Some(started)) = (it.next().and_then(|p| p.parse::<u32>().ok()), it.next())
        else {
            // A directory without an owner file is one being created right now, or an unrelated leftover: leave
            // young ones alone.
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(600));
            if old {
                let _ = std::fs::remove_dir_all(&dir);
            }
            continue;
        };
        if start_time(pid).as_deref() == Some(started) {
            continue; // the owner is alive
        }
        let pids = std::fs::read_to_string(dir.join("pids")).unwrap_or_default();
        for p in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()) {
                tracing::info!(pid = p, dir = %dir.display(), "killing a stale fixture process");
                // SAFETY: kill(2) on a process whose command line names the stale fixture's directory.
                unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn log_tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    tail(&s, 30)
}

/// Writes the certificates and keys; returns nothing the caller needs beyond the files.
fn certificates(dir: &Path) -> Result<(), FixtureError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let write = |name: &str, text: &str| -> Result<(), FixtureError> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(io(&p))
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "kitfleet-e2e-ca");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    write("ca.crt", &ca.self_signed(&ca_key)?.pem())?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut serving =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    write("apiserver.crt", &serving.signed_by(&key, &issuer)?.pem())?;
    write("apiserver.key", &key.serialize_pem())?;

    let key = KeyPair::generate()?;
    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin
        .distinguished_name
        .push(DnType::CommonName, "kitfleet-e2e-admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    write("admin.crt", &admin.signed_by(&key, &issuer)?.pem())?;
    write("admin.key", &key.serialize_pem())?;

    let sa = KeyPair::generate()?;
    write("sa.key", &sa.serialize_pem())?;
    write("sa.pub", &sa.public_key_pem())?;
    Ok(())
}

fn launch(bin: &Path, dir: &Path, children: &mut Vec<Child>) -> Result<Apiserver, FixtureError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let owner = format!(
        "{} {}\n",
        std::process::id(),
        start_time(std::process::id()).unwrap_or_default()
    );
    std::fs::write(dir.join("owner"), owner).map_err(io(dir.join("owner")))?;
    certificates(dir)?;
    let p = |name: &str| dir.join(name).display().to_string();
    let kubeconfig = dir.join("admin.kubeconfig");
    let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
    let url = format!("https://127.0.0.1:{api_port}");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: fixture, cluster: {{server: \"{url}\", certificate-authority: \"{ca}\"}}}}]\n\
             users: [{{name: admin, user: {{client-certificate: \"{crt}\", client-key: \"{key}\"}}}}]\n\
             contexts: [{{name: admin, context: {{cluster: fixture, user: admin}}}}]\ncurrent-context: admin\n",
            ca = p("ca.crt"),
            crt = p("admin.crt"),
            key = p("admin.key"),
        ),
    )
    .map_err(io(&kubeconfig))?;

    let t0 = Instant::now();
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let etcd_args: Vec<String> = vec![
        "--name=fixture".into(),
        format!("--data-dir={}", p("etcd")),
        format!("--listen-client-urls={etcd_url}"),
        format!("--advertise-client-urls={etcd_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=fixture={peer_url}"),
        "--unsafe-no-fsync".into(),
        "--log-level=warn".into(),
    ];
    let etcd_log = dir.join("etcd.log");
    children.push(spawn(&bin.join("etcd"), &etcd_args, &etcd_log)?);
    let api_args: Vec<String> = vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={api_port}"),
        format!("--tls-cert-file={}", p("apiserver.crt")),
        format!("--tls-private-key-file={}", p("apiserver.key")),
        format!("--client-ca-file={}", p("ca.crt")),
        "--authorization-mode=Node,RBAC".into(),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={}", p("sa.pub")),
        format!("--service-account-signing-key-file={}", p("sa.key")),
        "--service-cluster-ip-range=10.96.0.0/16".into(),
        "--endpoint-reconciler-type=none".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ];
    let api_log = dir.join("kube-apiserver.log");
    children.push(spawn(&bin.join("kube-apiserver"), &api_args, &api_log)?);
    let pids: Vec<String> = children.iter().map(|c| c.id().to_string()).collect();
    std::fs::write(dir.join("pids"), pids.join("\n") + "\n").map_err(io(dir.join("pids")))?;

    let not_ready = |reason: String| FixtureError::NotReady {
        reason,
        etcd: log_tail(&etcd_log),
        apiserver: log_tail(&api_log),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("tokio runtime"))?;
    let kc =
        Kubeconfig::read_from(&kubeconfig).map_err(|e| FixtureError::Kubeconfig(e.to_string()))?;
    let (ready, crd_warnings, with_crds) = rt.block_on(async {
        let client = client_from(kc).await?;
        let deadline = t0 + READY_TIMEOUT;
        loop {
            for (c, name) in children.iter_mut().zip(["etcd", "kube-apiserver"]) {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(not_ready(format!(
                        "{name} exited ({status}) before the apiserver was ready"
                    )));
                }
            }
            let req = http::Request::get("/readyz")
                .body(kube::client::Body::empty())
                .expect("request");
            if let Ok(r) = client.send(req).await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(not_ready(format!(
                    "the apiserver was not ready within {READY_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let ready = t0.elapsed();
        let mut warnings = Vec::new();
        let crds = chart_crds()?;
        for crd in &crds {
            let a = apply(&client, crd).await?;
            warnings.extend(
                a.warnings
                    .into_iter()
                    .map(|w| format!("{}: {w}", describe(crd))),
            );
        }
        for crd in &crds {
            let name = crd["metadata"]["name"].as_str().unwrap_or_default();
            wait_established(&client, name, READY_TIMEOUT).await?;
        }
        Ok::<_, FixtureError>((ready, warnings, t0.elapsed()))
    })?;
    drop(rt);
    tracing::info!(url = %url, ready_ms = ready.as_millis(), with_crds_ms = with_crds.as_millis(), "apiserver fixture ready");
    Ok(Apiserver {
        dir: dir.to_path_buf(),
        bin: bin.to_path_buf(),
        url,
        kubeconfig,
        times: StartTimes { ready, with_crds },
        crd_warnings,
        stop: None,
        keeper: None,
    })
}

/// Objects of a rendered manifest, by `kind/name`.
pub fn by_name(docs: &[Value]) -> BTreeMap<String, Value> {
    docs.iter().map(|d| (describe(d), d.clone())).collect()
}

/// Renders the chart with `helm template` (release `kitfleet`, namespace `kitfleet-system`) and the given `--set`s.
pub fn helm_template(sets: &[&str]) -> Result<Vec<Value>, FixtureError> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/kitfleet");
    let mut cmd = Command::new("helm");
    cmd.args(["template", "kitfleet"]).arg(&chart).args([
        "--namespace",
        "kitfleet-system",
        "--kube-version",
        "1.36.0",
    ]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().map_err(io("helm"))?;
    if !out.status.success() {
        return Err(FixtureError::Manifest(format!(
            "helm template failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    documents(&String::from_utf8_lossy(&out.stdout))
}
