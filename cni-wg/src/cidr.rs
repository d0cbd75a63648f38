//! IPv4 prefixes (`ipnet::Ipv4Net`) parsed with the plugin's rules and messages: host bits are refused (with the
//! network meant), IPv6 is named as unsupported.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Why a CIDR string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// No `/` separator.
    #[error("{0:?} is not in CIDR notation (ADDRESS/PREFIX)")]
    NoPrefix(String),
    /// The address part is not an IPv4 address.
    #[error("{0:?} is not an IPv4 address (IPv6 pod CIDRs are not supported yet)")]
    BadAddress(String),
    /// The prefix is not a number in 0..=32.
    #[error("prefix {0:?} is not a number in 0..=32")]
    BadPrefix(String),
    /// Host bits are set.
    #[error("{0:?} has host bits set (did you mean {1}?)")]
    HostBits(String, String),
}

/// Parses an IPv4 network in CIDR notation, e.g. `10.244.1.0/24`; host bits must be zero.
pub fn parse(s: &str) -> Result<Ipv4Net, CidrError> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| CidrError::NoPrefix(s.into()))?;
    let addr: Ipv4Addr = a.parse().map_err(|_| CidrError::BadAddress(a.into()))?;
    let net = (p.parse::<u8>().ok())
        .and_then(|p| Ipv4Net::new(addr, p).ok())
        .ok_or_else(|| CidrError::BadPrefix(p.into()))?;
    if net.trunc() != net {
        return Err(CidrError::HostBits(s.into(), net.trunc().to_string()));
    }
    Ok(net)
}

/// Parses `ADDRESS/PREFIX` keeping host bits (an interface address such as `10.0.0.5/32`).
pub fn parse_ip_prefix(s: &str) -> Option<(Ipv4Addr, u8)> {
    let n: Ipv4Net = s.parse().ok()?;
    Some((n.addr(), n.prefix_len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let ok = [
            ("10.244.1.0/24", "10.244.1.255"),
            ("0.0.0.0/0", "255.255.255.255"),
            ("10.0.0.7/32", "10.0.0.7"),
        ];
        for (s, last) in ok {
            let c = parse(s).unwrap();
            assert_eq!(c.to_string(), s);
            assert_eq!(c.broadcast().to_string(), last);
        }
        let bad = [
            ("10.0.0.0", "CIDR notation"),
            ("10.0.0/24", "not an IPv4"),
            ("fd00::/64", "not an IPv4"),
            ("10.0.0.0/33", "prefix"),
            ("10.0.0.0/x", "prefix"),
            ("10.0.0.1/24", "did you mean 10.0.0.0/24"),
        ];
        for (s, msg) in bad {
            let e = parse(s).unwrap_err().to_string();
            assert!(e.contains(msg), "{s}: {e}");
        }
    }

    #[test]
    fn contains() {
        let c = parse("10.244.1.0/24").unwrap();
        assert!(c.contains(&"10.244.1.9".parse::<Ipv4Addr>().unwrap()));
        assert!(!c.contains(&"10.244.2.9".parse::<Ipv4Addr>().unwrap()));
        assert_eq!(
            parse_ip_prefix("10.1.2.3/32"),
            Some(("10.1.2.3".parse().unwrap(), 32))
        );
        assert_eq!(parse_ip_prefix("10.1.2.3"), None);
        assert_eq!(parse_ip_prefix("10.1.2.3/33"), None);
    }
}
