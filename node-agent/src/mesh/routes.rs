//! Routes to other nodes' podCIDRs through the WireGuard interface, over rtnetlink. Only routes the
//! agent made (its own `rtm_protocol`) on that interface are listed or deleted; routes are created
//! exclusively (`NLM_F_EXCL`, never `NLM_F_REPLACE`), so a route someone else owns is never replaced.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kitfleet_cni_wg::dataplane::Cidr;

use super::guard::{ForeignRoute, HostView};

/// `rtm_protocol` marking the agent's routes (values above RTPROT_STATIC are free for daemons).
pub const RTPROT_KITFLEET: u8 = 0x4b;

/// Errors of the route executor.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("interface {name:?}: not found")]
    NoInterface { name: String },
    #[error("route {target}: exists and is not the agent's; left alone")]
    NotOurs { target: String },
    #[error("netlink {op} {target}: {source}")]
    Netlink {
        op: &'static str,
        target: String,
        source: io::Error,
    },
}

/// The kernel routing table as the mesh uses it (a trait so the runner can be tested with a fake).
pub trait RouteTable: Send {
    /// The agent's routes through `dev`.
    fn list(&mut self, dev: &str) -> Result<BTreeSet<Cidr>, RouteError>;
    /// Everything in the routing tables (every table) except the agent's own routes through `dev`.
    fn host_view(&mut self, dev: &str) -> Result<HostView, RouteError>;
    /// Creates the route `cidr dev <dev>`; an existing route for it that is not the agent's is
    /// [`RouteError::NotOurs`] (never replaced), one that is the agent's is fine.
    fn add(&mut self, dev: &str, cidr: Cidr) -> Result<(), RouteError>;
    /// Deletes it; a route already gone is not an error.
    fn del(&mut self, dev: &str, cidr: Cidr) -> Result<(), RouteError>;
}

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;
const RTA_PRIORITY: u16 = 6;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const RTN_LOCAL: u8 = 2;

/// rtnetlink implementation, bound to the network namespace it was opened in.
#[derive(Debug)]
pub struct NetlinkRoutes {
    fd: std::os::fd::OwnedFd,
    seq: u32,
}

fn ifindex(dev: &str) -> Result<u32, RouteError> {
    let c =
        std::ffi::CString::new(dev).map_err(|_| RouteError::NoInterface { name: dev.into() })?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(RouteError::NoInterface { name: dev.into() })
    } else {
        Ok(i)
    }
}

fn push_attr(b: &mut Vec<u8>, ty: u16, data: &[u8]) {
    b.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(data);
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

impl NetlinkRoutes {
    pub fn open() -> Result<Self, RouteError> {
        let err = |source| RouteError::Netlink {
            op: "open",
            target: "NETLINK_ROUTE".into(),
            source,
        };
        // SAFETY: plain socket(2); the fd is wrapped in an OwnedFd right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        Ok(NetlinkRoutes { fd, seq: 1 })
    }

    fn message(&mut self, ty: u16, flags: u16, cidr: Option<Cidr>, oif: u32) -> Vec<u8> {
        self.seq += 1;
        let mut b = vec![0u8; 16];
        let family = match cidr.map(|c| c.addr()) {
            Some(IpAddr::V6(_)) => libc::AF_INET6 as u8,
            Some(IpAddr::V4(_)) => libc::AF_INET as u8,
            None => libc::AF_UNSPEC as u8,
        };
        let dst_len = cidr.map_or(0, |c| c.prefix());
        b.extend_from_slice(&[
            family,
            dst_len,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_KITFLEET,
            RT_SCOPE_LINK,
            RTN_UNICAST,
        ]);
        b.extend_from_slice(&0u32.to_ne_bytes());
        if let Some(c) = cidr {
            push_attr(&mut b, RTA_DST, &ip_bytes(c.addr()));
            push_attr(&mut b, RTA_OIF, &oif.to_ne_bytes());
            push_attr(&mut b, RTA_TABLE, &u32::from(RT_TABLE_MAIN).to_ne_bytes());
        }
        let len = b.len() as u32;
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        b[4..6].copy_from_slice(&ty.to_ne_bytes());
        b[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        b[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        b
    }

    /// Sends `msg` and collects reply payloads until ACK/DONE; a negative ACK becomes an error.
    fn exchange(&mut self, msg: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        use std::os::fd::AsRawFd;
        let fd = self.fd.as_raw_fd();
        // SAFETY: `msg` is a live buffer; the kernel address is implied for an unbound netlink socket.
        if unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: receives into a live buffer of `buf.len()` bytes.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let ty = u16::from_ne_bytes([rest[4], rest[5]]);
                if len < 16 || len > rest.len() {
                    return Err(io::Error::other("truncated netlink reply"));
                }
                let payload = &rest[16..len];
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code =
                            i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
                        return if code == 0 {
                            Ok(out)
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    _ => out.push(payload.to_vec()),
                }
                rest = &rest[len.next_multiple_of(4).min(rest.len())..];
            }
        }
    }
}

/// One route from a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    dst: Cidr,
    table: u32,
    protocol: u8,
    kind: u8,
    oif: Option<u32>,
    metric: Option<u32>,
}

impl Entry {
    fn ours(&self, oif: u32) -> bool {
        self.protocol == RTPROT_KITFLEET
            && self.table == u32::from(RT_TABLE_MAIN)
            && self.oif == Some(oif)
    }

    /// How `ip route` would describe it (for the log).
    fn describe(&self) -> String {
        let mut s = match self.kind {
            RTN_LOCAL => "local".to_string(),
            RTN_UNICAST => String::new(),
            k => format!("type {k}"),
        };
        if let Some(name) = self.oif.and_then(ifname) {
            s.push_str(&format!(" dev {name}"));
        }
        s.push_str(&format!(" proto {} table {}", self.protocol, self.table));
        if let Some(m) = self.metric {
            s.push_str(&format!(" metric {m}"));
        }
        s.trim_start().to_string()
    }
}

fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname requires; it NUL-terminates on success.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Parses one RTM_NEWROUTE payload.
fn parse_entry(p: &[u8]) -> Option<Entry> {
    if p.len() < 12 {
        return None;
    }
    let (family, dst_len, protocol, kind) = (p[0], p[1], p[5], p[7]);
    let mut table = u32::from(p[4]);
    let (mut dst, mut oif, mut metric) = (None, None, None);
    let mut a = &p[12..];
    while a.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([a[0], a[1]]));
        let ty = u16::from_ne_bytes([a[2], a[3]]);
        if len < 4 || len > a.len() {
            break;
        }
        let v = &a[4..len];
        let u32_of = |v: &[u8]| u32::from_ne_bytes([v[0], v[1], v[2], v[3]]);
        match (ty, v.len()) {
            (RTA_DST, 4) => dst = Some(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
            (RTA_DST, 16) => {
                dst = <[u8; 16]>::try_from(v)
                    .ok()
                    .map(|b| IpAddr::V6(Ipv6Addr::from(b)))
            }
            (RTA_OIF, 4) => oif = Some(u32_of(v)),
            (RTA_TABLE, 4) => table = u32_of(v),
            (RTA_PRIORITY, 4) => metric = Some(u32_of(v)),
            _ => {}
        }
        a = &a[len.next_multiple_of(4).min(a.len())..];
    }
    let dst = match (dst, family) {
        (Some(d), _) => d,
        (None, f) if f == libc::AF_INET6 as u8 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, f) if f == libc::AF_INET as u8 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        _ => return None,
    };
    Some(Entry {
        dst: Cidr::new(dst, dst_len)?,
        table,
        protocol,
        kind,
        oif,
        metric,
    })
}

impl NetlinkRoutes {
    fn dump(&mut self, dev: &str) -> Result<Vec<Entry>, RouteError> {
        let msg = self.message(RTM_GETROUTE, NLM_F_DUMP, None, 0);
        let replies = self.exchange(&msg).map_err(|source| RouteError::Netlink {
            op: "dump routes",
            target: dev.into(),
            source,
        })?;
        Ok(replies.iter().filter_map(|p| parse_entry(p)).collect())
    }
}

impl NetlinkRoutes {
    /// Deletes every route carrying the agent's protocol tag ([`RTPROT_KITFLEET`]) in the main table, whatever its
    /// interface (what `kitfleet-node-agent cleanup` leaves no trace of); returns what it deleted. Routes of any
    /// other protocol are never touched.
    pub fn purge_ours(&mut self) -> Result<Vec<Cidr>, RouteError> {
        let ours: Vec<Entry> = (self.dump("*")?.into_iter())
            .filter(|e| e.protocol == RTPROT_KITFLEET && e.table == u32::from(RT_TABLE_MAIN))
            .collect();
        let mut deleted = Vec::new();
        for e in ours {
            let msg = self.message(RTM_DELROUTE, NLM_F_ACK, Some(e.dst), e.oif.unwrap_or(0));
            match self.exchange(&msg) {
                Ok(_) => deleted.push(e.dst),
                Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {}
                Err(source) => {
                    return Err(RouteError::Netlink {
                        op: "delete route",
                        target: e.describe(),
                        source,
                    });
                }
            }
        }
        Ok(deleted)
    }
}

impl RouteTable for NetlinkRoutes {
    fn list(&mut self, dev: &str) -> Result<BTreeSet<Cidr>, RouteError> {
        let oif = ifindex(dev)?;
        Ok(self
            .dump(dev)?
            .into_iter()
            .filter(|e| e.ours(oif))
            .map(|e| e.dst)
            .collect())
    }

    fn host_view(&mut self, dev: &str) -> Result<HostView, RouteError> {
        let oif = ifindex(dev).ok();
        let foreign = self
            .dump(dev)?
            .into_iter()
            .filter(|e| oif.is_none_or(|o| !e.ours(o)))
            .map(|e| ForeignRoute {
                dst: e.dst,
                what: e.describe(),
                local: e.kind == RTN_LOCAL,
            })
            .collect();
        Ok(HostView { foreign })
    }

    fn add(&mut self, dev: &str, cidr: Cidr) -> Result<(), RouteError> {
        let oif = ifindex(dev)?;
        let msg = self.message(
            RTM_NEWROUTE,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            Some(cidr),
            oif,
        );
        let target = || format!("{cidr} dev {dev}");
        match self.exchange(&msg) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                if self.list(dev)?.contains(&cidr) {
                    Ok(())
                } else {
                    Err(RouteError::NotOurs { target: target() })
                }
            }
            Err(source) => Err(RouteError::Netlink {
                op: "add route",
                target: target(),
                source,
            }),
        }
    }

    fn del(&mut self, dev: &str, cidr: Cidr) -> Result<(), RouteError> {
        let oif = match ifindex(dev) {
            Ok(i) => i,
            Err(_) => return Ok(()),
        };
        let msg = self.message(RTM_DELROUTE, NLM_F_ACK, Some(cidr), oif);
        match self.exchange(&msg) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(source) => Err(RouteError::Netlink {
                op: "delete route",
                target: format!("{cidr} dev {dev}"),
                source,
            }),
        }
    }
}
