//! Route hijack through Node objects (issue 12, item 1): Nodes claiming the underlay subnet, the
//! default route (while this node has no podCIDR yet), the metadata address or a prefix someone else
//! already routes must not change a single existing route. The agent binary runs for real in a
//! throwaway namespace with a default route, an underlay subnet and foreign routes.
//! Needs root, TUN and netns: fails under CI=true without them, skips with a message otherwise.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kitfleet_dataplane::PrivateKey;
use kitfleet_node_agent::mesh::nodes::ANNOTATION_PUBLIC_KEY;
use kitfleet_testbed::netns::{Proc, in_ns, ip, ns_output, require_privileges};

const AGENT: &str = env!("CARGO_BIN_EXE_kitfleet-node-agent");
const DEV: &str = "kfrh0";

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// A Node manifest: name, podCIDR (none if empty), InternalIP and a fresh public key unless `me`.
fn node(name: &str, cidr: &str, internal_ip: &str, me: bool) -> serde_json::Value {
    let mut n = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "spec": {},
        "status": {"addresses": [{"type": "InternalIP", "address": internal_ip}]}
    });
    if !cidr.is_empty() {
        n["spec"] = serde_json::json!({"podCIDR": cidr, "podCIDRs": [cidr]});
    }
    if !me {
        let key = PrivateKey::generate().unwrap().public_key().to_string();
        n["metadata"]["annotations"] = serde_json::json!({ ANNOTATION_PUBLIC_KEY: key });
    }
    n
}

/// The log without terminal colour codes (`ESC [ … m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn routes(ns: &str) -> BTreeSet<String> {
    let v4 = ns_output(ns, "ip", &["-4", "route", "show", "table", "all"]).unwrap();
    let v6 = ns_output(ns, "ip", &["-6", "route", "show", "table", "all"]).unwrap();
    v4.lines().chain(v6.lines()).map(str::to_string).collect()
}

fn agent_routes(ns: &str) -> BTreeSet<String> {
    ns_output(ns, "ip", &["route", "show", "dev", DEV, "proto", "75"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn nodes_cannot_hijack_routes() {
    if !require_privileges("nodes_cannot_hijack_routes") {
        return;
    }
    let ns = Ns(format!("h3rh{}", std::process::id() % 10000));
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
    ip(&["-n", n, "addr", "add", "192.168.230.1/24", "dev", "eth0"]).unwrap();
    ip(&["-n", n, "link", "set", "eth0", "up"]).unwrap();
    ip(&["-n", n, "link", "set", "gw0", "up"]).unwrap();
    ip(&["-n", n, "route", "add", "default", "via", "192.168.230.254"]).unwrap();
    // Someone else's routes inside the cluster CIDR: one at the default metric, one at metric 100.
    ip(&[
        "-n",
        n,
        "route",
        "add",
        "10.244.3.0/24",
        "via",
        "192.168.230.253",
    ])
    .unwrap();
    ip(&[
        "-n",
        n,
        "route",
        "add",
        "10.244.4.0/24",
        "via",
        "192.168.230.253",
        "metric",
        "100",
    ])
    .unwrap();
    let before = routes(n);

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nodes");
    std::fs::create_dir_all(&dir).unwrap();
    let nodes = [
        // This node has no podCIDR yet.
        node("me", "", "192.168.230.1", true),
        node("a-default", "0.0.0.0/0", "192.168.230.11", false),
        node("b-underlay", "192.168.230.0/24", "192.168.230.12", false),
        node("c-metadata", "169.254.169.254/32", "192.168.230.13", false),
        node("d-taken", "10.244.3.0/24", "192.168.230.14", false),
        node("e-taken-metric", "10.244.4.0/24", "192.168.230.15", false),
        node(
            "f-local-address",
            "192.168.230.1/32",
            "192.168.230.16",
            false,
        ),
        node("g-good", "10.244.2.0/24", "192.168.230.17", false),
        node("h-inside", "192.168.77.0/24", "192.168.230.18", false),
    ];
    for nd in &nodes {
        let name = nd["metadata"]["name"].as_str().unwrap();
        std::fs::write(dir.join(format!("{name}.json")), nd.to_string()).unwrap();
    }
    let log_path = tmp.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (key, state) = (tmp.path().join("wg.key"), tmp.path().join("node.json"));
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
        // A misconfigured cluster CIDR that covers the underlay: the route checks must still hold.
        "--cluster-cidr",
        "10.244.0.0/16",
        "--cluster-cidr",
        "192.168.0.0/16",
    ];
    let mut agent = Proc(
        in_ns(n, AGENT, &args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // Until the good peer's route appears (or 15 s: the checks below then say what went wrong).
    let start = Instant::now();
    while !agent_routes(n).contains("10.244.2.0/24") && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    // A few resyncs (routes "removed behind its back" are re-added there).
    std::thread::sleep(Duration::from_millis(1000));
    let after = routes(n);
    let log = strip_ansi(&std::fs::read_to_string(&log_path).unwrap_or_default());
    let lost: Vec<&String> = before.difference(&after).collect();
    assert!(
        lost.is_empty(),
        "existing routes were replaced or deleted: {lost:?}\nafter: {after:#?}\nlog:\n{log}"
    );
    let get = ns_output(n, "ip", &["route", "get", "169.254.169.254"]).unwrap();
    assert!(
        get.contains("via 192.168.230.254 dev eth0"),
        "metadata address hijacked: {get}"
    );
    let get = ns_output(n, "ip", &["route", "get", "8.8.8.8"]).unwrap();
    assert!(
        get.contains("via 192.168.230.254 dev eth0"),
        "default route hijacked: {get}"
    );
    let get = ns_output(n, "ip", &["route", "get", "10.244.4.9"]).unwrap();
    assert!(
        get.contains("via 192.168.230.253 dev eth0"),
        "foreign route shadowed: {get}"
    );
    assert_eq!(
        agent_routes(n),
        BTreeSet::from(["10.244.2.0/24".to_string(), "192.168.77.0/24".to_string()]),
        "only prefixes inside the cluster CIDRs that no one else routes; log:\n{log}"
    );
    // Every skip is logged with the node, the prefix and why.
    for (node, prefix) in [
        ("a-default", "0.0.0.0/0"),
        ("b-underlay", "192.168.230.0/24"),
        ("c-metadata", "169.254.169.254/32"),
        ("d-taken", "10.244.3.0/24"),
        ("e-taken-metric", "10.244.4.0/24"),
        ("f-local-address", "192.168.230.1/32"),
    ] {
        assert!(
            log.lines().any(|l| l.contains("prefix skipped")
                && l.contains(&format!("node={node}"))
                && l.contains(&format!("prefix={prefix}"))),
            "no skip line for {node} {prefix}; log:\n{log}"
        );
    }
    assert!(agent.stop().is_some_and(|s| s.success()), "log:\n{log}");
    // The agent's TUN is persistent: remove it with the namespace (dropped below).
}

#[test]
fn cluster_cidrs_are_required_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let base = [
        "mesh",
        "--node-name",
        "me",
        "--nodes-dir",
        tmp.path().to_str().unwrap(),
    ];
    for (extra, why) in [
        (&[][..], "--cluster-cidr"),
        (&["--cluster-cidr", "0.0.0.0/0"][..], "0.0.0.0/0"),
        (&["--cluster-cidr", "::/0"][..], "::/0"),
        (&["--cluster-cidr", "169.254.0.0/16"][..], "link-local"),
        (&["--cluster-cidr", "127.0.0.0/8"][..], "loopback"),
        (&["--cluster-cidr", "10.0.0.0/33"][..], "10.0.0.0/33"),
    ] {
        let child = std::process::Command::new(AGENT)
            .args(base)
            .args(extra)
            .env_remove("KITFLEET_CLUSTER_CIDRS")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // An agent that accepts the configuration waits for its Node forever: stop it.
        let mut child = Proc(child);
        let start = Instant::now();
        while child.0.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = match child.0.try_wait().unwrap() {
            Some(s) => s,
            None => {
                child.stop();
                panic!("{extra:?}: the agent accepted this configuration");
            }
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(why), "{extra:?}: {err}");
    }
}
