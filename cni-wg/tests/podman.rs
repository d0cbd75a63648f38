//! A real CNI client: Debian's podman 4.3 with its CNI backend drives `kitfleet-wg` (chained
//! with the reference `portmap`) through run/stop/start/rm cycles, with conflists at 1.0.0 and
//! 0.4.0. podman runs inside a simulated node namespace, so everything the plugin does stays
//! there. The node state file is written by the test (no node agent needed on one node).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::{Value, json};

struct Podman {
    dir: tempfile::TempDir,
    node: Node,
}

impl Podman {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for d in [
            "bin",
            "net.d",
            "run",
            "root",
            "tmp",
            "rootfs/bin",
            "rootfs/www",
            "rootfs/etc",
        ] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        std::os::unix::fs::symlink(PLUGIN, p.join("bin/kitfleet-wg")).unwrap();
        std::fs::write(
            p.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{0}/bin\", \"/usr/lib/cni\"]\n\
                 network_config_dir = \"{0}/net.d\"\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\ntmp_dir = \"{0}/tmp\"\n",
                p.display()
            ),
        )
        .unwrap();
        std::fs::write(
            p.join("storage.conf"),
            format!("[storage]\ndriver = \"overlay\"\nrunroot = \"{0}/run\"\ngraphroot = \"{0}/root\"\n", p.display()),
        )
        .unwrap();
        // A busybox image, imported from a rootfs (no registry needed).
        let rootfs = p.join("rootfs");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "sleep", "ip", "ping", "cat", "httpd", "wget"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        std::fs::write(rootfs.join("www/index.html"), "kitfleet-pod\n").unwrap();
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
        let node = Node::new("10.244.30.0/24");
        node.ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let pm = Self { dir, node };
        let tar = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C {} -c . | podman import - localhost/kfwbb:1 >/dev/null",
                rootfs.display()
            ))
            .envs(pm.env())
            .output()
            .unwrap();
        assert!(
            tar.status.success(),
            "podman import: {}",
            String::from_utf8_lossy(&tar.stderr)
        );
        pm
    }

    fn env(&self) -> Vec<(String, PathBuf)> {
        let p = self.dir.path();
        vec![
            ("CONTAINERS_CONF".into(), p.join("containers.conf")),
            ("CONTAINERS_STORAGE_CONF".into(), p.join("storage.conf")),
            ("TMPDIR".into(), p.join("tmp")),
        ]
    }

    /// Runs podman inside the node namespace (nsenter, not `ip netns exec`: that remounts /sys
    /// and hides the cgroup mounts runc needs).
    fn podman(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.node.ns.path()))
            .arg("podman")
            .args(args)
            .envs(self.env())
            .output()
            .unwrap()
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}\nplugin log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("kitfleet-wg.log")
    }

    fn write_conflist(&self, version: &str) {
        let conflist = json!({
            "cniVersion": version, "name": "kfwpod",
            "plugins": [
                {"type": "kitfleet-wg", "stateFile": self.node.state_file(), "dataDir": self.node.data_dir(),
                 "logFile": self.log(), "masquerade": true},
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        std::fs::write(
            self.dir.path().join("net.d/kfwpod.conflist"),
            conflist.to_string(),
        )
        .unwrap();
    }

    fn ip_of(&self, name: &str) -> String {
        let v: Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        v[0]["NetworkSettings"]["Networks"]["kfwpod"]["IPAddress"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn reserved(&self) -> Vec<String> {
        let dir = self.node.data_dir().join("kfwpod");
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.retain(|n| n.parse::<std::net::Ipv4Addr>().is_ok());
        v.sort();
        v
    }
}

impl Drop for Podman {
    /// Leaves nothing running, even when an assertion failed half-way.
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-a", "-f", "-t", "0"]);
        unmount_under(self.dir.path());
    }
}

fn podman_available() -> bool {
    let ok = Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("curl")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        && Path::new("/usr/lib/cni/portmap").exists()
        && Path::new("/bin/busybox").exists();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: needs podman, containernetworking-plugins, busybox-static, curl"
        );
        eprintln!("SKIP: needs podman, containernetworking-plugins, busybox-static and curl");
    }
    ok
}

#[test]
fn podman_run_stop_start_rm_with_conflists_at_1_0_0_and_0_4_0() {
    if !privileged() || !podman_available() {
        return;
    }
    let pm = Podman::new();
    // An "outside" namespace on the node's underlay, to reach the hostPort from.
    let ext = Netns::new("ext");
    sh(&[
        "ip",
        "link",
        "add",
        "uplink0",
        "netns",
        &pm.node.ns.name,
        "type",
        "veth",
        "peer",
        "name",
        "x0",
        "netns",
        &ext.name,
    ]);
    pm.node
        .ns
        .exec(&["ip", "addr", "add", "198.51.100.1/24", "dev", "uplink0"]);
    pm.node.ns.exec(&["ip", "link", "set", "uplink0", "up"]);
    ext.exec(&["ip", "addr", "add", "198.51.100.2/24", "dev", "x0"]);
    ext.exec(&["ip", "link", "set", "x0", "up"]);

    for version in ["1.0.0", "0.4.0"] {
        pm.write_conflist(version);
        let img = "localhost/kfwbb:1";
        let web = format!("web{}", version.replace('.', ""));
        let cli = format!("cli{}", version.replace('.', ""));
        pm.ok(&[
            "run",
            "-d",
            "--name",
            &web,
            "--network",
            "kfwpod",
            "-p",
            "18080:80",
            img,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ]);
        pm.ok(&[
            "run",
            "-d",
            "--name",
            &cli,
            "--network",
            "kfwpod",
            img,
            "sleep",
            "1000",
        ]);
        let web_ip = pm.ip_of(&web);
        assert!(web_ip.starts_with("10.244.30."), "{version}: {web_ip}");
        assert_eq!(pm.reserved().len(), 2, "{version}");
        let addr = pm.ok(&["exec", &web, "ip", "-4", "addr", "show", "eth0"]);
        assert!(addr.contains(&format!("{web_ip}/32")), "{addr}");
        assert!(
            pm.ok(&["exec", &web, "ip", "route"])
                .contains("default via 169.254.1.1")
        );
        // Pod to pod on the node, through the host routes.
        pm.ok(&["exec", &cli, "ping", "-c2", "-W2", &web_ip]);
        pm.ok(&["exec", &cli, "wget", "-qO-", &format!("http://{web_ip}/")]);
        // hostPort through the chained reference portmap (it needs our result as prevResult).
        let got = ext.exec(&["curl", "-sS", "-m", "5", "http://198.51.100.1:18080/"]);
        let nat = pm.node.ns.exec(&["iptables-save", "-t", "nat"]);
        assert_eq!(
            String::from_utf8_lossy(&got.stdout),
            "kitfleet-pod\n",
            "{version}: {}\nnode nat table:\n{}",
            String::from_utf8_lossy(&got.stderr),
            String::from_utf8_lossy(&nat.stdout)
        );

        // stop → DEL; start → ADD again for the same container ID; rm → DEL.
        pm.ok(&["stop", "-t", "0", &web]);
        assert_eq!(
            pm.reserved().len(),
            1,
            "{version}: stop must release the address"
        );
        pm.ok(&["start", &web]);
        assert_eq!(pm.reserved().len(), 2);
        let web_ip2 = pm.ip_of(&web);
        pm.ok(&["exec", &cli, "wget", "-qO-", &format!("http://{web_ip2}/")]);
        pm.ok(&["restart", "-t", "0", &cli]);
        pm.ok(&["exec", &cli, "ping", "-c2", "-W2", &web_ip2]);
        pm.ok(&["rm", "-f", "-t", "0", &web, &cli]);
        assert!(pm.reserved().is_empty(), "{version}: {:?}", pm.reserved());
        let dying = pm.node.data_dir().join("kfwpod/dying");
        let what = format!(
            "{version}: host veths gone (left: {:?}, dying markers: {:?})",
            pm.node.host_veths(),
            std::fs::read_dir(&dying).map(|d| d.count())
        );
        eventually(&what, || pm.node.host_veths().is_empty());
    }
    let log = std::fs::read_to_string(pm.log()).unwrap();
    assert!(log.contains("added") && log.contains("deleted"), "{log}");
}
