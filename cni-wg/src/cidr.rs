//! IPv4 CIDR parsing and arithmetic (pure).
#![forbid(unsafe_code)]

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network in CIDR notation, e.g. `10.244.1.0/24`. Host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

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

impl Ipv4Cidr {
    /// Builds a CIDR, masking host bits.
    pub fn new_masked(addr: Ipv4Addr, prefix: u8) -> Self {
        let prefix = prefix.min(32);
        Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        }
    }
    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.addr
    }
    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
    /// The last address (broadcast for prefixes < 31).
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask(self.prefix))
    }
    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| CidrError::NoPrefix(s.into()))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| CidrError::BadAddress(a.into()))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| CidrError::BadPrefix(p.into()))?;
        let c = Self::new_masked(addr, prefix);
        if c.addr != addr {
            return Err(CidrError::HostBits(s.into(), c.to_string()));
        }
        Ok(c)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parses `ADDRESS/PREFIX` keeping host bits (an interface address such as `10.0.0.5/32`).
pub fn parse_ip_prefix(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let p: u8 = p.parse().ok().filter(|p| *p <= 32)?;
    Some((a.parse().ok()?, p))
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
            let c: Ipv4Cidr = s.parse().unwrap();
            assert_eq!(c.to_string(), s);
            assert_eq!(c.last().to_string(), last);
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
            let e = s.parse::<Ipv4Cidr>().unwrap_err().to_string();
            assert!(e.contains(msg), "{s}: {e}");
        }
    }

    #[test]
    fn contains() {
        let c: Ipv4Cidr = "10.244.1.0/24".parse().unwrap();
        assert!(c.contains("10.244.1.9".parse().unwrap()));
        assert!(!c.contains("10.244.2.9".parse().unwrap()));
        assert_eq!(
            parse_ip_prefix("10.1.2.3/32"),
            Some(("10.1.2.3".parse().unwrap(), 32))
        );
        assert_eq!(parse_ip_prefix("10.1.2.3"), None);
    }
}
