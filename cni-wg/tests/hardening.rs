//! Regression tests for the security review of issue 12 (items 1 and 6, the CNI plugin's part),
//! against the real kernel in throwaway namespaces. Each reproduced its finding before the fix.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{Value, json};

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn state(pod: Value, cluster: Value) -> Value {
    json!({"podCIDRs": pod, "mtu": 1420, "meshHealthy": true, "clusterCIDRs": cluster,
        "wgInterface": "kfwg0", "heartbeat": now_unix()})
}

fn msg(out: &CniOut) -> String {
    out.stdout["msg"].as_str().unwrap_or_default().to_string()
        + " "
        + out.stdout["details"].as_str().unwrap_or_default()
}

fn kitfleet_tables(node: &Node) -> Vec<String> {
    let out = node.ns.exec(&["nft", "list", "tables"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("table ip "))
        .filter(|t| t.starts_with("kitfleet_wg_"))
        .map(str::to_string)
        .collect()
}

/// Item 1: a pod CIDR (from the state file or the conflist override) outside the cluster CIDRs
/// is refused, and so is a cluster CIDR list that bounds nothing; nothing is created, and no
/// masquerade set is built from it.
#[test]
fn pod_cidr_outside_the_cluster_cidrs_is_refused() {
    if !privileged() {
        return;
    }
    let node = Node::new("10.244.21.0/24");
    let pod = Netns::new("bound");
    let path = pod.path();
    let mut conf = node.conf("1.1.0");
    conf["masquerade"] = json!(true);
    let cases = [
        // (state podCIDRs, state clusterCIDRs, conflist podCIDR, field named)
        (
            json!(["0.0.0.0/0"]),
            json!(["10.244.0.0/16"]),
            None,
            "podCIDRs[0]",
        ),
        (
            json!(["192.168.77.0/24"]),
            json!(["10.244.0.0/16"]),
            None,
            "podCIDRs[0]",
        ),
        (
            json!(["10.244.21.0/24"]),
            json!(["10.244.0.0/16"]),
            Some("198.51.100.0/24"),
            "podCIDR:",
        ),
        (
            json!(["10.244.21.0/24"]),
            json!(["10.244.0.0/16"]),
            Some("0.0.0.0/0"),
            "podCIDR:",
        ),
        (json!(["10.244.21.0/24"]), json!([]), None, "clusterCIDRs"),
        (
            json!(["10.244.21.0/24"]),
            json!(["0.0.0.0/0"]),
            None,
            "clusterCIDRs[0]",
        ),
    ];
    for (pods, cluster, over, field) in cases {
        node.write_state(state(pods.clone(), cluster.clone()));
        let mut c = conf.clone();
        if let Some(o) = over {
            c["podCIDR"] = json!(o);
        }
        let out = node.cni(&Invocation::new("ADD", c.clone()).attach("bound", &path));
        assert!(
            !out.ok,
            "ADD accepted podCIDRs={pods} clusterCIDRs={cluster} podCIDR={over:?}: {}",
            out.stdout
        );
        assert!(msg(&out).contains(field), "{field}: {}", out.stdout);
        assert!(
            node.reserved().is_empty() && node.host_veths().is_empty() && !pod.has_link("eth0"),
            "{field}: something was created"
        );
        assert!(
            kitfleet_tables(&node).is_empty(),
            "{field}: a masquerade table was built from an unbounded CIDR"
        );
        let mut s = c.clone();
        s["cniVersion"] = json!("1.1.0");
        node.cni(&Invocation::new("STATUS", s)).expect_code(50);
    }
    // Inside the bounds: accepted, and the masquerade set holds the cluster CIDRs only.
    node.write_state(state(json!(["10.244.21.0/24"]), json!(["10.244.0.0/16"])));
    node.cni(&Invocation::new("ADD", conf.clone()).attach("bound", &path))
        .expect_ok();
    let set = node
        .ns
        .exec(&["nft", "list", "set", "ip", "kitfleet_wg_kfwtest", "cluster"]);
    let set = String::from_utf8_lossy(&set.stdout);
    assert!(set.contains("elements = { 10.244.0.0/16 }"), "{set}");
    node.cni(&Invocation::new("DEL", conf).attach("bound", &path))
        .expect_ok();
}

fn ifindex(node: &Node, name: &str) -> i64 {
    node.ns.ip_json(&["link", "show", name])[0]["ifindex"]
        .as_i64()
        .unwrap()
}

/// Item 6: a pending-deletion marker names a link by ifindex; GC and the reaper used to delete
/// whatever link had that index. Now the name and kind must match, and a marker from another
/// boot only gets removed.
#[test]
fn dying_markers_never_delete_an_unrelated_link() {
    if !privileged() {
        return;
    }
    let node = Node::new("10.244.22.0/24");
    let dying = node.data_dir().join("kfwtest/dying");
    std::fs::create_dir_all(&dying).unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let boot = boot.trim();
    let mut gc = node.conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);

    // Markers whose index now belongs to an unrelated link: another name (a veth), or the
    // right name but another kind (a TUN device).
    sh(&[
        "ip",
        "-n",
        &node.ns.name,
        "link",
        "add",
        "unrelated0",
        "type",
        "veth",
        "peer",
        "name",
        "unrelated1",
    ]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &node.ns.name,
        "ip",
        "tuntap",
        "add",
        "name",
        "kfw0123456789ab",
        "mode",
        "tun",
    ]);
    for (link, marker_name) in [
        ("unrelated0", "kfw0123456789ab"),
        ("kfw0123456789ab", "kfw0123456789ab"),
    ] {
        let marker = dying.join(format!("{marker_name}@{}", ifindex(&node, link)));
        std::fs::write(&marker, boot).unwrap();
        node.cni(&Invocation::new("GC", gc.clone())).expect_ok();
        assert!(
            node.ns.has_link(link),
            "GC deleted an unrelated link ({link})"
        );
        assert!(!marker.exists(), "the stale marker stays");
    }
    let idx = ifindex(&node, "unrelated0");
    let marker = dying.join(format!("kfw0123456789ab@{idx}"));

    // The reaper, given such a marker, leaves the link alone too.
    std::fs::write(&marker, boot).unwrap();
    let mut inv = Invocation::new("DEL", json!({}));
    inv.extra_env = vec![
        ("KITFLEET_WG_REAP".into(), idx.to_string()),
        (
            "KITFLEET_WG_REAP_MARKER".into(),
            marker.to_string_lossy().into_owned(),
        ),
    ];
    let _ = node.cni(&inv);
    assert!(
        node.ns.has_link("unrelated0"),
        "the reaper deleted an unrelated link"
    );

    // Same name and kind, but the marker is from an earlier boot (ifindexes restart at boot;
    // the live link belongs to an attachment re-ADDed since): left alone.
    sh(&[
        "ip",
        "-n",
        &node.ns.name,
        "link",
        "add",
        "kfwfedcba987654",
        "type",
        "veth",
        "peer",
        "name",
        "kfwpeer0",
    ]);
    let idx = ifindex(&node, "kfwfedcba987654");
    for content in ["", "00000000-0000-0000-0000-000000000000"] {
        let marker = dying.join(format!("kfwfedcba987654@{idx}"));
        std::fs::write(&marker, content).unwrap();
        node.cni(&Invocation::new("GC", gc.clone())).expect_ok();
        assert!(
            node.ns.has_link("kfwfedcba987654"),
            "GC deleted a live link through a marker of another boot ({content:?})"
        );
        assert!(!marker.exists());
    }
    // A marker of this boot that matches name and kind is finished.
    let marker = dying.join(format!("kfwfedcba987654@{idx}"));
    std::fs::write(&marker, boot).unwrap();
    node.cni(&Invocation::new("GC", gc)).expect_ok();
    assert!(!node.ns.has_link("kfwfedcba987654") && !marker.exists());
}

/// Item 6: ADD re-applies the masquerade table after `nft flush ruleset` (the marker file said
/// "applied", so ADD skipped it until the next GC).
#[test]
fn add_reapplies_masquerade_after_a_ruleset_flush() {
    if !privileged() {
        return;
    }
    let node = Node::new("10.244.23.0/24");
    let mut conf = node.conf("1.0.0");
    conf["masquerade"] = json!(true);
    let (p1, p2) = (Netns::new("flush"), Netns::new("flush"));
    node.cni(&Invocation::new("ADD", conf.clone()).attach("f1", &p1.path()))
        .expect_ok();
    assert_eq!(kitfleet_tables(&node), vec!["kitfleet_wg_kfwtest"]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &node.ns.name,
        "nft",
        "flush",
        "ruleset",
    ]);
    assert!(kitfleet_tables(&node).is_empty());
    node.cni(&Invocation::new("ADD", conf.clone()).attach("f2", &p2.path()))
        .expect_ok();
    assert_eq!(
        kitfleet_tables(&node),
        vec!["kitfleet_wg_kfwtest"],
        "the second ADD did not restore the flushed masquerade table"
    );
    for (id, p) in [("f1", &p1), ("f2", &p2)] {
        node.cni(&Invocation::new("DEL", conf.clone()).attach(id, &p.path()))
            .expect_ok();
    }
}

/// Item 6: networks `a-b`, `a_b` and `a.b` each get their own nft table (the names used to
/// collapse to `kitfleet_wg_a_b`, so each ADD replaced the others' masquerade rule).
#[test]
fn networks_differing_in_punctuation_get_their_own_tables() {
    if !privileged() {
        return;
    }
    let node = Node::new("10.244.24.0/24");
    let nets = [
        ("a-b", "10.244.31.0/24"),
        ("a_b", "10.244.32.0/24"),
        ("a.b", "10.244.33.0/24"),
    ];
    let pods: Vec<Netns> = nets.iter().map(|_| Netns::new("tbl")).collect();
    for ((name, cidr), pod) in nets.iter().zip(&pods) {
        let mut c = node.conf("1.0.0");
        c["name"] = json!(name);
        c["masquerade"] = json!(true);
        c["podCIDR"] = json!(cidr);
        node.cni(&Invocation::new("ADD", c).attach(name, &pod.path()))
            .expect_ok();
    }
    let mut tables = kitfleet_tables(&node);
    tables.sort();
    assert_eq!(tables.len(), 3, "{tables:?}");
    let ruleset =
        String::from_utf8_lossy(&node.ns.exec(&["nft", "list", "ruleset"]).stdout).into_owned();
    for (_, cidr) in nets {
        assert!(
            ruleset.contains(&format!("ip saddr {cidr}")),
            "{cidr} lost its masquerade rule:\n{ruleset}"
        );
    }
}

/// Runs the plugin under `strace -f` in the node namespace; returns the trace.
fn strace_plugin(node: &Node, inv: &Invocation<'_>, trace: &Path) -> CniOut {
    let mut cmd = command("strace", inv);
    cmd.args([
        "-f",
        "-qq",
        "-e",
        "trace=openat,fsync,fdatasync,close",
        "-o",
        &trace.to_string_lossy(),
        PLUGIN,
    ]);
    let stdin = inv.conf.to_string();
    let out = kitfleet_cni_wg::netns::run_in(&node.ns.file(), move || {
        let mut child = cmd.spawn()?;
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin.as_bytes())?;
        child.wait_with_output()
    })
    .unwrap()
    .unwrap();
    CniOut {
        ok: out.status.success(),
        stdout: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Paths that were fsynced/fdatasynced (through an fd opened by `openat`) in an strace log.
fn synced_paths(trace: &str) -> Vec<String> {
    let mut open: std::collections::HashMap<(String, String), String> = Default::default();
    let mut synced = Vec::new();
    for l in trace.lines() {
        let Some((pid, call)) = l.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        if let Some(rest) = call.strip_prefix("openat(") {
            let path = rest.split('"').nth(1).unwrap_or_default().to_string();
            if let Some(fd) = rest
                .rsplit("= ")
                .next()
                .and_then(|f| f.trim().parse::<i32>().ok())
            {
                open.insert((pid.into(), fd.to_string()), path);
            }
        } else if let Some(rest) = call
            .strip_prefix("fsync(")
            .or_else(|| call.strip_prefix("fdatasync("))
        {
            let fd = rest.split(')').next().unwrap_or_default();
            if let Some(p) = open.get(&(pid.into(), fd.into())) {
                synced.push(p.clone());
            }
        } else if let Some(rest) = call.strip_prefix("close(") {
            let fd = rest.split(')').next().unwrap_or_default();
            open.remove(&(pid.into(), fd.into()));
        }
    }
    synced
}

/// Item 6: the reservation record and its directory entry are fsynced before ADD goes on.
#[test]
fn ipam_records_are_fsynced() {
    if !privileged() {
        return;
    }
    let node = Node::new("10.244.25.0/24");
    let pod = Netns::new("sync");
    let trace = node.dir.path().join("strace.log");
    let conf = node.conf("1.0.0");
    let out = strace_plugin(
        &node,
        &Invocation::new("ADD", conf.clone()).attach("sync", &pod.path()),
        &trace,
    );
    let res = out.expect_ok().clone();
    let ip = res["ips"][0]["address"]
        .as_str()
        .unwrap()
        .trim_end_matches("/32");
    let dir = node.data_dir().join("kfwtest");
    let synced = synced_paths(&std::fs::read_to_string(&trace).unwrap());
    let record = dir.join(ip).to_string_lossy().into_owned();
    assert!(
        synced.contains(&record),
        "record {record} not fsynced: {synced:?}"
    );
    let d = dir.to_string_lossy().into_owned();
    assert!(synced.contains(&d), "directory {d} not fsynced: {synced:?}");
    node.cni(&Invocation::new("DEL", conf).attach("sync", &pod.path()))
        .expect_ok();
}

/// Runs the plugin, killing it after `limit`; returns its output or `None` if it had to be killed.
fn run_with_timeout(node: &Node, inv: &Invocation<'_>, limit: Duration) -> Option<CniOut> {
    let cmd = command(PLUGIN, inv);
    let stdin = inv.conf.to_string();
    let out = kitfleet_cni_wg::netns::run_in(&node.ns.file(), move || {
        let mut cmd = cmd;
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let t = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(child.wait_with_output().unwrap())
    })
    .unwrap()?;
    Some(CniOut {
        ok: out.status.success(),
        stdout: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Item 6: a FIFO as `CNI_NETNS` is refused at once (opening it for reading used to block until
/// a writer came, forever).
#[test]
fn a_fifo_as_cni_netns_is_refused_not_waited_on() {
    if !privileged() {
        return;
    }
    let node = Node::new("10.244.26.0/24");
    let fifo = node.dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fifo = fifo.to_string_lossy().into_owned();
    let regular = node.dir.path().join("plain");
    std::fs::write(&regular, b"").unwrap();
    let regular = regular.to_string_lossy().into_owned();
    for path in [&fifo, &regular] {
        for verb in ["ADD", "CHECK"] {
            let mut conf = node.conf("1.0.0");
            if verb == "CHECK" {
                conf["prevResult"] = json!({"cniVersion": "1.0.0",
                    "interfaces": [{"name": "eth0", "sandbox": path, "mac": "0a:58:0a:f4:1a:02"}],
                    "ips": [{"address": "10.244.26.2/32", "gateway": "169.254.1.1", "interface": 0}]});
            }
            let inv = Invocation::new(verb, conf).attach("fifo", path);
            let out = run_with_timeout(&node, &inv, Duration::from_secs(5))
                .unwrap_or_else(|| panic!("{verb} with CNI_NETNS={path} hung (killed after 5 s)"));
            assert!(!out.ok, "{verb} {path}: {}", out.stdout);
            assert!(
                msg(&out).contains("CNI_NETNS"),
                "{verb} {path}: {}",
                out.stdout
            );
        }
    }
    assert!(node.reserved().is_empty() && node.host_veths().is_empty());
}

/// Item 6: the state file carries a heartbeat; STATUS treats a stale one as mesh down (51), as a
/// SIGKILLed agent leaves `meshHealthy: true` behind.
#[test]
fn a_stale_heartbeat_is_mesh_down() {
    if !privileged() {
        return;
    }
    let node = Node::new("10.244.27.0/24");
    let status = Invocation::new("STATUS", node.conf("1.1.0"));
    let mut s = state(json!(["10.244.27.0/24"]), json!(["10.244.0.0/16"]));
    node.write_state(s.clone());
    node.cni(&status).expect_ok();
    for stale in [now_unix() - 3600, now_unix() + 3600] {
        s["heartbeat"] = json!(stale);
        node.write_state(s.clone());
        let out = node.cni(&status);
        out.expect_code(51);
        assert!(msg(&out).contains("heartbeat"), "{}", out.stdout);
    }
    s["heartbeat"] = json!(now_unix());
    node.write_state(s);
    node.cni(&status).expect_ok();
}

/// Takes the IPAM store lock without waiting; true if it was free.
fn lock_is_free(node: &Node) -> bool {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(node.data_dir().join("kfwtest/lock"))
        .unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
}

/// Item 6: ADD holds the IPAM lock until the links exist and are configured (a concurrent DEL or
/// GC used to release the address of an ADD still in progress).
#[test]
fn ipam_lock_is_held_until_the_links_exist() {
    if !privileged() {
        return;
    }
    let node = Node::new("10.244.28.0/24");
    for point in ["after-reserve", "after-veth", "after-host-route"] {
        let pod = Netns::new("lock");
        let mut inv = Invocation::new("ADD", node.conf("1.1.0")).attach("lock", "");
        let path = pod.path();
        inv.netns = &path;
        inv.extra_env
            .push(("KITFLEET_WG_TEST_HANG".into(), point.into()));
        let mut child = {
            let cmd = command(PLUGIN, &inv);
            let stdin = inv.conf.to_string();
            kitfleet_cni_wg::netns::run_in(&node.ns.file(), move || {
                let mut cmd = cmd;
                let mut c = cmd.stderr(Stdio::piped()).spawn().unwrap();
                use std::io::Write;
                c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
                c
            })
            .unwrap()
        };
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("hanging at") {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "ADD ended early");
        }
        let free = lock_is_free(&node);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            !free,
            "{point}: the IPAM lock was free while ADD was in progress"
        );
        let mut gc = node.conf("1.1.0");
        gc["cni.dev/valid-attachments"] = json!([]);
        node.cni(&Invocation::new("GC", gc)).expect_ok();
        assert!(node.reserved().is_empty() && node.host_veths().is_empty());
    }
}
