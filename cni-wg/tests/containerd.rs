//! A real CRI path: containerd 1.6 (Debian) with its CRI plugin drives `kitfleet-wg`, through a
//! small CRI client written here (gRPC over HTTP/2 on the unix socket, protobuf encoded by hand
//! for the few messages needed). containerd runs inside a simulated node namespace. Checks the
//! double DEL: StopPodSandbox (netns + prevResult), then RemovePodSandbox (`CNI_NETNS=""`, no
//! prevResult), and containerd's capitalised `portMappings`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use serde_json::json;

// --- protobuf, just enough -------------------------------------------------------------------

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(num: u32, data: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(num) << 3 | 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

fn field_varint(num: u32, v: u64, out: &mut Vec<u8>) {
    varint(u64::from(num) << 3, out);
    varint(v, out);
}

/// Top-level length-delimited fields `(number, bytes)` of a message (others skipped).
fn fields(mut b: &[u8]) -> Vec<(u32, Vec<u8>)> {
    fn read_varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&x, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(x & 0x7f) << shift;
            if x & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while let Some(key) = read_varint(&mut b) {
        match key & 7 {
            0 => {
                read_varint(&mut b);
            }
            2 => {
                let Some(len) = read_varint(&mut b) else {
                    break;
                };
                let len = len as usize;
                if len > b.len() {
                    break;
                }
                out.push(((key >> 3) as u32, b[..len].to_vec()));
                b = &b[len..];
            }
            1 => b = &b[8.min(b.len())..],
            5 => b = &b[4.min(b.len())..],
            _ => break,
        }
    }
    out
}

fn get(b: &[u8], num: u32) -> Vec<u8> {
    fields(b)
        .into_iter()
        .find(|(n, _)| *n == num)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// runtime.v1 PodSandboxConfig: metadata, hostname, one port mapping.
fn sandbox_config(name: &str) -> Vec<u8> {
    let mut meta = Vec::new();
    field_bytes(1, name.as_bytes(), &mut meta); // name
    field_bytes(2, format!("uid-{name}").as_bytes(), &mut meta); // uid
    field_bytes(3, b"default", &mut meta); // namespace
    let mut port = Vec::new();
    field_varint(1, 0, &mut port); // protocol TCP
    field_varint(2, 80, &mut port); // container_port
    field_varint(3, 18081, &mut port); // host_port
    let mut cfg = Vec::new();
    field_bytes(1, &meta, &mut cfg); // metadata
    field_bytes(2, name.as_bytes(), &mut cfg); // hostname
    field_bytes(5, &port, &mut cfg); // port_mappings
    cfg
}

// --- gRPC over HTTP/2 -------------------------------------------------------------------------

async fn call(sock: &Path, method: &str, msg: Vec<u8>) -> Result<Vec<u8>, String> {
    let io = tokio::net::UnixStream::connect(sock)
        .await
        .map_err(|e| e.to_string())?;
    let (client, conn) = h2::client::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://localhost/runtime.v1.RuntimeService/{method}"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut send) = client.send_request(req, false).map_err(|e| e.to_string())?;
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    send.send_data(Bytes::from(frame), true)
        .map_err(|e| e.to_string())?;
    let resp = resp.await.map_err(|e| e.to_string())?;
    let status_in_headers = resp.headers().get("grpc-status").cloned();
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let status = trailers.get("grpc-status").cloned().or(status_in_headers);
    if status.as_ref().and_then(|s| s.to_str().ok()) != Some("0") {
        let msg = trailers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .unwrap_or("");
        return Err(format!("{method}: grpc-status {status:?}: {msg}"));
    }
    Ok(buf.get(5..).unwrap_or_default().to_vec())
}

fn rpc(rt: &tokio::runtime::Runtime, sock: &Path, method: &str, msg: Vec<u8>) -> Vec<u8> {
    rt.block_on(call(sock, method, msg))
        .unwrap_or_else(|e| panic!("{e}"))
}

// --- the test ---------------------------------------------------------------------------------

struct Containerd {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Containerd {
    /// Leaves nothing running (tasks, shims, mounts), even when an assertion failed half-way.
    fn drop(&mut self) {
        let sock = self.dir.join("containerd.sock");
        let ctr = |args: &[&str]| {
            Command::new("ctr")
                .arg("-a")
                .arg(&sock)
                .args(["-n", "k8s.io"])
                .args(args)
                .output()
        };
        if let Ok(out) = ctr(&["tasks", "ls", "-q"]) {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", id]);
                let _ = ctr(&["tasks", "delete", "-f", id]);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_under(&self.dir);
    }
}

fn available() -> bool {
    let ok = ["containerd", "ctr", "podman", "runc"].iter().all(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) && Path::new("/usr/lib/cni/loopback").exists()
        && Path::new("/bin/busybox").exists();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: needs containerd, runc, podman, containernetworking-plugins, busybox-static"
        );
        eprintln!(
            "SKIP: needs containerd, runc, podman (to build the sandbox image), containernetworking-plugins, busybox-static"
        );
    }
    ok
}

#[test]
fn containerd_cri_run_stop_remove_with_double_del() {
    if !privileged() || !available() {
        return;
    }
    let node = Node::new("10.244.40.0/24");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["bin", "net.d", "root", "state", "rootfs/bin", "tmp"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::os::unix::fs::symlink(PLUGIN, d.join("bin/kitfleet-wg")).unwrap();
    std::os::unix::fs::symlink("/usr/lib/cni/loopback", d.join("bin/loopback")).unwrap();
    let log = d.join("kitfleet-wg.log");
    let conflist = json!({"cniVersion": "1.0.0", "name": "kfwtest", "plugins": [{
        "type": "kitfleet-wg", "stateFile": node.state_file(), "dataDir": node.data_dir(),
        "logFile": log, "masquerade": false, "capabilities": {"portMappings": true}}]});
    std::fs::write(d.join("net.d/10-kfw.conflist"), conflist.to_string()).unwrap();

    // Sandbox ("pause") image: busybox sleeping, built with podman, imported with ctr.
    std::fs::copy("/bin/busybox", d.join("rootfs/bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", d.join("rootfs/bin/sleep")).unwrap();
    std::fs::write(
        d.join("storage.conf"),
        format!(
            "[storage]\ndriver = \"overlay\"\nrunroot = \"{0}/prun\"\ngraphroot = \"{0}/proot\"\n",
            d.display()
        ),
    )
    .unwrap();
    std::fs::write(d.join("containers.conf"), format!("[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\ntmp_dir = \"{}/tmp\"\n", d.display())).unwrap();
    let script = format!(
        "tar -C {0}/rootfs -c . | podman import --change 'CMD [\"/bin/sleep\",\"1000000\"]' - localhost/kfwpause:1 >/dev/null && podman save -q --format oci-archive -o {0}/pause.tar localhost/kfwpause:1",
        d.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
        .env("CONTAINERS_CONF", d.join("containers.conf"))
        .env("TMPDIR", d.join("tmp"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pause image: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let sock = d.join("containerd.sock");
    let config = format!(
        r#"version = 2
root = "{0}/root"
state = "{0}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{0}/containerd.sock"
[ttrpc]
  address = "{0}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/kfwpause:1"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{0}/bin"
    conf_dir = "{0}/net.d"
"#,
        d.display()
    );
    std::fs::write(d.join("config.toml"), config).unwrap();
    let _ctd = Containerd {
        dir: d.to_path_buf(),
        child: Command::new("nsenter")
            .arg(format!("--net={}", node.ns.path()))
            .args(["containerd", "--config"])
            .arg(d.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("containerd.log")).unwrap())
            .spawn()
            .unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "containerd did not start: {}",
            std::fs::read_to_string(d.join("containerd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ctr = Command::new("ctr")
        .arg("-a")
        .arg(&sock)
        .args(["-n", "k8s.io", "images", "import"])
        .arg(d.join("pause.tar"))
        .output()
        .unwrap();
    assert!(
        ctr.status.success(),
        "ctr import: {}",
        String::from_utf8_lossy(&ctr.stderr)
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut req = Vec::new();
    field_bytes(1, &sandbox_config("web"), &mut req);
    let resp = rpc(&rt, &sock, "RunPodSandbox", req);
    let id = String::from_utf8(get(&resp, 1)).unwrap();
    assert!(!id.is_empty());
    assert_eq!(node.reserved().len(), 1);
    let mut req = Vec::new();
    field_bytes(1, id.as_bytes(), &mut req);
    let status = rpc(&rt, &sock, "PodSandboxStatus", req.clone());
    let ip = String::from_utf8(get(&get(&get(&status, 1), 5), 1)).unwrap();
    assert_eq!(
        vec![ip.clone()],
        node.reserved(),
        "PodSandboxStatus reports our address"
    );
    assert_eq!(node.host_veths().len(), 1);

    rpc(&rt, &sock, "StopPodSandbox", req.clone());
    assert!(
        node.reserved().is_empty(),
        "StopPodSandbox's DEL releases the address"
    );
    rpc(&rt, &sock, "RemovePodSandbox", req);
    eventually("host veth gone", || node.host_veths().is_empty());

    let log = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&id)).collect();
    let adds: Vec<&&str> = lines.iter().filter(|l| l.contains(" added ")).collect();
    let dels: Vec<&&str> = lines.iter().filter(|l| l.contains(" deleted ")).collect();
    assert_eq!(adds.len(), 1, "{log}");
    assert!(
        adds[0].contains("port_mappings=1"),
        "containerd's capitalised portMappings: {}",
        adds[0]
    );
    assert_eq!(dels.len(), 2, "containerd sends DEL twice: {log}");
    assert!(
        dels[0].contains("prev_result=true") && !dels[0].contains("netns=\"\""),
        "{}",
        dels[0]
    );
    assert!(
        dels[1].contains("prev_result=false") && dels[1].contains("netns=\"\""),
        "{}",
        dels[1]
    );
}
