//! rtnetlink operations (links, addresses, routes, neighbours) as typed `netlink-packet-route` messages. The message
//! builders are pure functions (tested by decoding what they encode); [`Netlink`] sends them.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;

use crate::socket::{Failure, Socket};
use crate::{NetlinkError, Result};

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
    /// `IFLA_INFO_KIND` (e.g. `veth`, `tun`), empty when none.
    pub kind: String,
}

/// An IPv4 main-table route, the CNI plugin's view.
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

/// A route to create or delete (main table, unicast).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination (host bits clear).
    pub dst: IpNet,
    /// Gateway.
    pub gw: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Scope (`RouteScope::NoWhere` matches any when deleting).
    pub scope: RouteScope,
    /// `rtm_protocol`: who made it (deletion matches it).
    pub protocol: RouteProtocol,
    /// Route MTU and advertised MSS.
    pub metrics: Option<(u32, u32)>,
}

/// One route of a dump, any family and table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination.
    pub dst: IpNet,
    /// Gateway.
    pub gw: Option<IpAddr>,
    /// Table (`RTA_TABLE`, else the header's).
    pub table: u32,
    /// `rtm_protocol`.
    pub protocol: u8,
    /// `rtm_type` (`RTN_UNICAST` 1, `RTN_LOCAL` 2…).
    pub kind: u8,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Metric (`RTA_PRIORITY`).
    pub metric: Option<u32>,
}

/// The main routing table.
pub const RT_TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// Formats a MAC address.
pub fn format_mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Pure builders of the requests [`Netlink`] sends.
pub mod msg {
    use super::*;

    /// `RTM_GETLINK` by name (`index` 0) or by index.
    pub fn get_link(name: Option<&str>, index: u32) -> RouteNetlinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if let Some(n) = name {
            m.attributes.push(LinkAttribute::IfName(n.into()));
        }
        RouteNetlinkMessage::GetLink(m)
    }

    /// `RTM_DELLINK` by name (`index` 0) or by index.
    pub fn del_link(name: Option<&str>, index: u32) -> RouteNetlinkMessage {
        match get_link(name, index) {
            RouteNetlinkMessage::GetLink(m) => RouteNetlinkMessage::DelLink(m),
            _ => unreachable!("get_link builds GetLink"),
        }
    }

    /// `RTM_NEWLINK` of a veth pair: `host` here, `peer` moved into the namespace behind `peer_ns_fd`.
    pub fn new_veth(
        host: (&str, [u8; 6]),
        peer: (&str, [u8; 6]),
        peer_ns_fd: i32,
        mtu: u32,
    ) -> RouteNetlinkMessage {
        let mut p = LinkMessage::default();
        p.attributes = vec![
            LinkAttribute::IfName(peer.0.into()),
            LinkAttribute::Address(peer.1.to_vec()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::NetNsFd(peer_ns_fd),
        ];
        let mut m = LinkMessage::default();
        m.attributes = vec![
            LinkAttribute::IfName(host.0.into()),
            LinkAttribute::Address(host.1.to_vec()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
            ]),
        ];
        RouteNetlinkMessage::NewLink(m)
    }

    /// `RTM_NEWLINK` setting `IFF_UP` on `index`.
    pub fn set_up(index: u32) -> RouteNetlinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        RouteNetlinkMessage::NewLink(m)
    }

    /// `RTM_NEWADDR` of `ip/prefix` (IPv4) on `index`.
    pub fn new_addr(index: u32, ip: Ipv4Addr, prefix: u8) -> RouteNetlinkMessage {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes = vec![
            AddressAttribute::Local(ip.into()),
            AddressAttribute::Address(ip.into()),
        ];
        RouteNetlinkMessage::NewAddress(m)
    }

    /// `RTM_GETADDR` dump of IPv4 addresses.
    pub fn dump_addrs() -> RouteNetlinkMessage {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        RouteNetlinkMessage::GetAddress(m)
    }

    /// `RTM_NEWROUTE` (`new`) or `RTM_DELROUTE` for `r` in the main table.
    pub fn route(r: &RouteSpec, new: bool) -> RouteNetlinkMessage {
        let mut m = RouteMessage::default();
        let h = &mut m.header;
        h.address_family = match r.dst {
            IpNet::V4(_) => AddressFamily::Inet,
            IpNet::V6(_) => AddressFamily::Inet6,
        };
        h.destination_prefix_length = r.dst.prefix_len();
        h.table = RouteHeader::RT_TABLE_MAIN;
        h.protocol = r.protocol;
        h.scope = r.scope;
        h.kind = RouteType::Unicast;
        if r.dst.prefix_len() > 0 {
            (m.attributes).push(RouteAttribute::Destination(r.dst.network().into()));
        }
        if let Some(gw) = r.gw {
            (m.attributes).push(RouteAttribute::Gateway(gw.into()));
        }
        if let Some(oif) = r.oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        m.attributes.push(RouteAttribute::Table(RT_TABLE_MAIN));
        if let Some((mtu, advmss)) = r.metrics {
            (m.attributes).push(RouteAttribute::Metrics(vec![
                RouteMetric::Mtu(mtu),
                RouteMetric::Advmss(advmss),
            ]));
        }
        if new {
            RouteNetlinkMessage::NewRoute(m)
        } else {
            RouteNetlinkMessage::DelRoute(m)
        }
    }

    /// `RTM_GETROUTE` dump of `family` (`Unspec`: every family).
    pub fn dump_routes(family: AddressFamily) -> RouteNetlinkMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = family;
        RouteNetlinkMessage::GetRoute(m)
    }

    /// `RTM_NEWNEIGH`: a permanent entry `ip` → `mac` on `index`.
    pub fn new_neigh(index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> RouteNetlinkMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)),
            NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
        ];
        RouteNetlinkMessage::NewNeighbour(m)
    }
}

/// Reads a link message.
pub fn parse_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        name: String::new(),
        index: m.header.index as i32,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        mac: String::new(),
        kind: String::new(),
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Address(mac) => l.mac = format_mac(mac),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = k.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// Reads a route message; `None` for a destination that is no IP prefix (e.g. MPLS).
pub fn parse_route(m: &RouteMessage) -> Option<RouteEntry> {
    let h = &m.header;
    let ip = |a: &RouteAddress| match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    let mut dst = match h.address_family {
        AddressFamily::Inet => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        AddressFamily::Inet6 => Some(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
        _ => None,
    };
    let mut e = RouteEntry {
        dst: IpNet::default(),
        gw: None,
        table: u32::from(h.table),
        protocol: h.protocol.into(),
        kind: h.kind.into(),
        oif: None,
        metric: None,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = ip(d),
            RouteAttribute::Gateway(g) => e.gw = ip(g),
            RouteAttribute::Oif(o) => e.oif = Some(*o),
            RouteAttribute::Table(t) => e.table = *t,
            RouteAttribute::Priority(p) => e.metric = Some(*p),
            _ => {}
        }
    }
    e.dst = IpNet::new(dst?, h.destination_prefix_length).ok()?.trunc();
    Some(e)
}

/// One rtnetlink socket, bound to the network namespace it was opened in.
#[derive(Debug)]
pub struct Netlink {
    sock: Socket,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        Socket::open(netlink_sys::protocols::NETLINK_ROUTE)
            .map(|sock| Self { sock })
            .map_err(|source| NetlinkError::Socket {
                op: "open socket",
                target: "NETLINK_ROUTE".into(),
                source,
            })
    }

    /// Sends `m` and returns its answer's messages.
    fn call(
        &mut self,
        op: &'static str,
        target: impl FnOnce() -> String,
        m: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.sock
            .request(m, flags)
            .map_err(|f| NetlinkError::new(op, target(), f))
    }

    /// Like [`Netlink::call`], with `absent` (e.g. `ENODEV`) meaning `Ok(None)`.
    fn call_opt(
        &mut self,
        op: &'static str,
        target: impl FnOnce() -> String,
        m: RouteNetlinkMessage,
        flags: u16,
        absent: Errno,
    ) -> Result<Option<Vec<RouteNetlinkMessage>>> {
        match self.sock.request(m, flags) {
            Ok(v) => Ok(Some(v)),
            Err(Failure::Kernel(e)) if e == absent => Ok(None),
            Err(f) => Err(NetlinkError::new(op, target(), f)),
        }
    }

    fn first_link(replies: Option<Vec<RouteNetlinkMessage>>) -> Option<Link> {
        replies?.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
            _ => None,
        })
    }

    /// Looks a link up by name; `None` when it does not exist.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        let m = msg::get_link(Some(name), 0);
        let r = self.call_opt("get link", || name.into(), m, NLM_F_ACK, Errno::ENODEV)?;
        Ok(Self::first_link(r))
    }

    /// Looks a link up by ifindex; `None` when it does not exist.
    pub fn link_by_index(&mut self, index: i32) -> Result<Option<Link>> {
        let m = msg::get_link(None, index as u32);
        let target = || format!("ifindex {index}");
        let r = self.call_opt("get link", target, m, NLM_F_ACK, Errno::ENODEV)?;
        Ok(Self::first_link(r))
    }

    /// Deletes the link with ifindex `index` only if it is still named `name` and of `kind` (an index may belong
    /// to an unrelated link by now: after a reboot, or a wrap). `Ok(false)` when there is no such link. The check
    /// and the deletion are two requests; the kernel hands out a freed index again only after a wrap, so nothing
    /// can slip in between.
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

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let m = msg::get_link(None, 0);
        let replies = self.call("dump links", String::new, m, NLM_F_DUMP)?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
                _ => None,
            })
            .collect())
    }

    /// Creates a veth pair: `host` here, `peer` directly inside the namespace behind `peer_ns`.
    pub fn create_veth(
        &mut self,
        host: (&str, [u8; 6]),
        peer: (&str, [u8; 6]),
        peer_ns: impl AsFd,
        mtu: u32,
    ) -> Result<()> {
        let m = msg::new_veth(host, peer, peer_ns.as_fd().as_raw_fd(), mtu);
        let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        self.call("create veth", || host.0.into(), m, flags)
            .map(drop)
    }

    /// Sets a link up.
    pub fn set_up(&mut self, index: i32) -> Result<()> {
        let target = || format!("ifindex {index}");
        self.call("set up", target, msg::set_up(index as u32), NLM_F_ACK)
            .map(drop)
    }

    /// Deletes a link by ifindex; `Ok(false)` when it did not exist. Indexes are not reused while a namespace
    /// lives (until they wrap), so this never hits a newer link of that name.
    pub fn delete_link_index(&mut self, index: i32) -> Result<bool> {
        let m = msg::del_link(None, index as u32);
        let target = || format!("ifindex {index}");
        let r = self.call_opt("delete link", target, m, NLM_F_ACK, Errno::ENODEV)?;
        Ok(r.is_some())
    }

    /// Deletes a link by name; `Ok(false)` when it did not exist.
    pub fn delete_link(&mut self, name: &str) -> Result<bool> {
        let m = msg::del_link(Some(name), 0);
        let r = self.call_opt("delete link", || name.into(), m, NLM_F_ACK, Errno::ENODEV)?;
        Ok(r.is_some())
    }

    /// Adds `ip/prefix` to a link.
    pub fn add_addr(&mut self, index: i32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        let m = msg::new_addr(index as u32, ip, prefix);
        let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        self.call("add address", || format!("{ip}/{prefix}"), m, flags)
            .map(drop)
    }

    /// IPv4 addresses (with prefix length) of a link.
    pub fn addrs(&mut self, index: i32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let replies = self.call("dump addresses", String::new, msg::dump_addrs(), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in &replies {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index as u32 {
                continue;
            }
            let pick = |local: bool| {
                a.attributes.iter().find_map(|x| match (x, local) {
                    (AddressAttribute::Local(IpAddr::V4(v)), true)
                    | (AddressAttribute::Address(IpAddr::V4(v)), false) => Some(*v),
                    _ => None,
                })
            };
            if let Some(ip) = pick(true).or_else(|| pick(false)) {
                out.push((ip, a.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// Adds a main-table route (`rtm_protocol` boot, as `ip route add`); `metrics` sets the route's MTU and
    /// advertised MSS.
    pub fn add_route(
        &mut self,
        r: &Route,
        scope: RouteScope,
        metrics: Option<(u32, u32)>,
    ) -> Result<()> {
        let spec = RouteSpec {
            dst: IpNet::V4(ipnet::Ipv4Net::new(r.dst, r.prefix).unwrap_or_default()),
            gw: r.gw.map(IpAddr::V4),
            oif: r.oif.map(|i| i as u32),
            scope,
            protocol: RouteProtocol::Boot,
            metrics,
        };
        self.add_route_spec(&spec)
    }

    /// Creates `r` exclusively (`NLM_F_EXCL`: an existing route is `EEXIST`, never replaced).
    pub fn add_route_spec(&mut self, r: &RouteSpec) -> Result<()> {
        let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        self.call(
            "add route",
            || r.dst.to_string(),
            msg::route(r, true),
            flags,
        )
        .map(drop)
    }

    /// Deletes `r` (matching its protocol and output interface); `Ok(false)` when it did not exist.
    pub fn delete_route_spec(&mut self, r: &RouteSpec) -> Result<bool> {
        let m = msg::route(r, false);
        let target = || r.dst.to_string();
        let gone = self.call_opt("delete route", target, m, NLM_F_ACK, Errno::ESRCH)?;
        Ok(gone.is_some())
    }

    /// Deletes a main-table route (`dst/prefix` out of `oif`); `Ok(false)` when it did not exist.
    pub fn delete_route(&mut self, dst: Ipv4Addr, prefix: u8, oif: i32) -> Result<bool> {
        self.delete_route_spec(&RouteSpec {
            dst: IpNet::V4(ipnet::Ipv4Net::new(dst, prefix).unwrap_or_default()),
            gw: None,
            oif: Some(oif as u32),
            scope: RouteScope::NoWhere,
            protocol: RouteProtocol::Boot,
            metrics: None,
        })
    }

    /// Adds (or replaces) a permanent neighbour entry.
    pub fn add_neigh(&mut self, index: i32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        let m = msg::new_neigh(index as u32, ip, mac);
        let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.call("add neighbour", || ip.to_string(), m, flags)
            .map(drop)
    }

    /// Every route of `family` (`AddressFamily::Unspec`: all), every table.
    pub fn dump_routes(&mut self, family: AddressFamily) -> Result<Vec<RouteEntry>> {
        let replies = self.call(
            "dump routes",
            String::new,
            msg::dump_routes(family),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => parse_route(r),
                _ => None,
            })
            .collect())
    }

    /// IPv4 routes of the main table.
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        Ok(self
            .dump_routes(AddressFamily::Inet)?
            .into_iter()
            .filter(|e| e.table == RT_TABLE_MAIN)
            .filter_map(|e| match e.dst {
                IpNet::V4(d) => Some(Route {
                    dst: d.network(),
                    prefix: d.prefix_len(),
                    gw: match e.gw {
                        Some(IpAddr::V4(g)) => Some(g),
                        _ => None,
                    },
                    oif: e.oif.map(|o| o as i32),
                }),
                IpNet::V6(_) => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};

    /// Encodes a request as the socket does and decodes it back.
    fn round_trip(m: RouteNetlinkMessage) -> RouteNetlinkMessage {
        let bytes = Socket::encode(m, NLM_F_ACK, 9);
        let len = NetlinkBuffer::new_checked(&bytes[..]).unwrap().length() as usize;
        assert_eq!(len, bytes.len());
        let back = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap();
        assert_eq!(back.header.sequence_number, 9);
        match back.payload {
            NetlinkPayload::InnerMessage(m) => m,
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn requests_decode_to_what_was_built() {
        let all = [
            msg::get_link(Some("eth0"), 0),
            msg::del_link(None, 4),
            msg::new_veth(
                ("h", [2, 0, 0, 0, 0, 1]),
                ("p", [2, 0, 0, 0, 0, 2]),
                5,
                1400,
            ),
            msg::set_up(3),
            msg::new_addr(3, Ipv4Addr::new(10, 0, 0, 5), 32),
            msg::dump_addrs(),
            msg::dump_routes(AddressFamily::Unspec),
            msg::new_neigh(3, Ipv4Addr::new(169, 254, 1, 1), [2, 0, 0, 0, 0, 1]),
        ];
        for m in all {
            assert_eq!(round_trip(m.clone()), m);
        }
    }

    #[test]
    fn routes_carry_destination_protocol_scope_and_metrics() {
        let spec = RouteSpec {
            dst: "10.244.1.0/24".parse().unwrap(),
            gw: None,
            oif: Some(7),
            scope: RouteScope::Link,
            protocol: RouteProtocol::Other(0x4b),
            metrics: Some((1400, 1360)),
        };
        let m = msg::route(&spec, true);
        assert_eq!(round_trip(m.clone()), m);
        let RouteNetlinkMessage::NewRoute(r) = m else {
            panic!()
        };
        let e = parse_route(&r).unwrap();
        assert_eq!(
            (e.dst, e.oif, e.protocol, e.table, e.kind),
            (spec.dst, Some(7), 0x4b, RT_TABLE_MAIN, 1)
        );
        assert_eq!(u8::from(r.header.scope), 253);
        // A default route has no RTA_DST; an IPv6 one is family AF_INET6.
        let mut d = spec.clone();
        d.dst = "0.0.0.0/0".parse().unwrap();
        d.gw = Some("169.254.1.1".parse().unwrap());
        let RouteNetlinkMessage::DelRoute(r) = msg::route(&d, false) else {
            panic!()
        };
        assert!(!(r.attributes.iter()).any(|a| matches!(a, RouteAttribute::Destination(_))));
        assert_eq!(parse_route(&r).unwrap().gw, d.gw);
        d.dst = "fd00:1::/64".parse().unwrap();
        let RouteNetlinkMessage::NewRoute(r) = msg::route(&d, true) else {
            panic!()
        };
        assert_eq!(r.header.address_family, AddressFamily::Inet6);
        assert_eq!(parse_route(&r).unwrap().dst, d.dst);
    }

    #[test]
    fn links_read_back() {
        let RouteNetlinkMessage::NewLink(mut m) =
            msg::new_veth(("h0", [2, 0, 0, 0, 0, 0xab]), ("p0", [0; 6]), 5, 1400)
        else {
            panic!()
        };
        m.header.index = 12;
        m.header.flags = LinkFlags::Up;
        let l = parse_link(&m);
        assert_eq!(
            (
                l.name.as_str(),
                l.index,
                l.mtu,
                l.up,
                l.mac.as_str(),
                l.kind.as_str()
            ),
            ("h0", 12, 1400, true, "02:00:00:00:00:ab", "veth")
        );
    }
}
