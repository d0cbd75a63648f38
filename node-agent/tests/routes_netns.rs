//! The rtnetlink route executor against the real kernel in a throwaway namespace.
//! Needs root and netns: fails under CI=true without them, skips with a message otherwise.

use std::collections::BTreeSet;

use ipnet::IpNet;
use kitfleet_node_agent::mesh::routes::{NetlinkRoutes, RouteTable};
use kitfleet_testbed::netns::{ip, ns_output, require_privileges, with_netns};

#[test]
fn add_list_delete_only_touch_the_agents_routes() {
    if !require_privileges("add_list_delete_only_touch_the_agents_routes") {
        return;
    }
    let ns = format!("rt{}", std::process::id() % 10000);
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &ns])
        .stderr(std::process::Stdio::null())
        .status();
    ip(&["netns", "add", &ns]).unwrap();
    struct Guard(String);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _guard = Guard(ns.clone());
    ip(&[
        "-n", &ns, "link", "add", "wgt", "type", "veth", "peer", "name", "wgt-peer",
    ])
    .unwrap();
    ip(&["-n", &ns, "link", "set", "wgt", "up"]).unwrap();
    ip(&["-n", &ns, "link", "set", "wgt-peer", "up"]).unwrap();
    // Someone else's route on the same device must be left alone.
    ip(&["-n", &ns, "route", "add", "10.99.0.0/16", "dev", "wgt"]).unwrap();
    ip(&["-n", &ns, "route", "add", "10.244.6.0/24", "dev", "wgt"]).unwrap();
    let ns2 = ns.clone();
    with_netns(&ns, move || {
        let c = |s: &str| -> IpNet { s.parse().unwrap() };
        let mut rt = NetlinkRoutes::open().unwrap();
        assert!(rt.list("wgt").unwrap().is_empty());
        rt.add("wgt", c("10.244.1.0/24")).unwrap();
        rt.add("wgt", c("10.244.2.0/24")).unwrap();
        rt.add("wgt", c("fd00:1::/64")).unwrap();
        rt.add("wgt", c("10.244.2.0/24")).unwrap(); // replace is idempotent
        let want: BTreeSet<IpNet> =
            [c("10.244.1.0/24"), c("10.244.2.0/24"), c("fd00:1::/64")].into();
        assert_eq!(rt.list("wgt").unwrap(), want);
        let shown = ns_output(&ns2, "ip", &["route", "show", "dev", "wgt"]).unwrap();
        assert!(
            shown.contains("10.244.1.0/24 proto 75 scope link"),
            "{shown}"
        );
        rt.del("wgt", c("10.244.1.0/24")).unwrap();
        rt.del("wgt", c("10.244.1.0/24")).unwrap(); // already gone: fine
        rt.del("wgt", c("fd00:1::/64")).unwrap();
        assert_eq!(rt.list("wgt").unwrap(), [c("10.244.2.0/24")].into());
        rt.del("wgt", c("10.244.2.0/24")).unwrap();
        let shown = ns_output(&ns2, "ip", &["route", "show", "dev", "wgt"]).unwrap();
        assert!(
            shown.contains("10.99.0.0/16"),
            "foreign route kept: {shown}"
        );
        // Issue 12 item 1: a route someone else owns is never replaced, nor deleted with ours.
        let foreign = || ns_output(&ns2, "ip", &["route", "show", "10.244.6.0/24"]).unwrap();
        let r = rt.add("wgt", c("10.244.6.0/24"));
        assert!(
            !foreign().contains("proto 75"),
            "foreign route replaced: {}",
            foreign()
        );
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("10.244.6.0/24") && e.contains("not the agent's"),
            "{e}"
        );
        assert!(!rt.list("wgt").unwrap().contains(&c("10.244.6.0/24")));
        rt.del("wgt", c("10.244.6.0/24")).unwrap();
        assert!(foreign().contains("10.244.6.0/24"), "foreign route deleted");
        rt.add("wgt", c("10.244.2.0/24")).unwrap(); // our own route again: fine
        ip(&[
            "-n",
            &ns2,
            "route",
            "add",
            "10.244.2.0/24",
            "dev",
            "wgt",
            "metric",
            "50",
        ])
        .unwrap();
        rt.del("wgt", c("10.244.2.0/24")).unwrap();
        let left = ns_output(&ns2, "ip", &["route", "show", "10.244.2.0/24"]).unwrap();
        assert!(
            left.contains("metric 50") && !left.contains("proto 75"),
            "{left}"
        );
        let e = rt.add("nope0", c("10.244.3.0/24")).unwrap_err().to_string();
        assert!(e.contains("nope0"), "{e}");
        rt.del("nope0", c("10.244.3.0/24")).unwrap();
    })
    .join()
    .unwrap()
    .unwrap();
}
