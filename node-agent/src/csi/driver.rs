//! Publish and unpublish of the sandbox volume: the checks, the staging directory, the seccomp profile, the
//! read-only bind mount, the volume records, and the outcome sockets. The gRPC layer (`service.rs`) only maps
//! requests and [`DriverError`]s.
//!
//! On-disk layout under the state directory (default `/var/lib/kitfleet/csi`):
//! `v/<key>/` is a volume's staging directory (`kitfleet-sandbox`, `policy.json`, `outcome.sock`), bind-mounted
//! read-only at the target path; `v/<key>.json` is its record. `<key>` is the first 20 hex digits of the SHA-256 of
//! the volume id (the kubelet's ids are 68 characters; a unix socket path must stay under 108 bytes).

use crate::csi::attrs::{self, VolumeAttrs};
use crate::csi::mount;
use crate::csi::source::{self, PolicySource};
use crate::seccomp_profiles::{ProfileError, ProfileStore};
use kitfleet_sandbox::compile::{self, Options};
use kitfleet_sandbox::seccomp::Arch;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

/// File names inside the volume.
pub const LAUNCHER_NAME: &str = "kitfleet-sandbox";
/// The compiled policy.
pub const POLICY_NAME: &str = "policy.json";
/// The outcome socket the launcher reports to.
pub const SOCKET_NAME: &str = "outcome.sock";

/// Why a publish or unpublish failed; each variant maps to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A required field is missing or invalid (`InvalidArgument`); the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// `NotFound`.
    #[error("{0}")]
    NotFound(String),
    /// Published at the same target with other arguments (`AlreadyExists`).
    #[error("{0}")]
    AlreadyExists(String),
    /// `FailedPrecondition`: the policy set changed since admission, a policy does not compile, another target.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The apiserver could not be asked (`Unavailable`: the kubelet retries).
    #[error("{0}")]
    Unavailable(String),
    /// A local operation failed (`Internal`); the message names the file or syscall.
    #[error("{0}")]
    Internal(String),
}

impl From<ProfileError> for DriverError {
    fn from(e: ProfileError) -> Self {
        DriverError::Internal(format!("seccomp profile: {e}"))
    }
}

fn internal(what: impl std::fmt::Display, path: &Path) -> impl FnOnce(io::Error) -> DriverError {
    let ctx = format!("{what} {}", path.display());
    move |e| DriverError::Internal(format!("{ctx}: {e}"))
}

/// The driver's settings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// The CSI driver name.
    pub driver_name: String,
    /// `NodeGetInfo`'s node id (the Node's name).
    pub node_id: String,
    /// Staging directories and records.
    pub state_dir: PathBuf,
    /// The static launcher copied into every volume.
    pub launcher: PathBuf,
    /// The kubelet's seccomp profile directory for Kitfleet (`…/seccomp/kitfleet`).
    pub profiles: ProfileStore,
    /// Architectures compiled for (default: this machine's).
    pub arches: Vec<Arch>,
}

/// What a publish asks for, checked.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// `volume_id`.
    pub volume_id: String,
    /// `target_path`.
    pub target_path: PathBuf,
    /// Everything else that makes two publishes "the same" (capability, readonly, volume_context), canonical.
    pub params: String,
    /// The parsed volume_context.
    pub attrs: VolumeAttrs,
}

/// A published volume, as recorded on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// `volume_id`.
    pub volume_id: String,
    /// Where it is mounted.
    pub target_path: PathBuf,
    /// Canonical request arguments (for idempotency).
    pub params: String,
    /// The policy set's hash (and seccomp profile name).
    pub set_hash: String,
    /// `namespace/name` of the pod.
    pub pod: String,
    /// Pod uid.
    pub pod_uid: String,
    /// Names of the set's policies, sorted (absent in records written before the sandbox report).
    #[serde(default)]
    pub policies: Vec<String>,
}

/// A publish that failed closed (the pod does not start): kept for the node's sandbox report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishFailure {
    /// `namespace/name` of the pod.
    pub pod: String,
    /// Pod uid.
    pub pod_uid: String,
    /// Names of the set pinned at admission.
    pub policies: Vec<String>,
    /// The error as the kubelet got it.
    pub reason: String,
}

/// At most this many publish failures are kept (newest last; one per pod).
pub const MAX_PUBLISH_FAILURES: usize = 16;

/// A launch refusal whose volume is gone (the kubelet unpublishes a terminated pod's volumes, often before the next
/// report): kept for the node's sandbox report like publish failures, so no refusal goes unreported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedRefusal {
    /// `namespace/name` of the pod.
    pub pod: String,
    /// Pod uid.
    pub pod_uid: String,
    /// Names of the set's policies, sorted.
    pub policies: Vec<String>,
    /// The launcher's outcome report (its JSON object).
    pub report: serde_json::Value,
}

/// At most this many ended refusals are kept (newest last; one per pod).
pub const MAX_ENDED_REFUSALS: usize = 16;

/// The last outcome report a launcher sent for a volume.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `namespace/name` of the pod.
    pub pod: String,
    /// The report (the launcher's JSON object).
    pub report: serde_json::Value,
}

type Compiled = Arc<(String, String)>;

/// The node plugin's state. Publishes and unpublishes are serialised by one lock (each takes a few ms).
#[derive(Debug)]
pub struct Driver<S> {
    cfg: DriverConfig,
    source: S,
    lock: tokio::sync::Mutex<()>,
    compiled: Mutex<HashMap<(String, String), Compiled>>,
    listeners: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    outcomes: Arc<Mutex<BTreeMap<String, Outcome>>>,
    failures: Mutex<std::collections::VecDeque<PublishFailure>>,
    failed_total: std::sync::atomic::AtomicU32,
    ended: Mutex<std::collections::VecDeque<EndedRefusal>>,
}

/// The short key of a volume id.
pub fn volume_key(volume_id: &str) -> String {
    hex::encode(Sha256::digest(volume_id.as_bytes()))[..20].to_string()
}

impl<S: PolicySource> Driver<S> {
    /// A driver; call [`Driver::recover`] before serving.
    pub fn new(cfg: DriverConfig, source: S) -> Self {
        Driver {
            cfg,
            source,
            lock: tokio::sync::Mutex::new(()),
            compiled: Mutex::new(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
            outcomes: Arc::new(Mutex::new(BTreeMap::new())),
            failures: Mutex::new(Default::default()),
            failed_total: Default::default(),
            ended: Mutex::new(Default::default()),
        }
    }

    /// The publishes that failed closed (newest last, one per pod) and how many failed since start.
    pub fn publish_failures(&self) -> (Vec<PublishFailure>, u32) {
        let f = self
            .failures
            .lock()
            .expect("lock")
            .iter()
            .cloned()
            .collect();
        (
            f,
            self.failed_total.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    fn note_failure(&self, a: &VolumeAttrs, reason: &str) {
        let pod = format!("{}/{}", a.pod.namespace, a.pod.name);
        let mut f = self.failures.lock().expect("lock");
        f.retain(|x| x.pod_uid != a.pod.uid);
        f.push_back(PublishFailure {
            pod,
            pod_uid: a.pod.uid.clone(),
            policies: a.policies.iter().map(|r| r.name.clone()).collect(),
            reason: reason.to_string(),
        });
        while f.len() > MAX_PUBLISH_FAILURES {
            f.pop_front();
        }
        self.failed_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Launch refusals of volumes that are gone (newest last, one per pod).
    pub fn ended_refusals(&self) -> Vec<EndedRefusal> {
        self.ended.lock().expect("lock").iter().cloned().collect()
    }

    /// The settings.
    pub fn config(&self) -> &DriverConfig {
        &self.cfg
    }

    /// The last outcome per volume id.
    pub fn outcomes(&self) -> BTreeMap<String, Outcome> {
        self.outcomes.lock().expect("lock").clone()
    }

    fn vols(&self) -> PathBuf {
        self.cfg.state_dir.join("v")
    }
    fn staging(&self, key: &str) -> PathBuf {
        self.vols().join(key)
    }
    fn record_path(&self, key: &str) -> PathBuf {
        self.vols().join(format!("{key}.json"))
    }

    /// Every volume record.
    pub fn records(&self) -> Result<Vec<Record>, DriverError> {
        let dir = self.vols();
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            r => r.map_err(internal("reading", &dir))?,
        };
        let mut out = Vec::new();
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                match std::fs::read(&p).map(|b| serde_json::from_slice::<Record>(&b)) {
                    Ok(Ok(r)) => out.push(r),
                    Ok(Err(err)) => {
                        tracing::warn!(path = %p.display(), %err, "unreadable volume record")
                    }
                    Err(err) => {
                        tracing::warn!(path = %p.display(), %err, "unreadable volume record")
                    }
                }
            }
        }
        Ok(out)
    }

    fn record(&self, volume_id: &str) -> Result<Option<Record>, DriverError> {
        let p = self.record_path(&volume_key(volume_id));
        match std::fs::read(&p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(internal("reading", &p)(e)),
            Ok(b) => {
                let r: Record = serde_json::from_slice(&b).map_err(|e| {
                    DriverError::Internal(format!("volume record {}: {e}", p.display()))
                })?;
                if r.volume_id != volume_id {
                    return Err(DriverError::Internal(format!(
                        "volume record {} belongs to {:?}, not {volume_id:?}",
                        p.display(),
                        r.volume_id
                    )));
                }
                Ok(Some(r))
            }
        }
    }

    fn write_record(&self, r: &Record) -> Result<(), DriverError> {
        let p = self.record_path(&volume_key(&r.volume_id));
        let tmp = p.with_extension("json.tmp");
        let body = serde_json::to_vec(r).expect("record serialises");
        std::fs::write(&tmp, body).map_err(internal("writing", &tmp))?;
        std::fs::rename(&tmp, &p).map_err(internal("renaming into", &p))
    }

    /// After a restart: serve the outcome socket of every recorded volume again, drop staging directories
    /// without a record (a publish that died before it mounted anything) and profiles no volume uses.
    pub async fn recover(&self) -> Result<(), DriverError> {
        let _g = self.lock.lock().await;
        let dir = self.vols();
        std::fs::create_dir_all(&dir).map_err(internal("creating", &dir))?;
        let records = self.records()?;
        let keys: BTreeSet<String> = records.iter().map(|r| volume_key(&r.volume_id)).collect();
        for e in std::fs::read_dir(&dir)
            .map_err(internal("reading", &dir))?
            .filter_map(|e| e.ok())
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && !keys.contains(name.trim_start_matches(".tmp-"))
                || name.starts_with(".tmp-")
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        for r in &records {
            let staging = self.staging(&volume_key(&r.volume_id));
            if staging.is_dir() {
                let sock = staging.join(SOCKET_NAME);
                let _ = std::fs::remove_file(&sock);
                let listener = bind_socket(&sock)?;
                self.serve_outcomes(&r.volume_id, &r.pod, listener);
            }
        }
        self.gc_profiles(&records)?;
        Ok(())
    }

    fn gc_profiles(&self, records: &[Record]) -> Result<Vec<String>, DriverError> {
        let in_use: BTreeSet<String> = records.iter().map(|r| r.set_hash.clone()).collect();
        Ok(self.cfg.profiles.gc(&in_use)?)
    }

    /// Compiles (cached by set hash and mount path: the hash pins uids and generations, so equal hashes mean
    /// equal specs) into `(policy.json, seccomp profile)`.
    fn compile(
        &self,
        a: &VolumeAttrs,
        set: &[kitfleet_api::SecurityPolicy],
    ) -> Result<Compiled, DriverError> {
        let key = (a.set_hash.clone(), a.mount_path.clone());
        if let Some(c) = self.compiled.lock().expect("lock").get(&key) {
            return Ok(c.clone());
        }
        let opts = Options {
            arches: self.cfg.arches.clone(),
            report_socket: Some(format!(
                "{}/{SOCKET_NAME}",
                a.mount_path.trim_end_matches('/')
            )),
        };
        let c = compile::compile(set, &opts).map_err(|e| {
            DriverError::FailedPrecondition(format!("the policy set does not compile: {e}"))
        })?;
        let out = Arc::new((c.policy.to_json(), c.profile.to_json()));
        self.compiled.lock().expect("lock").insert(key, out.clone());
        Ok(out)
    }

    /// NodePublishVolume.
    pub async fn publish(&self, req: PublishRequest) -> Result<(), DriverError> {
        let _g = self.lock.lock().await;
        let a = &req.attrs;
        let pod = format!("{}/{}", a.pod.namespace, a.pod.name);
        if let Some(r) = self.record(&req.volume_id)? {
            if r.target_path != req.target_path {
                return Err(DriverError::FailedPrecondition(format!(
                    "volume_id {:?} is already published at {} (single-node access: one target path)",
                    req.volume_id,
                    r.target_path.display()
                )));
            }
            if r.params != req.params {
                return Err(DriverError::AlreadyExists(format!(
                    "volume_id {:?} is already published at {} with other arguments",
                    req.volume_id,
                    r.target_path.display()
                )));
            }
            if mount::is_mount_point(&req.target_path).unwrap_or(false) {
                return Ok(());
            }
            // Recorded but not mounted: a publish that died half-way. Start over.
            self.teardown(&r, false)?;
        } else if mount::is_mount_point(&req.target_path)
            .map_err(internal("statx", &req.target_path))?
        {
            return Err(DriverError::FailedPrecondition(format!(
                "target_path {}: already a mount point, not of volume {:?}",
                req.target_path.display(),
                req.volume_id
            )));
        }
        // The pod and the policy set as the cluster has them now.
        let facts = self
            .source
            .pod(&a.pod.namespace, &a.pod.name)
            .await
            .map_err(|e| DriverError::Unavailable(format!("looking up pod {pod}: {e}")))?
            .filter(|f| f.uid == a.pod.uid)
            .ok_or_else(|| {
                DriverError::NotFound(format!(
                    "pod {pod} with uid {} does not exist (the volume belongs to a pod that is gone)",
                    a.pod.uid
                ))
            })?;
        let all = self.source.policies(&a.pod.namespace).await.map_err(|e| {
            DriverError::Unavailable(format!(
                "listing SecurityPolicies in {}: {e}",
                a.pod.namespace
            ))
        })?;
        let set = source::current_set(&all, &facts.labels);
        if let Err(changes) = source::check_set(a, &set) {
            let e = DriverError::FailedPrecondition(format!(
                "pod {pod}: the SecurityPolicy set changed since admission ({}): {}; the pod is not started with another set — delete it so that its controller recreates it with the current set",
                attrs::policies_attr_of(&a.policies),
                changes.join("; ")
            ));
            self.note_failure(a, &e.to_string());
            return Err(e);
        }
        let compiled = self.compile(a, &set).inspect_err(|e| {
            self.note_failure(a, &e.to_string());
        })?;
        self.stage_and_mount(&req, &pod, &compiled)?;
        self.failures
            .lock()
            .expect("lock")
            .retain(|x| x.pod_uid != a.pod.uid);
        Ok(())
    }

    fn stage_and_mount(
        &self,
        req: &PublishRequest,
        pod: &str,
        compiled: &Compiled,
    ) -> Result<(), DriverError> {
        let key = volume_key(&req.volume_id);
        let vols = self.vols();
        std::fs::create_dir_all(&vols).map_err(internal("creating", &vols))?;
        let tmp = vols.join(format!(".tmp-{key}"));
        let staging = self.staging(&key);
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_dir_all(&staging);
        let listener = match self.fill_staging(&tmp, compiled) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let record = Record {
            volume_id: req.volume_id.clone(),
            target_path: req.target_path.clone(),
            params: req.params.clone(),
            set_hash: req.attrs.set_hash.clone(),
            pod: pod.to_string(),
            pod_uid: req.attrs.pod.uid.clone(),
            policies: req.attrs.policies.iter().map(|r| r.name.clone()).collect(),
        };
        let mut created_target = false;
        let result = (|| {
            std::fs::rename(&tmp, &staging).map_err(internal("renaming into", &staging))?;
            self.cfg.profiles.write(&record.set_hash, &compiled.1)?;
            self.write_record(&record)?;
            if !req.target_path.exists() {
                std::fs::create_dir(&req.target_path)
                    .map_err(internal("creating target_path", &req.target_path))?;
                created_target = true;
            }
            mount::bind_read_only(&staging, &req.target_path)
                .map_err(internal("bind-mounting read-only at", &req.target_path))
        })();
        if let Err(e) = result {
            drop(listener);
            let _ = std::fs::remove_dir_all(&tmp);
            if created_target {
                let _ = std::fs::remove_dir(&req.target_path);
            }
            if let Err(e2) = self.teardown(&record, false) {
                tracing::error!(volume_id = %req.volume_id, error = %e2, "rolling back a failed publish");
            }
            return Err(e);
        }
        self.serve_outcomes(&req.volume_id, pod, listener);
        tracing::info!(volume_id = %req.volume_id, %pod, set_hash = %record.set_hash, target = %req.target_path.display(), "published");
        Ok(())
    }

    fn fill_staging(
        &self,
        dir: &Path,
        compiled: &Compiled,
    ) -> Result<tokio::net::UnixListener, DriverError> {
        std::fs::create_dir(dir).map_err(internal("creating", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(internal("chmod", dir))?;
        let launcher = dir.join(LAUNCHER_NAME);
        if std::fs::hard_link(&self.cfg.launcher, &launcher).is_err() {
            std::fs::copy(&self.cfg.launcher, &launcher)
                .map_err(internal("copying the launcher", &self.cfg.launcher))?;
            std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755))
                .map_err(internal("chmod", &launcher))?;
        }
        let policy = dir.join(POLICY_NAME);
        std::fs::write(&policy, &compiled.0).map_err(internal("writing", &policy))?;
        std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644))
            .map_err(internal("chmod", &policy))?;
        bind_socket(&dir.join(SOCKET_NAME))
    }

    fn serve_outcomes(&self, volume_id: &str, pod: &str, listener: tokio::net::UnixListener) {
        let outcomes = self.outcomes.clone();
        let (vid, pod) = (volume_id.to_string(), pod.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (outcomes, vid, pod) = (outcomes.clone(), vid.clone(), pod.clone());
                tokio::spawn(async move {
                    let mut lines = tokio::io::BufReader::new(stream.take(1 << 20)).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        match serde_json::from_str::<serde_json::Value>(&line) {
                            Ok(report) => {
                                let event = report
                                    .get("event")
                                    .and_then(|e| e.as_str())
                                    .unwrap_or("?")
                                    .to_string();
                                tracing::info!(volume_id = %vid, %pod, %event, "launcher outcome");
                                outcomes.lock().expect("lock").insert(
                                    vid.clone(),
                                    Outcome {
                                        pod: pod.clone(),
                                        report,
                                    },
                                );
                            }
                            Err(err) => {
                                tracing::warn!(volume_id = %vid, %pod, %err, "unreadable launcher outcome")
                            }
                        }
                    }
                });
            }
        });
        if let Some(old) = self
            .listeners
            .lock()
            .expect("lock")
            .insert(volume_id.to_string(), task)
        {
            old.abort();
        }
    }

    /// Removes everything of a volume but its mount (which the caller has undone): socket task, staging
    /// directory, record, and the set's profile when no other volume uses it.
    fn teardown(&self, r: &Record, keep_profile: bool) -> Result<(), DriverError> {
        let key = volume_key(&r.volume_id);
        if let Some(t) = self.listeners.lock().expect("lock").remove(&r.volume_id) {
            t.abort();
        }
        let staging = self.staging(&key);
        match std::fs::remove_dir_all(&staging) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(internal("removing", &staging)(e));
            }
            _ => {}
        }
        let rec = self.record_path(&key);
        match std::fs::remove_file(&rec) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(internal("removing", &rec)(e));
            }
            _ => {}
        }
        let outcome = self.outcomes.lock().expect("lock").remove(&r.volume_id);
        if let Some(o) = outcome.filter(|o| super::report::is_refusal(&o.report)) {
            let mut ended = self.ended.lock().expect("lock");
            ended.retain(|e| e.pod_uid != r.pod_uid);
            ended.push_back(EndedRefusal {
                pod: r.pod.clone(),
                pod_uid: r.pod_uid.clone(),
                policies: r.policies.clone(),
                report: o.report,
            });
            while ended.len() > MAX_ENDED_REFUSALS {
                ended.pop_front();
            }
        }
        if !keep_profile && !self.records()?.iter().any(|o| o.set_hash == r.set_hash) {
            self.cfg.profiles.remove(&r.set_hash)?;
        }
        Ok(())
    }

    /// NodeUnpublishVolume. Idempotent: a volume that is not published (any more) at `target_path` is fine.
    pub async fn unpublish(&self, volume_id: &str, target_path: &Path) -> Result<(), DriverError> {
        let _g = self.lock.lock().await;
        let mounted = mount::is_mount_point(target_path).map_err(internal("statx", target_path))?;
        match self.record(volume_id)? {
            Some(r) if r.target_path != target_path => Err(DriverError::NotFound(format!(
                "volume_id {volume_id:?} is published at {}, not at target_path {}",
                r.target_path.display(),
                target_path.display()
            ))),
            Some(r) => {
                if mounted {
                    mount::unmount(target_path).map_err(internal("unmounting", target_path))?;
                }
                remove_target(target_path)?;
                self.teardown(&r, false)?;
                tracing::info!(%volume_id, pod = %r.pod, "unpublished");
                Ok(())
            }
            None if mounted => Err(DriverError::NotFound(format!(
                "volume_id {volume_id:?} is not published by this driver; target_path {} is a mount point of something else (left alone)",
                target_path.display()
            ))),
            None => remove_target(target_path),
        }
    }
}

/// Removes the (empty) target directory; fine if absent.
fn remove_target(target: &Path) -> Result<(), DriverError> {
    match std::fs::remove_dir(target) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(internal("removing target_path", target)(e))
        }
        _ => Ok(()),
    }
}

fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, DriverError> {
    let l = tokio::net::UnixListener::bind(path).map_err(internal("binding", path))?;
    // Any user in the pod may report.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(internal("chmod", path))?;
    Ok(l)
}
