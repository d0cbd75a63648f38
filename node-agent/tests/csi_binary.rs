//! The `kitfleet-node-agent csi` binary for real: flags, a directory of manifests as the policy source, the
//! registration socket, a publish through its CSI socket (real read-only mount), and a clean SIGTERM shutdown that
//! removes both sockets. Needs root (mounts): skips with a message otherwise, fails under CI=true.

use kitfleet_node_agent::csi::{
    self, attrs,
    proto::{csi as pb, registration as reg},
};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn connect(sock: &Path) -> tonic::transport::Channel {
    for _ in 0..1000 {
        if sock.exists()
            && let Ok(ch) = csi::channel(sock).await
        {
            return ch;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never answered", sock.display());
}

#[tokio::test]
async fn csi_subcommand_serves_registers_publishes_and_shuts_down() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: the CSI binary test needs root (bind mounts)"
        );
        eprintln!("skipping: the CSI binary test needs root (bind mounts)");
        return;
    }
    let t = tempfile::Builder::new()
        .prefix("kf-csi-bin")
        .tempdir()
        .unwrap();
    let objects = t.path().join("objects");
    std::fs::create_dir(&objects).unwrap();
    std::fs::write(
        objects.join("shop.yaml"),
        "apiVersion: kitfleet.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: web, namespace: shop, uid: u-web, generation: 4}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  seccomp: {base: runtime/default, rules: [{names: [ptrace], action: kill-process}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: shop, uid: p-0, labels: {app: web}}\n",
    )
    .unwrap();
    let launcher = t.path().join("launcher");
    std::fs::write(&launcher, "launcher").unwrap();
    let (csi_sock, reg_sock) = (
        t.path().join("plugins/csi.sock"),
        t.path().join("registry/sandbox.kitfleet.dev@reg.sock"),
    );
    let seccomp = t.path().join("seccomp/kitfleet");
    let mut child = Agent(
        Command::new(env!("CARGO_BIN_EXE_kitfleet-node-agent"))
            .arg("csi")
            .args(["--node-name", "node-b"])
            .arg("--csi-socket")
            .arg(&csi_sock)
            .arg("--registration-socket")
            .arg(&reg_sock)
            .arg("--state-dir")
            .arg(t.path().join("state"))
            .arg("--launcher")
            .arg(&launcher)
            .arg("--seccomp-dir")
            .arg(&seccomp)
            .arg("--objects-dir")
            .arg(&objects)
            .spawn()
            .unwrap(),
    );
    let mut r = reg::registration_client::RegistrationClient::new(connect(&reg_sock).await);
    let info = r.get_info(reg::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (info.r#type.as_str(), info.name.as_str()),
        ("CSIPlugin", "sandbox.kitfleet.dev")
    );
    assert_eq!(info.endpoint, csi_sock.display().to_string());
    let ch = connect(&csi_sock).await;
    let mut node = pb::node_client::NodeClient::new(ch);
    assert_eq!(
        node.node_get_info(pb::NodeGetInfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .node_id,
        "node-b"
    );
    let hash = attrs::set_hash(
        "shop",
        &[attrs::PolicyRef {
            name: "web".into(),
            uid: "u-web".into(),
            generation: 4,
        }],
    );
    let target = t.path().join("pod/mount");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let ctx = [
        (attrs::ATTR_EPHEMERAL, "true"),
        (attrs::ATTR_POD_NAME, "web-0"),
        (attrs::ATTR_POD_NAMESPACE, "shop"),
        (attrs::ATTR_POD_UID, "p-0"),
        (attrs::ATTR_POLICIES, "web@4"),
        (attrs::ATTR_SET_HASH, hash.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let req = pb::NodePublishVolumeRequest {
        volume_id: "csi-bin".into(),
        target_path: target.display().to_string(),
        volume_capability: Some(pb::VolumeCapability {
            access_type: Some(pb::volume_capability::AccessType::Mount(Default::default())),
            access_mode: Some(pb::volume_capability::AccessMode { mode: 1 }),
        }),
        readonly: true,
        volume_context: ctx,
        ..Default::default()
    };
    let published = node.node_publish_volume(req).await;
    let mounted = csi::mount::is_mount_point(&target).unwrap_or(false);
    let files = (
        std::fs::read_to_string(target.join("kitfleet-sandbox")).ok(),
        seccomp.join(format!("{hash}.json")).exists(),
        std::fs::write(target.join("x"), "x").map_err(|e| e.raw_os_error()),
    );
    node.node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
        volume_id: "csi-bin".into(),
        target_path: target.display().to_string(),
    })
    .await
    .unwrap();
    published.unwrap();
    assert!(mounted);
    assert_eq!(
        files,
        (Some("launcher".into()), true, Err(Some(libc::EROFS)))
    );
    assert!(!csi::mount::is_mount_point(&target).unwrap());
    assert!(!seccomp.join(format!("{hash}.json")).exists());
    // SIGTERM while the clients still hold their connections open (as the kubelet does): a clean exit after the
    // shutdown grace, sockets gone.
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    let mut status = None;
    for _ in 0..300 {
        status = child.0.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = status.expect("the agent did not exit within 30 s of SIGTERM");
    assert!(status.success(), "{status}");
    drop((r, node));
    assert!(!csi_sock.exists() && !reg_sock.exists());
}
