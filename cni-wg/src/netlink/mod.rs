//! A small synchronous rtnetlink client: exactly the link, address, route and neighbour
//! operations the plugin needs, one socket per network namespace.
#![forbid(unsafe_code)]

pub mod wire;

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    socket,
};

use wire::*;

/// A failed netlink operation: what was attempted, on what, and the kernel's answer.
#[derive(Debug, thiserror::Error)]
#[error("netlink {op} {target}: {errno}")]
pub struct NetlinkError {
    /// The operation, e.g. `create veth`.
    pub op: &'static str,
    /// The object, e.g. the interface name.
    pub target: String,
    /// The errno.
    pub errno: Errno,
}

/// Result alias for netlink operations.
pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;

/// A link as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Name (`IFLA_IFNAME`).
    pub name: String,
    /// ifindex.
    pub index: i32,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// MAC as `aa:bb:…`.
    pub mac: String,
    /// `IFLA_INFO_KIND` (e.g. `veth`), empty when none.
    pub kind: String,
}

/// An IPv4 route as read back from the kernel (main table only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub dst: Ipv4Addr,
    /// Destination prefix length.
    pub prefix: u8,
    /// Gateway.
    pub gw: Option<Ipv4Addr>,
    /// Output interface index.
    pub oif: Option<i32>,
}

/// One rtnetlink socket (bound to the network namespace it was created in).
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

/// Formats a MAC address.
pub fn format_mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        Self::open_protocol(SockProtocol::NetlinkRoute)
    }

    fn open_protocol(protocol: SockProtocol) -> Result<Self> {
        let err = |errno| NetlinkError {
            op: "open socket",
            target: String::new(),
            errno,
        };
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            protocol,
        )
        .map_err(err)?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(err)?;
        Ok(Self {
            fd,
            seq: 1,
            buf: vec![0; 64 * 1024],
        })
    }

    fn send(&mut self, b: Builder) -> std::result::Result<u32, Errno> {
        self.seq = self.seq.wrapping_add(1);
        let msg = b.finish(self.seq);
        send(self.fd.as_fd().as_raw_fd(), &msg, MsgFlags::empty())?;
        Ok(self.seq)
    }

    /// Sends a request (an ACKed change or a dump) and collects its replies.
    fn exchange(&mut self, b: Builder) -> std::result::Result<Vec<Vec<u8>>, Errno> {
        let seq = self.send(b)?;
        self.replies(seq)
    }

    /// Collects the payloads answering `seq` until the kernel ends the exchange: an `NLMSG_ERROR` (the ACK of a
    /// request) or an `NLMSG_DONE` (the end of a dump), both of which carry an error code, 0 meaning success.
    fn replies(&mut self, seq: u32) -> std::result::Result<Vec<Vec<u8>>, Errno> {
        let mut out = Vec::new();
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty())?;
            for m in messages(&self.buf[..n]) {
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_ERROR | NLMSG_DONE => {
                        let code = u32_at(m.payload, 0) as i32;
                        return if code == 0 {
                            Ok(out)
                        } else {
                            Err(Errno::from_raw(-code))
                        };
                    }
                    _ => out.push(m.payload.to_vec()),
                }
            }
        }
    }

    /// Looks a link up by name; `None` when it does not exist.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        let b = Builder::new(RTM_GETLINK, NLM_F_ACK)
            .ifinfomsg(0, 0, 0)
            .attr_str(IFLA_IFNAME, name);
        match self.exchange(b) {
            Ok(replies) => Ok(replies.first().map(|p| parse_link(p))),
            Err(Errno::ENODEV) => Ok(None),
            Err(errno) => Err(NetlinkError {
                op: "get link",
                target: name.into(),
                errno,
            }),
        }
    }

    /// Looks a link up by ifindex; `None` when it does not exist.
    pub fn link_by_index(&mut self, index: i32) -> Result<Option<Link>> {
        let b = Builder::new(RTM_GETLINK, NLM_F_ACK).ifinfomsg(index, 0, 0);
        match self.exchange(b) {
            Ok(replies) => Ok(replies.first().map(|p| parse_link(p))),
            Err(Errno::ENODEV) => Ok(None),
            Err(errno) => Err(NetlinkError {
                op: "get link",
                target: format!("ifindex {index}"),
                errno,
            }),
        }
    }

    /// Deletes the link with ifindex `index` only if it is still named `name` and of `kind`
    /// (an index may belong to an unrelated link by now: after a reboot, or a wrap). `Ok(false)`
    /// when there is no such link. The check and the deletion are two requests; the kernel
    /// hands out a freed index again only after a wrap, so nothing can slip in between.
    pub fn delete_link_checked(&mut self, index: i32, name: &str, kind: &str) -> Result<bool> {
        match self.link_by_index(index)? {
            Some(l) if l.name == name && l.kind == kind => self.delete_link_index(index),
            Some(l) => {
                tracing::warn!(index, want = name, want_kind = kind, found = %l.name, found_kind = %l.kind,
                    "ifindex now belongs to another link; not deleting it");
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// Creates a veth pair: `host` here, `peer` directly inside the namespace behind `peer_ns`.
    pub fn create_veth(
        &mut self,
        host: (&str, [u8; 6]),
        peer: (&str, [u8; 6]),
        peer_ns: impl AsFd,
        mtu: u32,
    ) -> Result<()> {
        let ns = peer_ns.as_fd().as_raw_fd() as u32;
        let b = Builder::new(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            .ifinfomsg(0, 0, 0)
            .attr_str(IFLA_IFNAME, host.0)
            .attr(IFLA_ADDRESS, &host.1)
            .attr_u32(IFLA_MTU, mtu);
        let (b, info) = b.begin(IFLA_LINKINFO);
        let (b, data) = b.attr_str(IFLA_INFO_KIND, "veth").begin(IFLA_INFO_DATA);
        let (b, p) = b.begin(VETH_INFO_PEER);
        let b = b
            .raw(|r| r.ifinfomsg(0, 0, 0))
            .attr_str(IFLA_IFNAME, peer.0)
            .attr(IFLA_ADDRESS, &peer.1)
            .attr_u32(IFLA_MTU, mtu)
            .attr_u32(IFLA_NET_NS_FD, ns)
            .end(p)
            .end(data)
            .end(info);
        self.exchange(b).map(drop).map_err(|errno| NetlinkError {
            op: "create veth",
            target: host.0.into(),
            errno,
        })
    }

    /// Sets a link up.
    pub fn set_up(&mut self, index: i32) -> Result<()> {
        let b = Builder::new(RTM_NEWLINK, NLM_F_ACK).ifinfomsg(index, IFF_UP, IFF_UP);
        self.exchange(b).map(drop).map_err(|errno| NetlinkError {
            op: "set up",
            target: format!("ifindex {index}"),
            errno,
        })
    }

    /// Deletes a link by ifindex; `Ok(false)` when it did not exist. Indexes are not reused
    /// while a namespace lives (until they wrap), so this never hits a newer link of that name.
    pub fn delete_link_index(&mut self, index: i32) -> Result<bool> {
        let b = Builder::new(RTM_DELLINK, NLM_F_ACK).ifinfomsg(index, 0, 0);
        match self.exchange(b) {
            Ok(_) => Ok(true),
            Err(Errno::ENODEV) => Ok(false),
            Err(errno) => Err(NetlinkError {
                op: "delete link",
                target: format!("ifindex {index}"),
                errno,
            }),
        }
    }

    /// Deletes a link by name; `Ok(false)` when it did not exist.
    pub fn delete_link(&mut self, name: &str) -> Result<bool> {
        let b = Builder::new(RTM_DELLINK, NLM_F_ACK)
            .ifinfomsg(0, 0, 0)
            .attr_str(IFLA_IFNAME, name);
        match self.exchange(b) {
            Ok(_) => Ok(true),
            Err(Errno::ENODEV) => Ok(false),
            Err(errno) => Err(NetlinkError {
                op: "delete link",
                target: name.into(),
                errno,
            }),
        }
    }

    /// Adds `ip/prefix` to a link.
    pub fn add_addr(&mut self, index: i32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        let b = Builder::new(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            .ifaddrmsg(prefix, RT_SCOPE_UNIVERSE, index as u32)
            .attr(IFA_LOCAL, &ip.octets())
            .attr(IFA_ADDRESS, &ip.octets());
        self.exchange(b).map(drop).map_err(|errno| NetlinkError {
            op: "add address",
            target: format!("{ip}/{prefix}"),
            errno,
        })
    }

    /// Adds a main-table route; `metrics` sets the route's MTU and advertised MSS.
    pub fn add_route(&mut self, r: &Route, scope: u8, metrics: Option<(u32, u32)>) -> Result<()> {
        let mut b = Builder::new(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            .rtmsg(r.prefix, scope);
        if r.prefix > 0 {
            b = b.attr(RTA_DST, &r.dst.octets());
        }
        if let Some(gw) = r.gw {
            b = b.attr(RTA_GATEWAY, &gw.octets());
        }
        if let Some(oif) = r.oif {
            b = b.attr_u32(RTA_OIF, oif as u32);
        }
        if let Some((mtu, advmss)) = metrics {
            let (m, at) = b.begin(RTA_METRICS);
            b = m
                .attr_u32(RTAX_MTU, mtu)
                .attr_u32(RTAX_ADVMSS, advmss)
                .end(at);
        }
        self.exchange(b).map(drop).map_err(|errno| NetlinkError {
            op: "add route",
            target: format!("{}/{}", r.dst, r.prefix),
            errno,
        })
    }

    /// Deletes a main-table route (`dst/prefix` out of `oif`); `Ok(false)` when it did not exist.
    pub fn delete_route(&mut self, dst: Ipv4Addr, prefix: u8, oif: i32) -> Result<bool> {
        let b = Builder::new(RTM_DELROUTE, NLM_F_ACK)
            .rtmsg(prefix, RT_SCOPE_NOWHERE)
            .attr(RTA_DST, &dst.octets())
            .attr_u32(RTA_OIF, oif as u32);
        match self.exchange(b) {
            Ok(_) => Ok(true),
            Err(Errno::ESRCH) => Ok(false),
            Err(errno) => Err(NetlinkError {
                op: "delete route",
                target: format!("{dst}/{prefix}"),
                errno,
            }),
        }
    }

    /// Adds (or replaces) a permanent neighbour entry.
    pub fn add_neigh(&mut self, index: i32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        let b = Builder::new(RTM_NEWNEIGH, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)
            .ndmsg(index, NUD_PERMANENT)
            .attr(NDA_DST, &ip.octets())
            .attr(NDA_LLADDR, &mac);
        self.exchange(b).map(drop).map_err(|errno| NetlinkError {
            op: "add neighbour",
            target: ip.to_string(),
            errno,
        })
    }

    /// IPv4 addresses (with prefix length) of a link.
    pub fn addrs(&mut self, index: i32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let b = Builder::new(RTM_GETADDR, NLM_F_DUMP).ifaddrmsg(0, 0, 0);
        let replies = self.exchange(b).map_err(|errno| NetlinkError {
            op: "dump addresses",
            target: String::new(),
            errno,
        })?;
        let mut out = Vec::new();
        for p in replies
            .iter()
            .filter(|p| p.len() >= 8 && p[0] == AF_INET && u32_at(p, 4) as i32 == index)
        {
            let addr = attrs(&p[8..])
                .find(|(t, _)| *t == IFA_LOCAL)
                .or_else(|| attrs(&p[8..]).find(|(t, _)| *t == IFA_ADDRESS));
            if let Some((_, a)) = addr.filter(|(_, a)| a.len() == 4) {
                out.push((Ipv4Addr::new(a[0], a[1], a[2], a[3]), p[1]));
            }
        }
        Ok(out)
    }

    /// IPv4 routes of the main table.
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        let b = Builder::new(RTM_GETROUTE, NLM_F_DUMP).rtmsg(0, 0);
        let replies = self.exchange(b).map_err(|errno| NetlinkError {
            op: "dump routes",
            target: String::new(),
            errno,
        })?;
        let mut out = Vec::new();
        for p in replies.iter().filter(|p| p.len() >= 12 && p[0] == AF_INET) {
            let mut table = u32::from(p[4]);
            let mut r = Route {
                dst: Ipv4Addr::UNSPECIFIED,
                prefix: p[1],
                gw: None,
                oif: None,
            };
            for (t, v) in attrs(&p[12..]) {
                let ip = || (v.len() == 4).then(|| Ipv4Addr::new(v[0], v[1], v[2], v[3]));
                match t {
                    RTA_DST => r.dst = ip().unwrap_or(r.dst),
                    RTA_GATEWAY => r.gw = ip(),
                    RTA_OIF => r.oif = Some(u32_at(v, 0) as i32),
                    RTA_TABLE => table = u32_at(v, 0),
                    _ => {}
                }
            }
            if table == u32::from(RT_TABLE_MAIN) {
                out.push(r);
            }
        }
        Ok(out)
    }
}

/// The handle of nftables table `ip <name>` in the calling thread's network namespace, `None`
/// when there is no such table. A table that was deleted (e.g. `nft flush ruleset`) and
/// created again gets a new handle.
pub fn nft_table_handle(name: &str) -> Result<Option<u64>> {
    let mut nl = Netlink::open_protocol(SockProtocol::NetlinkNetFilter)?;
    let b = Builder::new((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE, NLM_F_ACK)
        .nfgenmsg(NFPROTO_IPV4)
        .attr_str(NFTA_TABLE_NAME, name);
    match nl.exchange(b) {
        Ok(replies) => Ok(replies.first().and_then(|p| {
            attrs(p.get(4..).unwrap_or_default())
                .find(|(t, v)| *t == NFTA_TABLE_HANDLE && v.len() == 8)
                .map(|(_, v)| u64::from_be_bytes(v.try_into().unwrap_or_default()))
        })),
        Err(Errno::ENOENT) => Ok(None),
        Err(errno) => Err(NetlinkError {
            op: "get nft table",
            target: name.into(),
            errno,
        }),
    }
}

/// Deletes nftables table `ip <name>` in the calling thread's network namespace (one batch, as nf_tables requires
/// for changes). `false` when there was no such table.
pub fn nft_delete_table(name: &str) -> Result<bool> {
    let mut nl = Netlink::open_protocol(SockProtocol::NetlinkNetFilter)?;
    let err = |errno| NetlinkError {
        op: "delete nft table",
        target: name.into(),
        errno,
    };
    let seq = nl.seq.wrapping_add(1);
    nl.seq = seq.wrapping_add(2);
    let mut batch = Builder::new(NFNL_MSG_BATCH_BEGIN, 0)
        .nfgenmsg_batch(NFNL_SUBSYS_NFTABLES)
        .finish(seq);
    batch.extend(
        Builder::new((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE, NLM_F_ACK)
            .nfgenmsg(NFPROTO_IPV4)
            .attr_str(NFTA_TABLE_NAME, name)
            .finish(seq.wrapping_add(1)),
    );
    batch.extend(
        Builder::new(NFNL_MSG_BATCH_END, 0)
            .nfgenmsg_batch(NFNL_SUBSYS_NFTABLES)
            .finish(seq.wrapping_add(2)),
    );
    send(nl.fd.as_fd().as_raw_fd(), &batch, MsgFlags::empty()).map_err(err)?;
    match nl.replies(seq.wrapping_add(1)) {
        Ok(_) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(errno) => Err(err(errno)),
    }
}

fn parse_link(p: &[u8]) -> Link {
    let mut l = Link {
        name: String::new(),
        index: u32_at(p, 4) as i32,
        mtu: 0,
        up: u32_at(p, 8) & IFF_UP != 0,
        mac: String::new(),
        kind: String::new(),
    };
    for (t, v) in attrs(p.get(16..).unwrap_or_default()) {
        match t {
            IFLA_MTU => l.mtu = u32_at(v, 0),
            IFLA_IFNAME => {
                l.name = String::from_utf8_lossy(v)
                    .trim_end_matches('\0')
                    .to_string()
            }
            IFLA_ADDRESS => l.mac = format_mac(v),
            IFLA_LINKINFO => {
                if let Some((_, k)) = attrs(v).find(|(t, _)| *t == IFLA_INFO_KIND) {
                    l.kind = String::from_utf8_lossy(k)
                        .trim_end_matches('\0')
                        .to_string();
                }
            }
            _ => {}
        }
    }
    l
}
