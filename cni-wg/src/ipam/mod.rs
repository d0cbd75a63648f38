//! IPAM: which /32 a pod gets (pure), and the on-disk store that records it ([`store`]).
//!
//! Allocatable range of a pod CIDR: for prefixes up to /30, from network+2 to broadcast-1
//! (network+1 is left to the node, e.g. for its mesh interface); a /31 uses both addresses and
//! a /32 its one. Allocation is round-robin after the last reserved address (like host-local),
//! so a released address is not handed out again at once.
#![forbid(unsafe_code)]

pub mod store;

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// First and last allocatable address of `cidr`.
pub fn range(cidr: Ipv4Net) -> (Ipv4Addr, Ipv4Addr) {
    let (n, l) = (u32::from(cidr.network()), u32::from(cidr.broadcast()));
    if cidr.prefix_len() >= 31 {
        (n.into(), l.into())
    } else {
        ((n + 2).into(), (l - 1).into())
    }
}

/// The next free address after `last` (wrapping), or `None` when the range is exhausted.
pub fn next_free(
    cidr: Ipv4Net,
    used: &HashSet<Ipv4Addr>,
    last: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let (first, end) = range(cidr);
    let (first, end) = (u32::from(first), u32::from(end));
    let size = u64::from(end - first) + 1;
    let start = match last.map(u32::from) {
        Some(l) if (first..end).contains(&l) => l + 1,
        _ => first,
    };
    (0..size)
        .map(|i| first + ((u64::from(start - first) + i) % size) as u32)
        .map(Ipv4Addr::from)
        .find(|ip| !used.contains(ip))
}

/// How many addresses `cidr` can hand out.
pub fn capacity(cidr: Ipv4Net) -> u64 {
    let (a, b) = range(cidr);
    u64::from(u32::from(b) - u32::from(a)) + 1
}

/// The MAC of a pod interface: `0a:58:` + the IPv4 address (locally administered, unicast;
/// the convention Kubernetes network plugins use), so results never need a read-back.
pub fn pod_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// The MAC of every host-side veth (Calico-style: each veth is its own L2 segment).
pub const HOST_MAC: [u8; 6] = [0xee; 6];

/// The host-side veth name of an attachment: `kfw` + 12 hex digits of
/// sha256(containerID "/" ifname). Deterministic, so DEL and GC can find it without state.
pub fn host_if_name(container_id: &str, ifname: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    format!("kfw{}", &hex::encode(h)[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn range_table() {
        let rows = [
            ("10.244.1.0/24", "10.244.1.2", "10.244.1.254", 253),
            ("10.0.0.0/30", "10.0.0.2", "10.0.0.2", 1),
            ("10.0.0.0/31", "10.0.0.0", "10.0.0.1", 2),
            ("10.0.0.9/32", "10.0.0.9", "10.0.0.9", 1),
            ("10.0.0.0/16", "10.0.0.2", "10.0.255.254", 65533),
        ];
        for (cidr, first, last, cap) in rows {
            assert_eq!(range(c(cidr)), (ip(first), ip(last)), "{cidr}");
            assert_eq!(capacity(c(cidr)), cap, "{cidr}");
        }
    }

    #[test]
    fn next_free_table() {
        let used = |l: &[&str]| l.iter().map(|s| ip(s)).collect::<HashSet<_>>();
        let cidr = c("10.0.0.0/29"); // allocatable .2 ..= .6
        let rows: &[(&[&str], Option<&str>, Option<&str>)] = &[
            (&[], None, Some("10.0.0.2")),
            (&["10.0.0.2"], None, Some("10.0.0.3")),
            (&[], Some("10.0.0.3"), Some("10.0.0.4")),
            (&[], Some("10.0.0.6"), Some("10.0.0.2")), // wraps
            (
                &["10.0.0.2", "10.0.0.3"],
                Some("10.0.0.6"),
                Some("10.0.0.4"),
            ),
            (&[], Some("192.168.0.1"), Some("10.0.0.2")), // last outside the range
            (
                &["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"],
                None,
                None,
            ),
        ];
        for (u, last, want) in rows {
            let got = next_free(cidr, &used(u), last.map(ip));
            assert_eq!(got, want.map(ip), "used={u:?} last={last:?}");
        }
    }

    #[test]
    fn exhaustive_allocation_never_repeats() {
        let cidr = c("10.1.0.0/26");
        let mut used = HashSet::new();
        let mut last = None;
        while let Some(a) = next_free(cidr, &used, last) {
            assert!(
                cidr.contains(&a) && a != cidr.network() && a != cidr.broadcast() && used.insert(a)
            );
            last = Some(a);
        }
        assert_eq!(used.len() as u64, capacity(cidr));
    }

    #[test]
    fn names_and_macs() {
        let n = host_if_name("abc", "eth0");
        assert_eq!(n.len(), 15);
        assert!(n.starts_with("kfw"));
        assert_ne!(n, host_if_name("abc", "eth1"));
        assert_eq!(n, host_if_name("abc", "eth0"));
        assert_eq!(pod_mac(ip("10.244.1.2")), [0x0a, 0x58, 10, 244, 1, 2]);
    }
}
