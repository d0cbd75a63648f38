//! 100 parallel ADDs then DELs; killed ADDs reclaimed by GC.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::*;
use serde_json::json;

#[test]
fn hundred_parallel_adds_then_dels_no_duplicate_no_leak() {
    if !privileged() {
        return;
    }
    const N: usize = 100;
    let node = Node::new("10.244.10.0/24");
    let pods: Vec<Netns> = (0..N).map(|_| Netns::new("par")).collect();
    let conf = node.conf("1.1.0");
    let ids: Vec<String> = (0..N).map(|i| format!("par{i}")).collect();
    let paths: Vec<String> = pods.iter().map(Netns::path).collect();
    let ips: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..N)
            .map(|i| {
                let (node, conf, id, path) = (&node, conf.clone(), &ids[i], &paths[i]);
                s.spawn(move || {
                    let res = node.cni(&Invocation::new("ADD", conf).attach(id, path));
                    res.expect_ok()["ips"][0]["address"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let unique: HashSet<&String> = ips.iter().collect();
    assert_eq!(unique.len(), N, "duplicate addresses handed out: {ips:?}");
    assert_eq!(node.reserved().len(), N);
    assert_eq!(node.host_veths().len(), N);
    // Each pod really holds the address its result names.
    for (pod, ip) in pods.iter().zip(&ips) {
        let a = pod.ip_json(&["-4", "addr", "show", "dev", "eth0"]);
        let local = a[0]["addr_info"][0]["local"].as_str().unwrap();
        assert_eq!(format!("{local}/32"), *ip);
    }
    std::thread::scope(|s| {
        for i in 0..N {
            let (node, conf, id, path) = (&node, conf.clone(), &ids[i], &paths[i]);
            s.spawn(move || {
                node.cni(&Invocation::new("DEL", conf).attach(id, path))
                    .expect_ok()
                    .clone()
            });
        }
    });
    assert!(node.reserved().is_empty(), "leaked: {:?}", node.reserved());
    eventually("host veths gone", || node.host_veths().is_empty());
    assert!(pods.iter().all(|p| !p.has_link("eth0")));
}

/// Starts an ADD that hangs at `point` (fault injection), waits until it is there, kills it.
fn kill_add_at(node: &Node, pod: &Netns, id: &str, point: &str) {
    let mut inv = Invocation::new("ADD", node.conf("1.1.0")).attach(id, "");
    let path = pod.path();
    inv.netns = &path;
    inv.extra_env
        .push(("KITFLEET_WG_TEST_HANG".into(), point.into()));
    let mut cmd = command(PLUGIN, &inv);
    let stdin = inv.conf.to_string();
    let mut child =
        kitfleet_cni_wg::netns::run_in(&node.ns.file(), move || cmd.stdin(Stdio::piped()).spawn())
            .unwrap()
            .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("hanging at") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "plugin exited before reaching {point}"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn gc_reclaims_what_killed_adds_left() {
    if !privileged() {
        return;
    }
    let node = Node::new("10.244.11.0/24");
    let keep = Netns::new("keep");
    let kept = node
        .cni(&Invocation::new("ADD", node.conf("1.1.0")).attach("keep", &keep.path()))
        .expect_ok()
        .clone();
    let p1 = Netns::new("kill");
    let p2 = Netns::new("kill");
    kill_add_at(&node, &p1, "k1", "after-reserve");
    kill_add_at(&node, &p2, "k2", "after-veth");
    assert_eq!(
        node.reserved().len(),
        3,
        "killed ADDs hold their reservation until GC"
    );
    assert_eq!(
        node.host_veths().len(),
        2,
        "the ADD killed after veth creation left its veth"
    );
    assert!(p2.has_link("eth0"));
    // Killed ADDs never wedge the store: a new ADD goes through (the lock died with them).
    let p3 = Netns::new("after");
    node.cni(&Invocation::new("ADD", node.conf("1.1.0")).attach("after", &p3.path()))
        .expect_ok();
    let mut gc = node.conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}, {"containerID": "after", "ifname": "eth0"}]);
    node.cni(&Invocation::new("GC", gc)).expect_ok();
    assert_eq!(node.reserved().len(), 2, "{:?}", node.reserved());
    assert_eq!(node.host_veths().len(), 2);
    assert!(!p2.has_link("eth0"), "GC removes the killed ADD's veth");
    // A DEL whose reaper died leaves a dying marker: GC finishes the deletion.
    let host_if = kept["interfaces"][0]["name"].as_str().unwrap().to_string();
    let p4 = Netns::new("dying");
    let res4 = node
        .cni(&Invocation::new("ADD", node.conf("1.1.0")).attach("dying", &p4.path()))
        .expect_ok()
        .clone();
    let dying_if = res4["interfaces"][0]["name"].as_str().unwrap();
    let ip4 = res4["ips"][0]["address"]
        .as_str()
        .unwrap()
        .trim_end_matches("/32");
    let dir = node.data_dir().join("kfwtest");
    std::fs::remove_file(dir.join(ip4)).unwrap();
    std::fs::create_dir_all(dir.join("dying")).unwrap();
    let index = node.ns.ip_json(&["link", "show", dying_if])[0]["ifindex"]
        .as_i64()
        .unwrap();
    let marker = dir.join("dying").join(format!("{dying_if}@{index}"));
    // What DEL writes: the boot ID (a marker of another boot is only removed).
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    std::fs::write(&marker, boot.trim()).unwrap();
    let mut gc = node.conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}, {"containerID": "after", "ifname": "eth0"}]);
    node.cni(&Invocation::new("GC", gc)).expect_ok();
    assert!(!node.ns.has_link(dying_if) && node.ns.has_link(&host_if));
    assert!(!marker.exists());
    // The surviving attachment is intact.
    let check = with_prev(node.conf("1.1.0"), &kept);
    node.cni(&Invocation::new("CHECK", check).attach("keep", &keep.path()))
        .expect_ok();
}

#[test]
fn randomly_killed_adds_leave_nothing_gc_cannot_reclaim() {
    if !privileged() {
        return;
    }
    let node = Node::new("10.244.12.0/24");
    let mut pods = Vec::new();
    // Kill ADDs at staggered moments across their whole run.
    for i in 0..30u64 {
        let pod = Netns::new("rk");
        let id = format!("rk{i}");
        let inv = Invocation::new("ADD", node.conf("1.1.0")).attach(&id, "");
        let path = pod.path();
        let inv = Invocation {
            netns: &path,
            ..inv
        };
        let mut cmd = command(PLUGIN, &inv);
        let stdin = inv.conf.to_string();
        let mut child = kitfleet_cni_wg::netns::run_in(&node.ns.file(), move || cmd.spawn())
            .unwrap()
            .unwrap();
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        std::thread::sleep(std::time::Duration::from_micros(i * 150));
        let _ = child.kill();
        child.wait().unwrap();
        pods.push(pod);
    }
    let mut gc = node.conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    node.cni(&Invocation::new("GC", gc)).expect_ok();
    assert!(node.reserved().is_empty(), "{:?}", node.reserved());
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    assert!(pods.iter().all(|p| !p.has_link("eth0")));
}

#[test]
fn a_late_reaper_never_deletes_the_link_of_a_quick_re_add() {
    if !privileged() {
        return;
    }
    let node = Node::new("10.244.13.0/24");
    let pod = Netns::new("readd");
    let path = pod.path();
    let conf = node.conf("1.1.0");
    node.cni(&Invocation::new("ADD", conf.clone()).attach("readd", &path))
        .expect_ok();
    // DEL whose reaper starts late, then ADD of the same attachment at once (podman stop+start).
    let mut del = Invocation::new("DEL", conf.clone()).attach("readd", &path);
    del.extra_env
        .push(("KITFLEET_WG_TEST_REAP_DELAY_MS".into(), "400".into()));
    node.cni(&del).expect_ok();
    let res = node
        .cni(&Invocation::new("ADD", conf.clone()).attach("readd", &path))
        .expect_ok()
        .clone();
    std::thread::sleep(std::time::Duration::from_millis(800));
    let check = with_prev(conf.clone(), &res);
    node.cni(&Invocation::new("CHECK", check).attach("readd", &path))
        .expect_ok();
    assert!(
        node.data_dir()
            .join("kfwtest/dying")
            .read_dir()
            .unwrap()
            .next()
            .is_none()
    );
    node.cni(&Invocation::new("DEL", conf).attach("readd", &path))
        .expect_ok();
    eventually("host veth gone", || node.host_veths().is_empty());
}
