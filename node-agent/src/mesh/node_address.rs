//! The node's own address on the mesh interface: network+1 of its IPv4 podCIDR, the address the plugin's IPAM leaves to
//! the node (`kitfleet_cni_wg::ipam::range`).
//!
//! Without it, a packet the node itself sends to a pod on another node (the apiserver calling a webhook pod, a host
//! process, a host-network pod) leaves the mesh interface with the node's underlay address as its source, and the
//! receiving peer drops it: a peer's only allowed sources are its podCIDRs. With the address on the interface, the kernel
//! picks it as the source of every route through the interface, and the answer comes back through the mesh, because the
//! other nodes route this node's podCIDR to it.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use kitfleet_netlink::Netlink;

use super::guard;

/// The address the node takes on the mesh interface (pure): network+1 of the first IPv4 `own` podCIDR that lies inside
/// a cluster CIDR and is /30 or larger (smaller ones have no address to spare: IPAM hands all of them to pods).
pub fn node_address(own: &[IpNet], cluster: &[IpNet]) -> Option<Ipv4Addr> {
    own.iter()
        .filter(|c| c.prefix_len() <= 30)
        .filter(|c| cluster.iter().any(|outer| guard::covers(outer, c)))
        .find_map(|c| match c.network() {
            IpAddr::V4(n) => Some(Ipv4Addr::from(u32::from(n) + 1)),
            IpAddr::V6(_) => None,
        })
}

/// Gives `interface` the `/32` address `ip` unless it has it already. Returns whether it was added.
pub fn ensure(interface: &str, ip: Ipv4Addr) -> Result<bool, String> {
    let mut nl = Netlink::open().map_err(|e| e.to_string())?;
    let link = nl
        .link(interface)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("interface {interface} does not exist"))?;
    if nl
        .addrs(link.index)
        .map_err(|e| e.to_string())?
        .contains(&(ip, 32))
    {
        return Ok(false);
    }
    nl.add_addr(link.index, ip, 32).map_err(|e| e.to_string())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> IpNet {
        s.parse::<IpNet>().unwrap().trunc()
    }

    #[test]
    fn network_plus_one_of_the_first_trusted_ipv4_pod_cidr() {
        let cluster = [c("10.244.0.0/16")];
        let rows: &[(&[&str], Option<&str>)] = &[
            (&["10.244.1.0/24"], Some("10.244.1.1")),
            (&["fd00:1::/64", "10.244.2.0/24"], Some("10.244.2.1")),
            (&["10.99.0.0/24"], None),  // outside the cluster CIDRs
            (&["10.244.3.0/31"], None), // no address to spare
            (&["10.244.4.0/30"], Some("10.244.4.1")), // .2 is the one pod address
            (&["10.99.0.0/24", "10.244.5.0/24"], Some("10.244.5.1")),
            (&[], None),
        ];
        for (own, want) in rows {
            let own: Vec<IpNet> = own.iter().map(|s| c(s)).collect();
            assert_eq!(
                node_address(&own, &cluster),
                want.map(|w| w.parse().unwrap()),
                "{own:?}"
            );
        }
    }
}
