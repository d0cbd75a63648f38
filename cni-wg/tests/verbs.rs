//! Every verb × every spec version against the real kernel, in throwaway namespaces, by
//! exec'ing the built plugin like a runtime does.

mod common;

use common::*;
use serde_json::{Value, json};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn ge(v: &str, min: &str) -> bool {
    let p = |s: &str| {
        s.split('.')
            .map(|x| x.parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    p(v) >= p(min)
}

#[test]
fn every_verb_in_every_version() {
    if !privileged() {
        return;
    }
    for v in VERSIONS {
        verbs_for(v);
    }
}

fn verbs_for(v: &str) {
    let node = Node::new("10.244.1.0/24");
    let pod = Netns::new("pod");
    let conf = node.conf(v);
    let path = pod.path();

    // VERSION
    let out = node.cni(&Invocation::new("VERSION", json!({"cniVersion": v})));
    assert_eq!(out.expect_ok()["cniVersion"], v);
    assert_eq!(out.stdout["supportedVersions"].as_array().unwrap().len(), 5);

    // ADD
    let add = Invocation::new("ADD", conf.clone()).attach("ctr1", &path);
    let res = node.cni(&add).expect_ok().clone();
    assert_eq!(res["cniVersion"], v, "{res}");
    let ip = res["ips"][0]["address"].as_str().unwrap().to_string();
    assert_eq!(ip, "10.244.1.2/32");
    assert_eq!(
        res["ips"][0].get("version").is_some(),
        !ge(v, "1.0.0"),
        "{v}: {res}"
    );
    assert_eq!(
        res["routes"][0].get("mtu").is_some(),
        ge(v, "1.1.0"),
        "{v}: {res}"
    );
    assert_kernel_state(&node, &pod, &res);

    // ADD again: the interface exists.
    node.cni(&add).expect_code(100);
    assert_eq!(
        node.reserved(),
        vec!["10.244.1.2"],
        "the failed ADD must not leak an address"
    );

    // CHECK
    let check = Invocation::new("CHECK", with_prev(conf.clone(), &res)).attach("ctr1", &path);
    if ge(v, "0.4.0") {
        node.cni(&check).expect_ok();
        pod.exec(&["ip", "link", "set", "eth0", "mtu", "1300"]);
        let out = node.cni(&check);
        out.expect_code(102);
        assert!(
            out.stdout["msg"].as_str().unwrap().contains("MTU 1300"),
            "{}",
            out.stdout
        );
        pod.exec(&["ip", "link", "set", "eth0", "mtu", "1420"]);
        pod.exec(&["ip", "route", "del", "default"]);
        let out = node.cni(&check);
        out.expect_code(102);
        assert!(
            out.stdout["msg"]
                .as_str()
                .unwrap()
                .contains("route 0.0.0.0/0"),
            "{}",
            out.stdout
        );
        pod.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ]);
        node.cni(&check).expect_ok();
        node.cni(&Invocation::new("CHECK", conf.clone()).attach("ctr1", &path))
            .expect_code(7);
    } else {
        node.cni(&check).expect_code(1);
    }

    // STATUS
    let status = Invocation::new("STATUS", conf.clone());
    if ge(v, "1.1.0") {
        node.cni(&status).expect_ok();
        let state = |healthy: bool, cidrs: Value| json!({"podCIDRs": cidrs, "mtu": 1420, "meshHealthy": healthy, "clusterCIDRs": ["10.244.0.0/16"], "wgInterface": "kfwg0"});
        node.write_state(state(false, json!(["10.244.1.0/24"])));
        node.cni(&status).expect_code(51);
        node.write_state(state(true, json!([])));
        node.cni(&status).expect_code(50);
        std::fs::remove_file(node.state_file()).unwrap();
        node.cni(&status).expect_code(50);
        node.write_state(state(true, json!(["10.244.1.0/24"])));
        node.cni(&status).expect_ok();
    } else {
        node.cni(&status).expect_code(1);
    }

    // GC: a second attachment is reclaimed when not listed as valid; the first stays.
    let pod2 = Netns::new("pod");
    let res2 = node
        .cni(&Invocation::new("ADD", conf.clone()).attach("ctr2", &pod2.path()))
        .expect_ok()
        .clone();
    assert_eq!(res2["ips"][0]["address"], "10.244.1.3/32");
    let mut gc_conf = conf.clone();
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "ctr1", "ifname": "eth0"}]);
    let gc = Invocation::new("GC", gc_conf);
    if ge(v, "1.1.0") {
        node.cni(&gc).expect_ok();
        assert_eq!(node.reserved(), vec!["10.244.1.2"]);
        assert!(
            !pod2.has_link("eth0"),
            "GC must remove the reclaimed pod's veth"
        );
        assert_eq!(node.host_veths().len(), 1);
        // The older key works too.
        let mut old = conf.clone();
        old["cni.dev/attachments"] = json!([]);
        node.cni(&Invocation::new("GC", old)).expect_ok();
        assert!(node.reserved().is_empty() && node.host_veths().is_empty());
        assert!(!pod.has_link("eth0"));
        node.cni(&Invocation::new("GC", conf.clone()))
            .expect_code(7);
    } else {
        node.cni(&gc).expect_code(1);
        node.cni(&Invocation::new("DEL", conf.clone()).attach("ctr2", &pod2.path()))
            .expect_ok();
        // DEL with prevResult (0.4.0+ runtimes send it) and then a second DEL with no netns.
        node.cni(&Invocation::new("DEL", with_prev(conf.clone(), &res)).attach("ctr1", &path))
            .expect_ok();
    }
    // DEL is idempotent: empty CNI_NETNS and no prevResult (containerd's second DEL), missing netns.
    node.cni(&Invocation::new("DEL", conf.clone()).attach("ctr1", ""))
        .expect_ok();
    node.cni(&Invocation::new("DEL", conf.clone()).attach("ctr1", "/run/netns/does-not-exist"))
        .expect_ok();
    assert!(node.reserved().is_empty(), "{v}: {:?}", node.reserved());
    eventually("host veths gone", || node.host_veths().is_empty());
    eventually("pod veth gone", || !pod.has_link("eth0"));
}

/// The kernel holds exactly what the result says.
fn assert_kernel_state(node: &Node, pod: &Netns, res: &Value) {
    let addr = pod.ip_json(&["addr", "show", "dev", "eth0"]);
    let info = &addr[0];
    assert_eq!(info["mtu"], 1420);
    assert_eq!(info["address"], res["interfaces"][1]["mac"]);
    let inet: Vec<_> = info["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .collect();
    assert_eq!(inet.len(), 1);
    assert_eq!(
        format!(
            "{}/{}",
            inet[0]["local"].as_str().unwrap(),
            inet[0]["prefixlen"]
        ),
        res["ips"][0]["address"].as_str().unwrap()
    );
    let routes = pod.ip_json(&["route", "show"]);
    let default = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dst"] == "default")
        .expect("default route");
    assert_eq!(default["gateway"], "169.254.1.1");
    assert_eq!(default["metrics"][0]["mtu"], 1420, "{default}");
    let neigh = pod.ip_json(&["neigh", "show", "dev", "eth0"]);
    assert_eq!(neigh[0]["lladdr"], "ee:ee:ee:ee:ee:ee");
    let host_if = res["interfaces"][0]["name"].as_str().unwrap();
    assert!(node.ns.has_link(host_if));
    let host_routes = node.ns.ip_json(&["route", "show", "dev", host_if]);
    assert_eq!(
        host_routes[0]["dst"],
        res["ips"][0]["address"]
            .as_str()
            .unwrap()
            .trim_end_matches("/32")
    );
    // Traffic flows: the pod reaches an address of the node.
    node.ns
        .exec(&["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"]);
    let ping = pod.exec(&["ping", "-c3", "-i0.3", "-W2", "192.0.2.1"]);
    assert!(
        ping.status.success(),
        "ping: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
}

#[test]
fn add_rolls_back_when_a_later_step_fails() {
    if !privileged() {
        return;
    }
    let node = Node::new("10.244.2.0/24");
    let pod = Netns::new("pod");
    // An existing default route makes the last pod-side step fail (EEXIST) after the veth,
    // address, neighbour and reservation exist.
    for args in [
        &[
            "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
        ][..],
        &["ip", "link", "set", "v0", "up"],
        &["ip", "route", "add", "default", "dev", "v0"],
    ] {
        assert!(pod.exec(args).status.success(), "{args:?}");
    }
    let out = node.cni(&Invocation::new("ADD", node.conf("1.0.0")).attach("rb", &pod.path()));
    out.expect_code(103);
    assert!(
        out.stdout["msg"].as_str().unwrap().contains("add route"),
        "{}",
        out.stdout
    );
    assert!(!pod.has_link("eth0"), "pod end left behind");
    assert!(node.host_veths().is_empty(), "host end left behind");
    assert!(node.reserved().is_empty(), "address left reserved");
}

// The fault hooks the rollback test uses exist only with the `fault-injection` feature (cni-wg's self dev-dependency
// turns it on for tests): without it this file does not compile, rather than the test passing vacuously.
const _: () = assert!(
    kitfleet_cni_wg::plugin::fault::ENABLED,
    "kitfleet-wg built without its fault hooks"
);

#[test]
fn add_rolls_back_a_failure_at_every_step() {
    if !privileged() {
        return;
    }
    let node = Node::new("10.244.6.0/24");
    let points = [
        "after-reserve",
        "after-veth",
        "after-pod-addr",
        "after-pod-routes",
        "after-host-up",
        "after-host-route",
    ];
    for point in points {
        let pod = Netns::new("pod");
        let mut inv = Invocation::new("ADD", node.conf("1.1.0")).attach("fp", "");
        let path = pod.path();
        inv.netns = &path;
        inv.extra_env
            .push(("KITFLEET_WG_TEST_FAIL".into(), point.into()));
        let out = node.cni(&inv);
        out.expect_code(103);
        assert!(
            out.stdout["msg"].as_str().unwrap().contains(point),
            "{}",
            out.stdout
        );
        assert!(!pod.has_link("eth0"), "{point}: pod end left behind");
        assert!(
            node.host_veths().is_empty(),
            "{point}: host end left behind"
        );
        assert!(node.reserved().is_empty(), "{point}: address left reserved");
        assert_eq!(
            node.ns.ip_json(&["route", "show", "root", "10.244.6.0/24"]),
            json!([]),
            "{point}: host route left behind"
        );
        // And the same attachment then goes through.
        inv.extra_env.clear();
        node.cni(&inv).expect_ok();
        let routes = node.ns.ip_json(&["route", "show", "root", "10.244.6.0/24"]);
        assert_eq!(routes.as_array().unwrap().len(), 1, "{routes}");
        node.cni(&Invocation::new("DEL", node.conf("1.1.0")).attach("fp", &path))
            .expect_ok();
        eventually("host veth gone", || node.host_veths().is_empty());
    }
}

#[test]
fn chaining_runtime_config_and_args() {
    if !privileged() {
        return;
    }
    let node = Node::new("10.244.3.0/24");
    let pod = Netns::new("pod");
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "lo", "sandbox": pod.path()}],
        "ips": [], "dns": {"nameservers": ["10.96.0.10"]}});
    let mut conf = with_prev(node.conf("1.0.0"), &prev);
    // podman's lowercase and containerd's capitalised portMappings are both accepted.
    conf["runtimeConfig"] = json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]});
    let mut inv = Invocation::new("ADD", conf.clone()).attach("ch", "");
    let path = pod.path();
    inv.netns = &path;
    inv.args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;FOO=bar";
    let res = node.cni(&inv).expect_ok().clone();
    assert_eq!(res["interfaces"].as_array().unwrap().len(), 3, "{res}");
    assert_eq!(res["ips"][0]["interface"], 2, "{res}");
    assert_eq!(res["dns"]["nameservers"][0], "10.96.0.10");
    let del = |c: Value| {
        node.cni(&Invocation::new("DEL", c).attach("ch", &path))
            .expect_ok()
            .clone()
    };
    del(conf.clone());
    // podman stop + start: ADD of the same attachment right after its DEL.
    conf["runtimeConfig"] = json!({"portMappings": [{"HostPort": 8080, "ContainerPort": 80, "Protocol": "TCP", "HostIP": ""}]});
    inv.conf = conf.clone();
    node.cni(&inv).expect_ok();
    // Unknown CNI_ARGS without IgnoreUnknown: rejected with code 4 before anything is created.
    inv.args = "FOO=bar";
    inv.container_id = "ch2";
    node.cni(&inv).expect_code(4);
    del(conf);
    assert!(node.reserved().is_empty());
    eventually("host veths gone", || node.host_veths().is_empty());
}

#[test]
fn bad_input_gets_field_named_errors_and_nothing_is_created() {
    if !privileged() {
        return;
    }
    let node = Node::new("10.244.4.0/24");
    let pod = Netns::new("pod");
    let path = pod.path();
    let mut c = node.conf("1.0.0");
    c["podCIDR"] = json!("10.244.4.1/24");
    let out = node.cni(&Invocation::new("ADD", c).attach("b", &path));
    out.expect_code(7);
    assert!(
        out.stdout["msg"].as_str().unwrap().starts_with("podCIDR:"),
        "{}",
        out.stdout
    );
    let mut c = node.conf("0.2.0");
    c["cniVersion"] = json!("0.2.0");
    node.cni(&Invocation::new("ADD", c).attach("b", &path))
        .expect_code(1);
    let out = node.cni(&Invocation::new("ADD", node.conf("1.0.0")).attach("b", "/run/netns/nope"));
    out.expect_code(3);
    std::fs::remove_file(node.state_file()).unwrap();
    node.cni(&Invocation::new("ADD", node.conf("1.0.0")).attach("b", &path))
        .expect_code(11);
    assert!(node.reserved().is_empty() && node.host_veths().is_empty() && !pod.has_link("eth0"));
}

#[test]
fn masquerade_lets_pods_reach_outside_the_cluster() {
    if !privileged() {
        return;
    }
    let node = Node::new("10.244.5.0/24");
    let ext = Netns::new("ext");
    // node <-> ext over a veth; ext has no route back to the pod CIDR, so only masqueraded
    // traffic gets an answer.
    sh(&[
        "ip",
        "link",
        "add",
        "uplink0",
        "netns",
        &node.ns.name,
        "type",
        "veth",
        "peer",
        "name",
        "x0",
        "netns",
        &ext.name,
    ]);
    node.ns
        .exec(&["ip", "addr", "add", "198.51.100.1/24", "dev", "uplink0"]);
    node.ns.exec(&["ip", "link", "set", "uplink0", "up"]);
    node.ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    ext.exec(&["ip", "addr", "add", "198.51.100.2/24", "dev", "x0"]);
    ext.exec(&["ip", "link", "set", "x0", "up"]);
    for (masq, cid) in [(false, "m0"), (true, "m1")] {
        let pod = Netns::new("pod");
        let mut c = node.conf("1.1.0");
        c["masquerade"] = json!(masq);
        node.cni(&Invocation::new("ADD", c.clone()).attach(cid, &pod.path()))
            .expect_ok();
        // Several tries when an answer is expected (this machine is shared and busy).
        let count = if masq { "-c3" } else { "-c1" };
        let ping = pod.exec(&["ping", count, "-i0.3", "-W2", "198.51.100.2"]);
        assert_eq!(ping.status.success(), masq, "masquerade={masq}");
        let table = node
            .ns
            .exec(&["nft", "list", "table", "ip", "kitfleet_wg_kfwtest"]);
        assert_eq!(
            table.status.success(),
            masq,
            "nft table present iff masquerade"
        );
        node.cni(&Invocation::new("DEL", c).attach(cid, &pod.path()))
            .expect_ok();
    }
}
