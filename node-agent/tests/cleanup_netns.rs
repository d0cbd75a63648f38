//! `kitfleet-node-agent cleanup` against what the mesh really leaves: the agent binary runs in a throwaway network
//! namespace (its key and state file under a temporary "host root"), is stopped (its TUN and routes stay, by
//! design), the plugin's masquerade table, conflist, binary, IPAM and log files are laid out as the chart and the
//! plugin make them, next to someone else's route, nft table, conflist, plugin and log. Cleanup removes exactly
//! Kitfleet's; a second run is a no-op. Needs root, TUN, netns and `nft`: fails under CI=true without them, skips
//! with a message otherwise.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use kitfleet_dataplane::PrivateKey;
use kitfleet_node_agent::mesh::nodes::ANNOTATION_PUBLIC_KEY;
use kitfleet_testbed::netns::{Proc, in_ns, ip, ns_output, require_privileges};

const AGENT: &str = env!("CARGO_BIN_EXE_kitfleet-node-agent");
const DEV: &str = "kfcl0";

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

fn node(name: &str, cidr: &str, internal_ip: &str, key: Option<String>) -> serde_json::Value {
    let mut n = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": internal_ip}]}
    });
    if let Some(k) = key {
        n["metadata"]["annotations"] = serde_json::json!({ ANNOTATION_PUBLIC_KEY: k });
    }
    n
}

fn write(root: &Path, host_path: &str, content: &str) {
    let p = root.join(host_path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn exists(root: &Path, host_path: &str) -> bool {
    root.join(host_path.trim_start_matches('/')).exists()
}

fn cleanup(ns: &str, root: &Path) -> Output {
    in_ns(
        ns,
        AGENT,
        &[
            "cleanup",
            "--interface",
            DEV,
            "--host-root",
            root.to_str().unwrap(),
        ],
    )
    .env_remove("NODE_NAME")
    .output()
    .unwrap()
}

fn routes_proto75(ns: &str) -> String {
    let v4 = ns_output(
        ns,
        "ip",
        &["-4", "route", "show", "table", "all", "proto", "75"],
    )
    .unwrap();
    let v6 = ns_output(
        ns,
        "ip",
        &["-6", "route", "show", "table", "all", "proto", "75"],
    )
    .unwrap();
    v4 + &v6
}

const CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"kitfleet","plugins":[
  {"type":"kitfleet-wg","stateFile":"/run/kitfleet/node.json","dataDir":"/var/lib/kitfleet/ipam",
   "logFile":"/var/log/kitfleet-wg.log","masquerade":true},
  {"type":"portmap","capabilities":{"portMappings":true}}]}"#;

#[test]
fn cleanup_removes_what_the_mesh_and_plugin_leave_and_nothing_else() {
    if !require_privileges("cleanup_removes_what_the_mesh_and_plugin_leave_and_nothing_else") {
        return;
    }
    let ns = Ns(format!("hcl{}", std::process::id() % 10000));
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &ns.0])
        .stderr(Stdio::null())
        .status();
    ip(&["netns", "add", &ns.0]).unwrap();
    let n = ns.0.as_str();
    ip(&["-n", n, "link", "set", "lo", "up"]).unwrap();
    ip(&[
        "-n", n, "link", "add", "eth0", "type", "veth", "peer", "name", "gw0",
    ])
    .unwrap();
    ip(&["-n", n, "addr", "add", "192.168.231.1/24", "dev", "eth0"]).unwrap();
    ip(&["-n", n, "link", "set", "eth0", "up"]).unwrap();
    ip(&["-n", n, "link", "set", "gw0", "up"]).unwrap();

    // The host root: the agent's key and state file where the chart puts them, plus someone else's files.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("host");
    write(&root, "/etc/cni/net.d/10-kitfleet.conflist", CONFLIST);
    write(&root, "/etc/cni/net.d/99-other.conflist", "{}");
    write(&root, "/opt/cni/bin/kitfleet-wg", "binary");
    write(&root, "/opt/cni/bin/portmap", "binary");
    write(&root, "/var/lib/kitfleet/ipam/10.244.1.2", "pod");
    write(&root, "/var/log/kitfleet-wg.log", "log");
    write(&root, "/var/log/other.log", "log");
    write(&root, "/var/lib/cni/other/x", "x");

    let dir = tmp.path().join("nodes");
    std::fs::create_dir_all(&dir).unwrap();
    let peer = PrivateKey::generate().unwrap().public_key().to_string();
    for nd in [
        node("me", "10.244.1.0/24", "192.168.231.1", None),
        node("peer", "10.244.2.0/24", "192.168.231.2", Some(peer)),
    ] {
        let name = nd["metadata"]["name"].as_str().unwrap();
        std::fs::write(dir.join(format!("{name}.json")), nd.to_string()).unwrap();
    }
    let key = root.join("var/lib/kitfleet/wg.key");
    let state = root.join("run/kitfleet/node.json");
    let log_path = tmp.path().join("agent.log");
    let args = [
        "mesh",
        "--node-name",
        "me",
        "--interface",
        DEV,
        "--nodes-dir",
        dir.to_str().unwrap(),
        "--nodes-dir-poll-ms",
        "100",
        "--resync-ms",
        "200",
        "--key-file",
        key.to_str().unwrap(),
        "--state-file",
        state.to_str().unwrap(),
        "--cluster-cidr",
        "10.244.0.0/16",
    ];
    let mut agent = Proc(
        in_ns(n, AGENT, &args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while !routes_proto75(n).contains("10.244.2.0/24") && start.elapsed() < Duration::from_secs(15)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        routes_proto75(n).contains("10.244.2.0/24"),
        "the mesh never routed the peer; log:\n{}",
        log()
    );
    assert!(agent.stop().is_some_and(|s| s.success()), "{}", log());
    // What stays after the agent stops: its TUN with its route, its key and state file.
    assert!(ns_output(n, "ip", &["link", "show", DEV]).is_ok());
    assert!(state.exists() && key.exists());

    // A tagged route on another interface (an older agent, say) goes too; someone else's route stays.
    ip(&[
        "-n",
        n,
        "route",
        "add",
        "10.244.9.0/24",
        "dev",
        "eth0",
        "proto",
        "75",
        "scope",
        "link",
    ])
    .unwrap();
    ip(&["-n", n, "route", "add", "10.99.0.0/16", "dev", "eth0"]).unwrap();
    // The plugin's masquerade table (as the plugin writes it) and someone else's table.
    let script = kitfleet_cni_wg::nft::script(
        "kitfleet",
        "10.244.1.0/24".parse().unwrap(),
        &["10.244.0.0/16".parse().unwrap()],
    )
    .unwrap();
    let mut nft = in_ns(n, "nft", &["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut nft.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(nft.wait().unwrap().success());
    ns_output(n, "nft", &["add", "table", "ip", "someone_else"]).unwrap();

    let t = Instant::now();
    let out = cleanup(n, &root);
    let took = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for removed in [
        format!("removed interface {DEV}"),
        "removed route 10.244.9.0/24 proto 75".into(),
        "removed nft table ip kitfleet_wg_kitfleet".into(),
        "removed /etc/cni/net.d/10-kitfleet.conflist".into(),
        "removed /opt/cni/bin/kitfleet-wg".into(),
        "removed /run/kitfleet".into(),
        "removed /var/lib/kitfleet".into(),
        "removed /var/log/kitfleet-wg.log".into(),
    ] {
        assert!(stdout.contains(&removed), "no {removed:?} in:\n{stdout}");
    }
    assert!(ns_output(n, "ip", &["link", "show", DEV]).is_err());
    assert_eq!(routes_proto75(n), "", "tagged routes left");
    let all = ns_output(n, "ip", &["route", "show"]).unwrap();
    assert!(all.contains("10.99.0.0/16 dev eth0"), "{all}");
    let tables = ns_output(n, "nft", &["list", "tables"]).unwrap();
    assert!(!tables.contains("kitfleet_wg_kitfleet"), "{tables}");
    assert!(tables.contains("table ip someone_else"), "{tables}");
    for gone in [
        "/etc/cni/net.d/10-kitfleet.conflist",
        "/opt/cni/bin/kitfleet-wg",
        "/run/kitfleet",
        "/var/lib/kitfleet",
        "/var/log/kitfleet-wg.log",
    ] {
        assert!(!exists(&root, gone), "{gone} left");
    }
    for kept in [
        "/etc/cni/net.d/99-other.conflist",
        "/opt/cni/bin/portmap",
        "/var/log/other.log",
        "/var/lib/cni/other/x",
    ] {
        assert!(exists(&root, kept), "{kept} removed");
    }

    // Idempotent: nothing left, and it says so.
    let again = cleanup(n, &root);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(stdout.contains("nothing left to remove"), "{stdout}");
    eprintln!("cleanup took {} ms (second run: no-op)", took.as_millis());
}
