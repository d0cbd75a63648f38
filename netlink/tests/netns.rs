//! The client against the real kernel, in a network namespace of its own (needs root; under `CI=true` a missing
//! privilege fails the test instead of skipping it).

use std::net::Ipv4Addr;

use kitfleet_netlink::{
    AddressFamily, Netlink, NetlinkError, RouteProtocol, RouteScope, RouteSpec, nft_delete_table,
    nft_table_handle,
};
use nix::errno::Errno;

/// Runs `f` on a thread inside a fresh network namespace; `None` when that is not allowed here (outside CI).
fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(
        move || match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            Ok(()) => Some(f()),
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("skipped: unshare(CLONE_NEWNET): {e} (needs root)");
                None
            }
            Err(e) => panic!("unshare(CLONE_NEWNET): {e}: the privileged tests need root under CI"),
        },
    )
    .join()
    .unwrap()
}

#[test]
fn links_addresses_routes_neighbours() {
    in_netns(|| {
        let mut nl = Netlink::open().unwrap();
        let lo = nl.link("lo").unwrap().unwrap();
        assert_eq!((lo.index, lo.kind.as_str()), (1, ""));
        assert_eq!(nl.link("kfnl-none").unwrap(), None);
        assert_eq!(nl.link_by_index(999).unwrap(), None);

        let here = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        let (h, p) = (
            ("kfnl-h", [2, 0, 0, 0, 0, 1]),
            ("kfnl-p", [2, 0, 0, 0, 0, 2]),
        );
        nl.create_veth(h, p, &here, 1380).unwrap();
        let e = nl.create_veth(h, p, &here, 1380).unwrap_err();
        assert!(
            matches!(
                &e,
                NetlinkError::Kernel {
                    op: "create veth",
                    errno: Errno::EEXIST,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "netlink create veth kfnl-h: EEXIST: File exists"
        );
        let host = nl.link("kfnl-h").unwrap().unwrap();
        assert_eq!(
            (host.kind.as_str(), host.mtu, host.up),
            ("veth", 1380, false)
        );
        assert_eq!(host.mac, "02:00:00:00:00:01");
        nl.set_up(host.index).unwrap();
        assert!(nl.link_by_index(host.index).unwrap().unwrap().up);

        let ip = Ipv4Addr::new(10, 77, 0, 5);
        nl.add_addr(host.index, ip, 32).unwrap();
        assert_eq!(nl.addrs(host.index).unwrap(), vec![(ip, 32)]);
        nl.add_neigh(host.index, Ipv4Addr::new(10, 77, 0, 9), [2, 0, 0, 0, 0, 9])
            .unwrap();

        let spec = RouteSpec {
            dst: "10.78.0.0/24".parse().unwrap(),
            gw: None,
            oif: Some(host.index as u32),
            scope: RouteScope::Link,
            protocol: RouteProtocol::Other(0x4b),
            metrics: Some((1300, 1260)),
        };
        nl.add_route_spec(&spec).unwrap();
        let e = nl.add_route_spec(&spec).unwrap_err();
        assert_eq!(e.errno(), Errno::EEXIST);
        let all = nl.dump_routes(AddressFamily::Unspec).unwrap();
        let r = all.iter().find(|r| r.dst == spec.dst).unwrap();
        assert_eq!((r.protocol, r.oif, r.table), (0x4b, spec.oif, 254));
        assert!(
            nl.routes()
                .unwrap()
                .iter()
                .any(|r| r.dst == Ipv4Addr::new(10, 78, 0, 0) && r.prefix == 24)
        );
        // Deletion matches the protocol: another protocol's route of that prefix is not this one.
        let mut other = spec.clone();
        other.protocol = RouteProtocol::Boot;
        assert!(!nl.delete_route_spec(&other).unwrap());
        assert!(nl.delete_route_spec(&spec).unwrap());
        assert!(!nl.delete_route_spec(&spec).unwrap());

        assert!(!nl.delete_link_checked(host.index, "kfnl-h", "tun").unwrap());
        assert!(!nl.delete_link_checked(host.index, "other", "veth").unwrap());
        assert!(
            nl.delete_link_checked(host.index, "kfnl-h", "veth")
                .unwrap()
        );
        assert!(!nl.delete_link("kfnl-p").unwrap(), "the peer went with it");
        assert!(!nl.delete_link_index(host.index).unwrap());
    });
}

#[test]
fn nft_tables() {
    in_netns(|| {
        let t = "kitfleet-nltest";
        assert_eq!(nft_table_handle(t).unwrap(), None);
        assert!(!nft_delete_table(t).unwrap());
        let st = std::process::Command::new("nft")
            .args(["add", "table", "ip", t])
            .status()
            .expect("nft (Debian package nftables)");
        assert!(st.success());
        let h = nft_table_handle(t).unwrap().expect("a handle");
        assert!(h > 0);
        assert!(nft_delete_table(t).unwrap());
        assert_eq!(nft_table_handle(t).unwrap(), None);
    });
}

#[test]
fn link_dump_lists_every_link() {
    in_netns(|| {
        let mut nl = Netlink::open().unwrap();
        let here = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        nl.create_veth(
            ("kfnl-a", [2, 0, 0, 0, 0, 3]),
            ("kfnl-b", [2, 0, 0, 0, 0, 4]),
            &here,
            1500,
        )
        .unwrap();
        let mut names: Vec<String> = nl.links().unwrap().into_iter().map(|l| l.name).collect();
        names.sort();
        assert_eq!(names, ["kfnl-a", "kfnl-b", "lo"]);
    });
}
