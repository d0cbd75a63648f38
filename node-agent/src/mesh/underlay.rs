//! The underlay: which interface carries the node's InternalIP, and its MTU.

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// WireGuard overhead budgeted for pods: outer IPv6 (40) + UDP (8) + WireGuard header and tag (32).
pub const WIREGUARD_OVERHEAD: u32 = 80;

/// The name of the interface holding `ip`, if any.
pub fn interface_with(ip: IpAddr) -> Option<String> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` walks the list getifaddrs returned; every node and its sockaddr stay valid until freeifaddrs.
        unsafe {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() {
                let fam = i32::from((*ifa.ifa_addr).sa_family);
                let addr = if fam == libc::AF_INET {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))))
                } else if fam == libc::AF_INET6 {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr)))
                } else {
                    None
                };
                if addr == Some(ip) {
                    found = Some(CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned());
                    break;
                }
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// MTU of the interface holding `ip`.
pub fn mtu_for(ip: IpAddr) -> Option<(String, u32)> {
    let name = interface_with(ip)?;
    let mtu = kitfleet_cni_wg::dataplane::tun::mtu(&name).ok()?;
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
