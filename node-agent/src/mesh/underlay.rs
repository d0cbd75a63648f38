//! The underlay: which interface carries the node's InternalIP, and its MTU.

use std::net::IpAddr;

/// WireGuard overhead budgeted for pods: outer IPv6 (40) + UDP (8) + WireGuard header and tag (32).
pub const WIREGUARD_OVERHEAD: u32 = 80;

/// The name of the interface holding `ip`, if any.
pub fn interface_with(ip: IpAddr) -> Option<String> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    addrs
        .filter(|a| {
            let Some(sa) = a.address.as_ref() else {
                return false;
            };
            let have = match (sa.as_sockaddr_in(), sa.as_sockaddr_in6()) {
                (Some(v4), _) => IpAddr::V4(v4.ip()),
                (None, Some(v6)) => IpAddr::V6(v6.ip()),
                (None, None) => return false,
            };
            have == ip
        })
        .map(|a| a.interface_name)
        .next()
}

/// MTU of the interface holding `ip`.
pub fn mtu_for(ip: IpAddr) -> Option<(String, u32)> {
    let name = interface_with(ip)?;
    let mtu = kitfleet_dataplane::tun::mtu(&name).ok()?;
    Some((name, mtu))
}

/// Pod MTU for an underlay MTU.
pub fn pod_mtu(underlay: u32) -> u32 {
    underlay.saturating_sub(WIREGUARD_OVERHEAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_with_its_mtu() {
        let (name, mtu) = mtu_for("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(name, "lo");
        assert!(mtu >= 1500);
        assert_eq!(interface_with("192.0.2.254".parse().unwrap()), None);
        assert_eq!(pod_mtu(1500), 1420);
        assert_eq!(pod_mtu(9000), 8920);
    }
}
