//! The sandbox CSI plugin over a real unix socket with a tonic client: every RPC, every InvalidArgument /
//! NotFound case, idempotency, rollback of failed publishes, real read-only bind mounts (a write gets EROFS),
//! the seccomp profile lifecycle, the outcome socket, restart recovery, and kubelet registration.
//! Needs root (mounts): skips with a message otherwise, fails under CI=true.

use kitfleet_node_agent::csi::{
    self, attrs,
    driver::{Driver, DriverConfig, volume_key},
    mount,
    proto::{csi as pb, registration as reg},
    source::{MemorySource, PodFacts, policy_ref},
};
use kitfleet_node_agent::seccomp_profiles::ProfileStore;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: the CSI tests need root (bind mounts)"
        );
        eprintln!("skipping: the CSI tests need root (bind mounts)");
    }
    root
}

fn policy(name: &str, generation: i64, seccomp_rule: &str) -> kitfleet_api::SecurityPolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kitfleet.dev/v1alpha1", "kind": "SecurityPolicy",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "generation": generation},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "landlock": {"filesystem": [{"paths": ["/usr"], "access": ["execute", "read-file", "read-dir"]}]},
            "seccomp": {"base": "runtime/default", "rules": [{"names": [seccomp_rule], "action": "kill-process"}]}
        }
    }))
    .unwrap()
}

/// One plugin instance in a temp dir, served on a unix socket, with clients.
struct Bed {
    dir: tempfile::TempDir,
    src: MemorySource,
    driver: Arc<Driver<MemorySource>>,
    node: pb::node_client::NodeClient<tonic::transport::Channel>,
    identity: pb::identity_client::IdentityClient<tonic::transport::Channel>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), csi::ServeError>>>,
}

impl Bed {
    async fn new() -> Bed {
        Self::with_dir(
            tempfile::Builder::new().prefix("kf-csi").tempdir().unwrap(),
            None,
        )
        .await
    }

    async fn with_dir(dir: tempfile::TempDir, src: Option<MemorySource>) -> Bed {
        let launcher = dir.path().join("launcher");
        if !launcher.exists() {
            std::fs::write(&launcher, "#!/bin/sh\nexit 0\n").unwrap();
            std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let src = src.unwrap_or_else(|| {
            let src = MemorySource::new();
            src.put_policy(policy("web", 1, "ptrace"));
            src.put_pod("shop", "web-0", pod_facts("pod-uid-0"));
            src.put_pod("shop", "web-1", pod_facts("pod-uid-1"));
            src
        });
        let cfg = DriverConfig {
            driver_name: "sandbox.kitfleet.dev".into(),
            node_id: "node-a".into(),
            state_dir: dir.path().join("state"),
            launcher,
            profiles: ProfileStore::new(dir.path().join("seccomp/kitfleet")),
            arches: kitfleet_sandbox::seccomp::Arch::native()
                .into_iter()
                .collect(),
        };
        let driver = Arc::new(Driver::new(cfg, src.clone()));
        let sock = dir.path().join("csi.sock");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(csi::serve(
            driver.clone(),
            csi::Sockets {
                csi: sock.clone(),
                registration: Some(
                    dir.path()
                        .join("plugins_registry/sandbox.kitfleet.dev@reg.sock"),
                ),
                kubelet_endpoint: Some(
                    "/var/lib/kubelet/plugins/sandbox.kitfleet.dev/csi.sock".into(),
                ),
            },
            async move {
                let _ = rx.await;
            },
        ));
        let ch = connect(&sock).await;
        Bed {
            node: pb::node_client::NodeClient::new(ch.clone()),
            identity: pb::identity_client::IdentityClient::new(ch),
            dir,
            src,
            driver,
            stop: Some(tx),
            server: Some(server),
        }
    }

    fn target(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join("pods").join(name);
        std::fs::create_dir_all(&p).unwrap();
        p.join("mount")
    }

    fn profiles(&self) -> ProfileStore {
        ProfileStore::new(self.dir.path().join("seccomp/kitfleet"))
    }

    /// Stops the server, keeping the temp dir (and its mounts).
    async fn stop(mut self) -> (tempfile::TempDir, MemorySource) {
        let _ = self.stop.take().unwrap().send(());
        self.server.take().unwrap().await.unwrap().unwrap();
        let dir = tempfile::Builder::new().tempdir().unwrap();
        let real = std::mem::replace(&mut self.dir, dir);
        (real, self.src.clone())
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        unmount_under(self.dir.path());
    }
}

/// Unmounts everything below `root` (cleanup after a failed assertion).
fn unmount_under(root: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let root = root.to_string_lossy().to_string();
    for line in info.lines().rev() {
        if let Some(mp) = line.split(' ').nth(4)
            && mp.starts_with(&root)
        {
            let _ = mount::unmount(Path::new(mp));
        }
    }
}

async fn connect(sock: &Path) -> tonic::transport::Channel {
    for _ in 0..500 {
        if sock.exists()
            && let Ok(ch) = csi::channel(sock).await
        {
            return ch;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never answered", sock.display());
}

fn pod_facts(uid: &str) -> PodFacts {
    PodFacts {
        uid: uid.into(),
        labels: [("app".to_string(), "web".to_string())].into(),
    }
}

fn web_hash(generation: i64) -> String {
    attrs::set_hash("shop", &[policy_ref(&policy("web", generation, "ptrace"))])
}

fn context(pod: usize) -> HashMap<String, String> {
    [
        (attrs::ATTR_EPHEMERAL, "true".to_string()),
        (attrs::ATTR_POD_NAME, format!("web-{pod}")),
        (attrs::ATTR_POD_NAMESPACE, "shop".into()),
        (attrs::ATTR_POD_UID, format!("pod-uid-{pod}")),
        (attrs::ATTR_POLICIES, "web@1".into()),
        (attrs::ATTR_SET_HASH, web_hash(1)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn capability(mode: i32) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Mount(Default::default())),
        access_mode: Some(pb::volume_capability::AccessMode { mode }),
    }
}

fn publish_req(volume_id: &str, target: &Path, pod: usize) -> pb::NodePublishVolumeRequest {
    pb::NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(capability(1)),
        readonly: true,
        volume_context: context(pod),
        ..Default::default()
    }
}

fn unpublish_req(volume_id: &str, target: &Path) -> pb::NodeUnpublishVolumeRequest {
    pb::NodeUnpublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.display().to_string(),
    }
}

fn assert_status<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: Code,
    needle: &str,
    case: &str,
) {
    let s = r.expect_err(case);
    assert_eq!(s.code(), code, "{case}: {}", s.message());
    assert!(
        s.message().contains(needle),
        "{case}: {:?} lacks {needle:?}",
        s.message()
    );
}

fn nothing_left(bed: &Bed, volume_id: &str, target: &Path, case: &str) {
    assert!(
        !mount::is_mount_point(target).unwrap(),
        "{case}: still mounted"
    );
    let key = volume_key(volume_id);
    let state = bed.dir.path().join("state/v");
    assert!(!state.join(&key).exists(), "{case}: staging dir left");
    assert!(
        !state.join(format!(".tmp-{key}")).exists(),
        "{case}: temp staging dir left"
    );
    assert!(
        !state.join(format!("{key}.json")).exists(),
        "{case}: record left"
    );
}

#[tokio::test]
async fn identity_and_node_info() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new().await;
    let info = bed
        .identity
        .get_plugin_info(pb::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "sandbox.kitfleet.dev");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let caps = bed
        .identity
        .get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {})
        .await
        .unwrap();
    assert!(
        caps.into_inner().capabilities.is_empty(),
        "no controller service"
    );
    let probe = bed
        .identity
        .probe(pb::ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));
    let ni = bed
        .node
        .node_get_info(pb::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ni.node_id, "node-a");
    assert_eq!(ni.max_volumes_per_node, 0);
    let nc = bed
        .node
        .node_get_capabilities(pb::NodeGetCapabilitiesRequest {})
        .await
        .unwrap();
    assert!(
        nc.into_inner().capabilities.is_empty(),
        "no STAGE_UNSTAGE_VOLUME"
    );
    // Probe fails when the launcher is gone.
    std::fs::remove_file(bed.dir.path().join("launcher")).unwrap();
    assert_status(
        bed.identity.probe(pb::ProbeRequest {}).await,
        Code::FailedPrecondition,
        "launcher",
        "probe",
    );
}

#[tokio::test]
async fn kubelet_registration() {
    if !privileged() {
        return;
    }
    let bed = Bed::new().await;
    let ch = connect(
        &bed.dir
            .path()
            .join("plugins_registry/sandbox.kitfleet.dev@reg.sock"),
    )
    .await;
    let mut r = reg::registration_client::RegistrationClient::new(ch);
    let info = r.get_info(reg::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.r#type, "CSIPlugin");
    assert_eq!(info.name, "sandbox.kitfleet.dev");
    assert_eq!(
        info.endpoint,
        "/var/lib/kubelet/plugins/sandbox.kitfleet.dev/csi.sock"
    );
    assert_eq!(info.supported_versions, ["1.0.0"]);
    r.notify_registration_status(reg::RegistrationStatus {
        plugin_registered: true,
        error: String::new(),
    })
    .await
    .unwrap();
    r.notify_registration_status(reg::RegistrationStatus {
        plugin_registered: false,
        error: "x".into(),
    })
    .await
    .unwrap();
    // Shutdown removes both sockets (the kubelet then deregisters the plugin).
    let (dir, _) = bed.stop().await;
    assert!(!dir.path().join("csi.sock").exists());
    assert!(
        !dir.path()
            .join("plugins_registry/sandbox.kitfleet.dev@reg.sock")
            .exists()
    );
}

#[tokio::test]
async fn publish_mounts_read_only_and_unpublish_cleans_up() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new().await;
    let target = bed.target("a");
    let hash = web_hash(1);
    bed.node
        .node_publish_volume(publish_req("csi-a", &target, 0))
        .await
        .unwrap();
    assert!(mount::is_mount_point(&target).unwrap());
    // The volume's files.
    let launcher = target.join("kitfleet-sandbox");
    assert_eq!(std::fs::read(&launcher).unwrap(), b"#!/bin/sh\nexit 0\n");
    assert!(std::fs::metadata(&launcher).unwrap().permissions().mode() & 0o111 != 0);
    let p = kitfleet_sandbox::policy::CompiledPolicy::load(
        &target.join("policy.json").display().to_string(),
    )
    .unwrap();
    assert_eq!(p.policies, ["shop/web"]);
    assert_eq!(p.report_socket.as_deref(), Some("/.kitfleet/outcome.sock"));
    // Read-only for real: writes and creates fail with EROFS, also as root.
    for (what, r) in [
        ("create", std::fs::File::create(target.join("x")).map(drop)),
        (
            "write",
            std::fs::OpenOptions::new()
                .write(true)
                .open(target.join("policy.json"))
                .map(drop),
        ),
        ("mkdir", std::fs::create_dir(target.join("d"))),
    ] {
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS), "{what}");
    }
    let opts = mount_options(&target);
    assert!(
        opts.contains("ro") && opts.contains("nosuid") && opts.contains("nodev"),
        "{opts:?}"
    );
    // The seccomp profile exists before publish returns, and is the compiler's merged profile.
    let want = kitfleet_sandbox::compile::compile(
        &[policy("web", 1, "ptrace")],
        &kitfleet_sandbox::compile::Options {
            arches: kitfleet_sandbox::seccomp::Arch::native()
                .into_iter()
                .collect(),
            report_socket: None,
        },
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(bed.profiles().path(&hash)).unwrap(),
        want.profile.to_json()
    );

    // The outcome socket is served through the read-only mount.
    let mut s = std::os::unix::net::UnixStream::connect(target.join("outcome.sock")).unwrap();
    s.write_all(b"{\"event\":\"enforced\",\"landlockAbi\":7}\n")
        .unwrap();
    drop(s);
    let mut got = None;
    for _ in 0..200 {
        if let Some(o) = bed.driver.outcomes().get("csi-a") {
            got = Some(o.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = got.expect("outcome recorded");
    assert_eq!(got.pod, "shop/web-0");
    assert_eq!(got.report["landlockAbi"], 7);

    // Idempotent publish: OK, still one mount.
    bed.node
        .node_publish_volume(publish_req("csi-a", &target, 0))
        .await
        .unwrap();
    // A second volume with the same set shares the profile.
    let target_b = bed.target("b");
    bed.node
        .node_publish_volume(publish_req("csi-b", &target_b, 1))
        .await
        .unwrap();

    // The launcher refuses after all (a second report replaces the first); the kubelet unpublishes the volume of
    // the terminated pod before the next sandbox report: the refusal is kept for the report.
    let mut s = std::os::unix::net::UnixStream::connect(target.join("outcome.sock")).unwrap();
    s.write_all(b"{\"event\":\"refused\",\"reason\":\"minAbi 99\"}\n")
        .unwrap();
    drop(s);
    for _ in 0..200 {
        if bed
            .driver
            .outcomes()
            .get("csi-a")
            .map(|o| o.report["event"].clone())
            == Some("refused".into())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(bed.driver.ended_refusals().is_empty());
    bed.node
        .node_unpublish_volume(unpublish_req("csi-a", &target))
        .await
        .unwrap();
    nothing_left(&bed, "csi-a", &target, "unpublish a");
    let ended = bed.driver.ended_refusals();
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(
        (ended[0].pod.as_str(), ended[0].report["reason"].as_str()),
        ("shop/web-0", Some("minAbi 99"))
    );
    assert!(!target.exists(), "target dir removed");
    assert!(
        bed.profiles().path(&hash).exists(),
        "profile still used by csi-b"
    );
    // Idempotent unpublish.
    bed.node
        .node_unpublish_volume(unpublish_req("csi-a", &target))
        .await
        .unwrap();
    bed.node
        .node_unpublish_volume(unpublish_req("csi-b", &target_b))
        .await
        .unwrap();
    nothing_left(&bed, "csi-b", &target_b, "unpublish b");
    assert!(
        !bed.profiles().path(&hash).exists(),
        "last user gone: profile removed"
    );
    assert!(bed.driver.outcomes().is_empty());
}

fn mount_options(target: &Path) -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let t = target.display().to_string();
    info.lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(t.as_str()))
        .and_then(|l| l.split(' ').nth(5))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn invalid_arguments_are_named() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new().await;
    let target = bed.target("inv");
    let base = publish_req("csi-inv", &target, 0);
    let with = |f: &dyn Fn(&mut pb::NodePublishVolumeRequest)| {
        let mut r = base.clone();
        f(&mut r);
        r
    };
    let ctx_without = |k: &'static str| {
        move |r: &mut pb::NodePublishVolumeRequest| {
            r.volume_context.remove(k);
        }
    };
    let cases: Vec<(&str, pb::NodePublishVolumeRequest, &str)> = vec![
        (
            "no volume_id",
            with(&|r| r.volume_id.clear()),
            "volume_id: missing",
        ),
        (
            "volume_id with /",
            with(&|r| r.volume_id = "a/b".into()),
            "volume_id",
        ),
        (
            "no target_path",
            with(&|r| r.target_path.clear()),
            "target_path: missing",
        ),
        (
            "relative target",
            with(&|r| r.target_path = "pods/x".into()),
            "target_path",
        ),
        (
            "target with ..",
            with(&|r| r.target_path = "/tmp/../etc".into()),
            "target_path",
        ),
        (
            "no capability",
            with(&|r| r.volume_capability = None),
            "volume_capability: missing",
        ),
        (
            "no access mode",
            with(&|r| r.volume_capability.as_mut().unwrap().access_mode = None),
            "volume_capability.access_mode: missing",
        ),
        (
            "unknown access mode",
            with(&|r| r.volume_capability = Some(capability(0))),
            "volume_capability.access_mode.mode",
        ),
        (
            "no access type",
            with(&|r| r.volume_capability.as_mut().unwrap().access_type = None),
            "volume_capability.access_type: missing",
        ),
        (
            "not ephemeral",
            with(&ctx_without(attrs::ATTR_EPHEMERAL)),
            attrs::ATTR_EPHEMERAL,
        ),
        (
            "no pod name",
            with(&ctx_without(attrs::ATTR_POD_NAME)),
            attrs::ATTR_POD_NAME,
        ),
        (
            "no pod namespace",
            with(&ctx_without(attrs::ATTR_POD_NAMESPACE)),
            attrs::ATTR_POD_NAMESPACE,
        ),
        (
            "no pod uid",
            with(&ctx_without(attrs::ATTR_POD_UID)),
            attrs::ATTR_POD_UID,
        ),
        (
            "no policies",
            with(&ctx_without(attrs::ATTR_POLICIES)),
            attrs::ATTR_POLICIES,
        ),
        (
            "no hash",
            with(&ctx_without(attrs::ATTR_SET_HASH)),
            attrs::ATTR_SET_HASH,
        ),
        (
            "bad hash",
            with(&|r| {
                r.volume_context
                    .insert(attrs::ATTR_SET_HASH.into(), "xyz".into());
            }),
            attrs::ATTR_SET_HASH,
        ),
    ];
    for (case, req, needle) in cases {
        assert_status(
            bed.node.node_publish_volume(req).await,
            Code::InvalidArgument,
            needle,
            case,
        );
        nothing_left(&bed, "csi-inv", &target, case);
    }
    // Capabilities the volume cannot honour: FAILED_PRECONDITION ("exceeds capabilities").
    let block = with(&|r| {
        r.volume_capability.as_mut().unwrap().access_type =
            Some(pb::volume_capability::AccessType::Block(Default::default()))
    });
    assert_status(
        bed.node.node_publish_volume(block).await,
        Code::FailedPrecondition,
        "block",
        "block",
    );
    let multi = with(&|r| r.volume_capability = Some(capability(5)));
    assert_status(
        bed.node.node_publish_volume(multi).await,
        Code::FailedPrecondition,
        "MULTI_NODE",
        "multi",
    );
    let fs = with(&|r| {
        r.volume_capability = Some(pb::VolumeCapability {
            access_type: Some(pb::volume_capability::AccessType::Mount(
                pb::volume_capability::MountVolume {
                    fs_type: "ext4".into(),
                    ..Default::default()
                },
            )),
            access_mode: Some(pb::volume_capability::AccessMode { mode: 1 }),
        })
    });
    assert_status(
        bed.node.node_publish_volume(fs).await,
        Code::FailedPrecondition,
        "fs_type",
        "fs_type",
    );
    nothing_left(&bed, "csi-inv", &target, "capabilities");
    // Unpublish.
    let un = |v: &str, t: &str| pb::NodeUnpublishVolumeRequest {
        volume_id: v.into(),
        target_path: t.into(),
    };
    assert_status(
        bed.node.node_unpublish_volume(un("", "/x")).await,
        Code::InvalidArgument,
        "volume_id: missing",
        "un id",
    );
    assert_status(
        bed.node.node_unpublish_volume(un("v", "")).await,
        Code::InvalidArgument,
        "target_path: missing",
        "un target",
    );
    assert_status(
        bed.node.node_unpublish_volume(un("v", "rel")).await,
        Code::InvalidArgument,
        "target_path",
        "un rel",
    );
}

#[tokio::test]
async fn not_found_cases() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new().await;
    let target = bed.target("nf");
    // The pod is gone, or is another pod of the same name.
    let mut r = publish_req("csi-nf", &target, 0);
    r.volume_context
        .insert(attrs::ATTR_POD_NAME.into(), "web-9".into());
    assert_status(
        bed.node.node_publish_volume(r).await,
        Code::NotFound,
        "pod shop/web-9",
        "no pod",
    );
    let mut r = publish_req("csi-nf", &target, 0);
    r.volume_context
        .insert(attrs::ATTR_POD_UID.into(), "other-uid".into());
    assert_status(
        bed.node.node_publish_volume(r).await,
        Code::NotFound,
        "uid other-uid",
        "uid",
    );
    nothing_left(&bed, "csi-nf", &target, "not found");
    // Unpublish of a volume published elsewhere, and of a mount point that is not ours.
    bed.node
        .node_publish_volume(publish_req("csi-nf", &target, 0))
        .await
        .unwrap();
    let elsewhere = bed.target("elsewhere");
    assert_status(
        bed.node
            .node_unpublish_volume(unpublish_req("csi-nf", &elsewhere))
            .await,
        Code::NotFound,
        "is published at",
        "other target",
    );
    assert_status(
        bed.node
            .node_unpublish_volume(unpublish_req("csi-unknown", &target))
            .await,
        Code::NotFound,
        "not published by this driver",
        "foreign mount",
    );
    assert!(
        mount::is_mount_point(&target).unwrap(),
        "a foreign unpublish left it alone"
    );
    // Unknown volume, nothing mounted: already unpublished, OK.
    bed.node
        .node_unpublish_volume(unpublish_req("csi-unknown", &elsewhere))
        .await
        .unwrap();
    bed.node
        .node_unpublish_volume(unpublish_req("csi-nf", &target))
        .await
        .unwrap();
    nothing_left(&bed, "csi-nf", &target, "end");
}

#[tokio::test]
async fn second_publish_rules() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new().await;
    let target = bed.target("two");
    bed.node
        .node_publish_volume(publish_req("csi-two", &target, 0))
        .await
        .unwrap();
    // Same target, other arguments: ALREADY_EXISTS.
    let mut r = publish_req("csi-two", &target, 0);
    r.readonly = false;
    assert_status(
        bed.node.node_publish_volume(r).await,
        Code::AlreadyExists,
        "other arguments",
        "readonly",
    );
    let mut r = publish_req("csi-two", &target, 0);
    r.volume_context
        .insert(attrs::ATTR_MOUNT_PATH.into(), "/sandbox".into());
    assert_status(
        bed.node.node_publish_volume(r).await,
        Code::AlreadyExists,
        "other arguments",
        "context",
    );
    // Other target, single-node volume: FAILED_PRECONDITION.
    let other = bed.target("two-b");
    assert_status(
        bed.node
            .node_publish_volume(publish_req("csi-two", &other, 0))
            .await,
        Code::FailedPrecondition,
        "already published at",
        "other target",
    );
    assert!(!mount::is_mount_point(&other).unwrap());
    // Someone else's mount at a target: refused, left alone.
    let foreign = bed.target("foreign");
    std::fs::create_dir(&foreign).unwrap();
    mount::bind_read_only(&bed.dir.path().join("pods/two"), &foreign).unwrap();
    assert_status(
        bed.node
            .node_publish_volume(publish_req("csi-f", &foreign, 0))
            .await,
        Code::FailedPrecondition,
        "already a mount point",
        "foreign",
    );
    mount::unmount(&foreign).unwrap();
    // Unmounted behind our back (e.g. after a reboot): publish mounts again.
    mount::unmount(&target).unwrap();
    bed.node
        .node_publish_volume(publish_req("csi-two", &target, 0))
        .await
        .unwrap();
    assert!(mount::is_mount_point(&target).unwrap());
    assert!(target.join("policy.json").exists());
    bed.node
        .node_unpublish_volume(unpublish_req("csi-two", &target))
        .await
        .unwrap();
    assert!(
        !mount::is_mount_point(&target).unwrap(),
        "one unmount was enough: no stacked mounts"
    );
}

#[tokio::test]
async fn changed_policy_set_fails_closed() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new().await;
    let target = bed.target("chg");
    // Generation bumped after admission.
    bed.src.put_policy(policy("web", 2, "ptrace"));
    assert_status(
        bed.node
            .node_publish_volume(publish_req("csi-chg", &target, 0))
            .await,
        Code::FailedPrecondition,
        "policy shop/web generation 1 → 2",
        "generation",
    );
    nothing_left(&bed, "csi-chg", &target, "generation");
    assert!(
        bed.profiles().list().unwrap().is_empty(),
        "no profile for a refused set"
    );
    // A new matching policy.
    bed.src.put_policy(policy("web", 1, "ptrace"));
    bed.src.put_policy(policy("extra", 1, "personality"));
    assert_status(
        bed.node
            .node_publish_volume(publish_req("csi-chg", &target, 0))
            .await,
        Code::FailedPrecondition,
        "policy shop/extra (generation 1) now matches the pod",
        "new policy",
    );
    // Deleted.
    bed.src.delete_policy("shop", "extra");
    bed.src.delete_policy("shop", "web");
    assert_status(
        bed.node
            .node_publish_volume(publish_req("csi-chg", &target, 0))
            .await,
        Code::FailedPrecondition,
        "policy shop/web (generation 1) no longer applies",
        "deleted",
    );
    // Recreated: same name and generation, new uid — only the hash tells.
    let mut again = policy("web", 1, "ptrace");
    again.metadata.uid = Some("uid-web-2".into());
    bed.src.put_policy(again);
    assert_status(
        bed.node
            .node_publish_volume(publish_req("csi-chg", &target, 0))
            .await,
        Code::FailedPrecondition,
        "deleted and created again",
        "recreated",
    );
    // A set that does not compile.
    let mut bad = policy("web", 1, "ptrac");
    bad.metadata.uid = Some("uid-web".into());
    bed.src.put_policy(bad);
    assert_status(
        bed.node
            .node_publish_volume(publish_req("csi-chg", &target, 0))
            .await,
        Code::FailedPrecondition,
        "spec.seccomp.rules[0].names[0]",
        "compile",
    );
    nothing_left(&bed, "csi-chg", &target, "end");
}

#[tokio::test]
async fn failed_publish_leaves_nothing() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new().await;
    // The target's parent does not exist: fails after staging, profile and record were written.
    let target = bed.dir.path().join("missing-parent/mount");
    assert_status(
        bed.node
            .node_publish_volume(publish_req("csi-fail", &target, 0))
            .await,
        Code::Internal,
        "creating target_path",
        "no parent",
    );
    nothing_left(&bed, "csi-fail", &target, "no parent");
    assert!(
        bed.profiles().list().unwrap().is_empty(),
        "profile rolled back"
    );
    // The launcher is missing: fails while staging.
    let target = bed.target("fail2");
    std::fs::remove_file(bed.dir.path().join("launcher")).unwrap();
    assert_status(
        bed.node
            .node_publish_volume(publish_req("csi-fail", &target, 0))
            .await,
        Code::Internal,
        "launcher",
        "no launcher",
    );
    nothing_left(&bed, "csi-fail", &target, "no launcher");
    assert!(!target.exists(), "target not created");
    assert!(bed.profiles().list().unwrap().is_empty());
}

#[tokio::test]
async fn restart_recovers_sockets_and_collects_profiles() {
    if !privileged() {
        return;
    }
    let mut bed = Bed::new().await;
    let target = bed.target("rec");
    bed.node
        .node_publish_volume(publish_req("csi-rec", &target, 0))
        .await
        .unwrap();
    let (dir, src) = bed.stop().await;
    // A stray profile and a half-staged directory from a crash.
    let stray = "f".repeat(64);
    ProfileStore::new(dir.path().join("seccomp/kitfleet"))
        .write(&stray, "{}")
        .unwrap();
    std::fs::create_dir_all(dir.path().join("state/v/.tmp-0123")).unwrap();
    let mut bed = Bed::with_dir(dir, Some(src)).await;
    assert!(
        !bed.profiles().path(&stray).exists(),
        "unused profile collected"
    );
    assert!(
        bed.profiles().path(&web_hash(1)).exists(),
        "profile in use kept"
    );
    assert!(!bed.dir.path().join("state/v/.tmp-0123").exists());
    // The new process serves the volume's outcome socket again.
    let mut s = std::os::unix::net::UnixStream::connect(target.join("outcome.sock")).unwrap();
    s.write_all(b"{\"event\":\"refused\"}\n").unwrap();
    drop(s);
    let mut seen = false;
    for _ in 0..200 {
        if bed.driver.outcomes().contains_key("csi-rec") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen, "outcome after restart");
    bed.node
        .node_publish_volume(publish_req("csi-rec", &target, 0))
        .await
        .unwrap();
    bed.node
        .node_unpublish_volume(unpublish_req("csi-rec", &target))
        .await
        .unwrap();
    nothing_left(&bed, "csi-rec", &target, "after restart");
}
