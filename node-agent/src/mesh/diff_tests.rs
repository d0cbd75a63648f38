use super::*;
use crate::mesh::guard::{ForeignRoute, HostView};

fn key(b: u8) -> PublicKey {
    PublicKey([b; 32])
}

fn node(name: &str, k: Option<u8>, cidrs: &[&str], ip: Option<&str>, ep: Option<&str>) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        internal_ip: ip.map(|i| i.parse().unwrap()),
        public_key: k.map(key),
        endpoint: ep.map(|e| e.parse().unwrap()),
        problems: vec![],
    }
}

fn peer(k: u8, ep: &str, cidrs: &[&str]) -> PeerConfig {
    PeerConfig {
        public_key: key(k),
        endpoint: Some(ep.parse().unwrap()),
        allowed_ips: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        persistent_keepalive: None,
    }
}

fn c(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Cluster CIDRs 10.244.0.0/16 and fd00::/16; the host routes 192.168.1.0/24 and holds 10.244.200.1.
fn guard() -> Guard {
    Guard {
        cluster_cidrs: vec![c("10.244.0.0/16"), c("fd00::/16")],
        host: HostView {
            foreign: vec![
                ForeignRoute {
                    dst: c("0.0.0.0/0"),
                    what: "via 192.168.1.254 dev eth0".into(),
                    local: false,
                },
                ForeignRoute {
                    dst: c("10.244.9.0/24"),
                    what: "via 192.168.1.253 dev eth0".into(),
                    local: false,
                },
                ForeignRoute {
                    dst: c("10.244.200.1/32"),
                    what: "local".into(),
                    local: true,
                },
            ],
        },
    }
}

fn me() -> NodeInfo {
    node("a", Some(1), &["10.244.0.0/24"], Some("192.0.2.1"), None)
}

#[test]
fn desired_table() {
    struct Case {
        name: &'static str,
        nodes: Vec<NodeInfo>,
        peers: Vec<PeerConfig>,
        skipped: Vec<&'static str>,
    }
    let cases = vec![
        Case {
            name: "alone",
            nodes: vec![me()],
            peers: vec![],
            skipped: vec![],
        },
        Case {
            name: "two peers, endpoint from annotation or InternalIP",
            nodes: vec![
                me(),
                node(
                    "c",
                    Some(3),
                    &["10.244.2.0/24"],
                    Some("192.0.2.3"),
                    Some("198.51.100.3:4000"),
                ),
                node("b", Some(2), &["10.244.1.0/24"], Some("192.0.2.2"), None),
            ],
            peers: vec![
                peer(2, "192.0.2.2:51820", &["10.244.1.0/24"]),
                peer(3, "198.51.100.3:4000", &["10.244.2.0/24"]),
            ],
            skipped: vec![],
        },
        Case {
            name: "no key yet",
            nodes: vec![
                me(),
                node("b", None, &["10.244.1.0/24"], Some("192.0.2.2"), None),
            ],
            peers: vec![],
            skipped: vec!["b: no valid agent.kitfleet.dev/wg-public-key annotation yet"],
        },
        Case {
            name: "own key reused",
            nodes: vec![
                me(),
                node("b", Some(1), &["10.244.1.0/24"], Some("192.0.2.2"), None),
            ],
            peers: vec![],
            skipped: vec!["b: uses this node's own public key"],
        },
        Case {
            name: "duplicate key: first by name wins",
            nodes: vec![
                me(),
                node("c", Some(2), &["10.244.2.0/24"], Some("192.0.2.3"), None),
                node("b", Some(2), &["10.244.1.0/24"], Some("192.0.2.2"), None),
            ],
            peers: vec![peer(2, "192.0.2.2:51820", &["10.244.1.0/24"])],
            skipped: vec!["c: public key already used by node b"],
        },
        Case {
            name: "no endpoint",
            nodes: vec![me(), node("b", Some(2), &["10.244.1.0/24"], None, None)],
            peers: vec![],
            skipped: vec!["b: no endpoint annotation and no InternalIP"],
        },
        Case {
            name: "no podCIDR",
            nodes: vec![me(), node("b", Some(2), &[], Some("192.0.2.2"), None)],
            peers: vec![],
            skipped: vec!["b: no podCIDR"],
        },
        Case {
            name: "overlaps own podCIDR",
            nodes: vec![
                me(),
                node("b", Some(2), &["10.244.0.0/23"], Some("192.0.2.2"), None),
            ],
            peers: vec![],
            skipped: vec!["b: podCIDR 10.244.0.0/23 overlaps node a"],
        },
        Case {
            name: "overlaps an earlier peer",
            nodes: vec![
                me(),
                node("b", Some(2), &["10.244.1.0/24"], Some("192.0.2.2"), None),
                node("c", Some(3), &["10.244.1.128/25"], Some("192.0.2.3"), None),
            ],
            peers: vec![peer(2, "192.0.2.2:51820", &["10.244.1.0/24"])],
            skipped: vec!["c: podCIDR 10.244.1.128/25 overlaps node b"],
        },
        Case {
            name: "dual-stack podCIDRs",
            nodes: vec![
                me(),
                node(
                    "b",
                    Some(2),
                    &["10.244.1.0/24", "fd00:1::/64"],
                    Some("192.0.2.2"),
                    None,
                ),
            ],
            peers: vec![peer(
                2,
                "192.0.2.2:51820",
                &["10.244.1.0/24", "fd00:1::/64"],
            )],
            skipped: vec![],
        },
        Case {
            name: "podCIDRs outside the cluster CIDRs, own Node without podCIDR",
            nodes: vec![
                node("a", Some(1), &[], Some("192.0.2.1"), None),
                node("b", Some(2), &["0.0.0.0/0"], Some("192.0.2.2"), None),
                node(
                    "c",
                    Some(3),
                    &["169.254.169.254/32"],
                    Some("192.0.2.3"),
                    None,
                ),
                node("d", Some(4), &["192.168.1.0/24"], Some("192.0.2.4"), None),
                node("e", Some(5), &["10.244.5.0/24"], Some("192.0.2.5"), None),
            ],
            peers: vec![peer(5, "192.0.2.5:51820", &["10.244.5.0/24"])],
            skipped: vec![
                "b: podCIDR 0.0.0.0/0: outside the configured cluster CIDRs",
                "b: no podCIDR the agent may route",
                "c: podCIDR 169.254.169.254/32: outside the configured cluster CIDRs",
                "c: no podCIDR the agent may route",
                "d: podCIDR 192.168.1.0/24: outside the configured cluster CIDRs",
                "d: no podCIDR the agent may route",
            ],
        },
        Case {
            name: "someone else's route, a local address; a refused prefix takes nothing",
            nodes: vec![
                me(),
                node("b", Some(2), &["10.244.9.0/24"], Some("192.0.2.2"), None),
                node("c", Some(3), &["10.244.200.0/24"], Some("192.0.2.3"), None),
                node("d", Some(4), &["10.244.9.0/25"], Some("192.0.2.4"), None),
                node("e", Some(5), &["10.244.10.0/24"], Some("192.0.2.5"), None),
            ],
            peers: vec![peer(5, "192.0.2.5:51820", &["10.244.10.0/24"])],
            skipped: vec![
                "b: podCIDR 10.244.9.0/24: overlaps the route 10.244.9.0/24 via 192.168.1.253 dev eth0, which the agent does not own",
                "b: no podCIDR the agent may route",
                "c: podCIDR 10.244.200.0/24: holds this host's address 10.244.200.1",
                "c: no podCIDR the agent may route",
                "d: podCIDR 10.244.9.0/25: overlaps the route 10.244.9.0/24 via 192.168.1.253 dev eth0, which the agent does not own",
                "d: no podCIDR the agent may route",
            ],
        },
        Case {
            name: "dual-stack: the refused prefix is dropped, the peer stays",
            nodes: vec![
                me(),
                node(
                    "b",
                    Some(2),
                    &["10.244.1.0/24", "fd01::/64"],
                    Some("192.0.2.2"),
                    None,
                ),
            ],
            peers: vec![peer(2, "192.0.2.2:51820", &["10.244.1.0/24"])],
            skipped: vec!["b: podCIDR fd01::/64: outside the configured cluster CIDRs"],
        },
    ];
    for c in cases {
        let d = desired("a", &key(1), &c.nodes, None, &guard());
        let got: Vec<PeerConfig> = d.peers.values().cloned().collect();
        assert_eq!(got, c.peers, "{}", c.name);
        let routes: BTreeSet<IpNet> = c.peers.iter().flat_map(|p| p.allowed_ips.clone()).collect();
        assert_eq!(d.routes, routes, "{}", c.name);
        let skipped: Vec<String> = d.skipped.iter().map(ToString::to_string).collect();
        assert_eq!(skipped, c.skipped, "{}", c.name);
    }
}

#[test]
fn keepalive_is_passed_to_every_peer() {
    let d = desired(
        "a",
        &key(1),
        &[
            me(),
            node("b", Some(2), &["10.244.1.0/24"], Some("192.0.2.2"), None),
        ],
        Some(25),
        &guard(),
    );
    assert!(d.peers.values().all(|p| p.persistent_keepalive == Some(25)));
}

#[test]
fn diff_table() {
    let p2 = peer(2, "192.0.2.2:51820", &["10.244.1.0/24"]);
    let p3 = peer(3, "192.0.2.3:51820", &["10.244.2.0/24"]);
    let p2_moved = peer(2, "192.0.2.9:51820", &["10.244.1.0/24"]);
    let p2_rotated = peer(9, "192.0.2.2:51820", &["10.244.1.0/24"]);
    let state = |peers: &[&PeerConfig]| Actual {
        peers: peers.iter().map(|p| (p.public_key, (*p).clone())).collect(),
        routes: peers.iter().flat_map(|p| p.allowed_ips.clone()).collect(),
    };
    let want = |peers: &[&PeerConfig]| {
        let a = state(peers);
        Desired {
            peers: a.peers,
            routes: a.routes,
            skipped: vec![],
        }
    };
    let r = |s: &str| -> IpNet { s.parse().unwrap() };
    struct Case {
        name: &'static str,
        actual: Actual,
        desired: Desired,
        plan: Plan,
    }
    let cases = vec![
        Case {
            name: "nothing",
            actual: state(&[]),
            desired: want(&[]),
            plan: Plan::default(),
        },
        Case {
            name: "steady",
            actual: state(&[&p2, &p3]),
            desired: want(&[&p2, &p3]),
            plan: Plan::default(),
        },
        Case {
            name: "node joins",
            actual: state(&[&p2]),
            desired: want(&[&p2, &p3]),
            plan: Plan {
                add_peers: vec![p3.clone()],
                add_routes: vec![r("10.244.2.0/24")],
                ..Default::default()
            },
        },
        Case {
            name: "node leaves",
            actual: state(&[&p2, &p3]),
            desired: want(&[&p2]),
            plan: Plan {
                remove_peers: vec![p3.public_key],
                del_routes: vec![r("10.244.2.0/24")],
                ..Default::default()
            },
        },
        Case {
            name: "annotation-only change: endpoint moved",
            actual: state(&[&p2]),
            desired: want(&[&p2_moved]),
            plan: Plan {
                update_peers: vec![p2_moved.clone()],
                ..Default::default()
            },
        },
        Case {
            name: "key rotation: same podCIDR, new key",
            actual: state(&[&p2]),
            desired: want(&[&p2_rotated]),
            plan: Plan {
                add_peers: vec![p2_rotated.clone()],
                remove_peers: vec![p2.public_key],
                ..Default::default()
            },
        },
    ];
    for c in cases {
        let plan = diff(&c.actual, &c.desired);
        assert_eq!(plan, c.plan, "{}", c.name);
        assert_eq!(plan.is_empty(), c.plan == Plan::default(), "{}", c.name);
    }
}
