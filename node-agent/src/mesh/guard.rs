//! Which podCIDRs the agent may route (pure). A Node object is not trusted with the routing table:
//! a podCIDR is routed only when it lies inside the configured cluster CIDRs and overlaps no local
//! address and no route someone else owns (routes that cover a whole cluster CIDR, like the
//! default route, excepted: pod routes refine those). Cluster CIDRs themselves may not be the whole address
//! space nor touch loopback, link-local, multicast or unspecified ranges.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// Ranges no cluster CIDR may overlap, with their names for the error message.
const SPECIAL: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\""),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved/broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// Whether two prefixes share an address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Whether `outer` contains all of `inner`.
pub fn covers(outer: &IpNet, inner: &IpNet) -> bool {
    outer.contains(inner)
}

/// Checks one configured cluster CIDR; the error says why (used as the flag's value parser).
pub fn check_cluster_cidr(c: &IpNet) -> Result<(), String> {
    if c.prefix_len() == 0 {
        return Err(format!(
            "{c} is the whole address space; give the cluster's pod CIDRs"
        ));
    }
    for (range, name) in SPECIAL {
        let r: IpNet = range.parse().expect("constant CIDR");
        if overlaps(c, &r) {
            return Err(format!("{c} overlaps the {name} range {r}"));
        }
    }
    Ok(())
}

/// Parses and checks a `--cluster-cidr` value.
pub fn parse_cluster_cidr(s: &str) -> Result<IpNet, String> {
    let c = super::prefix::parse(s)?;
    check_cluster_cidr(&c)?;
    Ok(c)
}

/// A route the agent does not own, as the routing table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignRoute {
    pub dst: IpNet,
    /// What it is, for the log: `local`, `dev eth0 proto kernel table 254`…
    pub what: String,
    /// A `local` route: one of this host's addresses.
    pub local: bool,
}

/// What the host's routing table holds besides the agent's own routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostView {
    pub foreign: Vec<ForeignRoute>,
}

/// Why a podCIDR is not routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    OutsideClusterCidrs,
    HoldsLocalAddress(IpAddr),
    OverlapsForeignRoute { dst: IpNet, what: String },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::OutsideClusterCidrs => f.write_str("outside the configured cluster CIDRs"),
            Refusal::HoldsLocalAddress(a) => write!(f, "holds this host's address {a}"),
            Refusal::OverlapsForeignRoute { dst, what } => {
                write!(
                    f,
                    "overlaps the route {dst} {what}, which the agent does not own"
                )
            }
        }
    }
}

/// The rules a peer's podCIDR must pass before it is routed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    pub cluster_cidrs: Vec<IpNet>,
    pub host: HostView,
}

impl Guard {
    /// `Ok` when `p` may be routed through the mesh.
    pub fn check(&self, p: &IpNet) -> Result<(), Refusal> {
        let clusters: Vec<&IpNet> = self.cluster_cidrs.iter().filter(|c| covers(c, p)).collect();
        if clusters.is_empty() {
            return Err(Refusal::OutsideClusterCidrs);
        }
        // A route inside the cluster CIDRs that overlaps `p` belongs to someone else's part of the
        // pod space (or is a local address); one that covers a whole cluster CIDR around `p` (the
        // default route, a VPN's /8, a cluster-wide route) is what pod routes refine.
        let blocks =
            |r: &&ForeignRoute| overlaps(p, &r.dst) && !clusters.iter().any(|c| covers(&r.dst, c));
        let foreign = &self.host.foreign;
        let local = foreign.iter().filter(|r| r.local).find(blocks);
        if let Some(r) = local.or_else(|| foreign.iter().find(blocks)) {
            return Err(if r.local {
                Refusal::HoldsLocalAddress(r.dst.network())
            } else {
                Refusal::OverlapsForeignRoute {
                    dst: r.dst,
                    what: r.what.clone(),
                }
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn cluster_cidrs_are_checked() {
        for (input, why) in [
            ("0.0.0.0/0", "whole address space"),
            ("::/0", "whole address space"),
            ("127.0.0.0/8", "loopback"),
            ("64.0.0.0/2", "loopback"),
            ("169.254.0.0/16", "link-local"),
            ("169.254.169.254/32", "link-local"),
            ("224.0.0.0/8", "multicast"),
            ("fe80::/64", "link-local"),
            ("ff02::/16", "multicast"),
            ("::/96", "unspecified"),
            ("10.0.0.0/33", "too long"),
        ] {
            let e = parse_cluster_cidr(input).unwrap_err();
            assert!(
                e.contains(why) && e.contains(input.split('/').next().unwrap()),
                "{input}: {e}"
            );
        }
        for ok in [
            "10.244.0.0/16",
            "10.0.0.0/8",
            "192.168.0.0/16",
            "fd00:10:244::/56",
        ] {
            assert_eq!(parse_cluster_cidr(ok), Ok(c(ok)));
        }
    }

    #[test]
    fn pod_cidrs_are_checked() {
        let host = HostView {
            foreign: vec![
                ForeignRoute {
                    dst: c("0.0.0.0/0"),
                    what: "via 192.168.1.254 dev eth0".into(),
                    local: false,
                },
                ForeignRoute {
                    dst: c("192.168.1.0/24"),
                    what: "dev eth0 proto kernel".into(),
                    local: false,
                },
                ForeignRoute {
                    dst: c("192.168.1.10/32"),
                    what: "local".into(),
                    local: true,
                },
                ForeignRoute {
                    dst: c("10.244.9.0/24"),
                    what: "via 192.168.1.253 metric 100".into(),
                    local: false,
                },
                ForeignRoute {
                    dst: c("10.244.7.5/32"),
                    what: "dev cali0".into(),
                    local: false,
                },
            ],
        };
        let g = Guard {
            cluster_cidrs: vec![c("10.244.0.0/16"), c("192.168.0.0/16"), c("fd00::/48")],
            host,
        };
        let refused = |p: &str| g.check(&c(p)).unwrap_err().to_string();
        assert_eq!(g.check(&c("10.244.2.0/24")), Ok(()));
        assert_eq!(g.check(&c("fd00:0:0:2::/64")), Ok(()));
        assert_eq!(
            g.check(&c("192.168.77.0/24")),
            Ok(()),
            "a broader foreign route is fine"
        );
        assert_eq!(refused("0.0.0.0/0"), "outside the configured cluster CIDRs");
        assert_eq!(
            refused("169.254.169.254/32"),
            "outside the configured cluster CIDRs"
        );
        assert_eq!(
            refused("10.0.0.0/8"),
            "outside the configured cluster CIDRs"
        );
        assert_eq!(refused("fd01::/64"), "outside the configured cluster CIDRs");
        assert_eq!(
            refused("192.168.1.0/24"),
            "holds this host's address 192.168.1.10"
        );
        assert!(refused("192.168.1.128/25").contains("overlaps the route 192.168.1.0/24 dev eth0"));
        assert!(
            refused("10.244.9.128/25").contains("10.244.9.0/24"),
            "a narrower claim too"
        );
        assert!(refused("192.168.1.64/26").contains("192.168.1.0/24"));
        assert!(refused("192.168.0.0/17").contains("192.168.1.10"));
        assert_eq!(
            refused("192.168.1.10/32"),
            "holds this host's address 192.168.1.10"
        );
        assert!(refused("10.244.9.0/24").contains("metric 100"));
        assert!(refused("10.244.7.0/24").contains("10.244.7.5/32 dev cali0"));
    }
}
