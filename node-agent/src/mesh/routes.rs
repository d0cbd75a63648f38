//! Routes to other nodes' podCIDRs through the WireGuard interface, over rtnetlink (`kitfleet_netlink`: typed
//! messages, every reply checked against its request). Only routes the agent made (its own `rtm_protocol`) on that
//! interface are listed or deleted; routes are created exclusively (`NLM_F_EXCL`, never `NLM_F_REPLACE`), so a route
//! someone else owns is never replaced.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use kitfleet_netlink::{
    AddressFamily, Netlink, NetlinkError, RouteEntry, RouteProtocol, RouteScope, RouteSpec,
};
use nix::errno::Errno;

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
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// The kernel routing table as the mesh uses it (a trait so the runner can be tested with a fake).
pub trait RouteTable: Send {
    /// The agent's routes through `dev`.
    fn list(&mut self, dev: &str) -> Result<BTreeSet<IpNet>, RouteError>;
    /// Everything in the routing tables (every table) except the agent's own routes through `dev`.
    fn host_view(&mut self, dev: &str) -> Result<HostView, RouteError>;
    /// Creates the route `cidr dev <dev>`; an existing route for it that is not the agent's is
    /// [`RouteError::NotOurs`] (never replaced), one that is the agent's is fine.
    fn add(&mut self, dev: &str, cidr: IpNet) -> Result<(), RouteError>;
    /// Deletes it; a route already gone is not an error.
    fn del(&mut self, dev: &str, cidr: IpNet) -> Result<(), RouteError>;
}

const RTN_UNICAST: u8 = 1;
const RTN_LOCAL: u8 = 2;
const RT_TABLE_MAIN: u32 = kitfleet_netlink::route::RT_TABLE_MAIN;

/// rtnetlink implementation, bound to the network namespace it was opened in. Synchronous: the mesh changes a
/// handful of routes per peer change, each one kernel round trip of microseconds (see the README).
#[derive(Debug)]
pub struct NetlinkRoutes {
    nl: Netlink,
}

fn ours(e: &RouteEntry, oif: u32) -> bool {
    e.protocol == RTPROT_KITFLEET && e.table == RT_TABLE_MAIN && e.oif == Some(oif)
}

/// How `ip route` would describe `e` (for the log); `names` maps ifindex to name.
fn describe(e: &RouteEntry, names: &BTreeMap<u32, String>) -> String {
    let mut s = match e.kind {
        RTN_LOCAL => "local".to_string(),
        RTN_UNICAST => String::new(),
        k => format!("type {k}"),
    };
    if let Some(name) = e.oif.and_then(|i| names.get(&i)) {
        s.push_str(&format!(" dev {name}"));
    }
    s.push_str(&format!(" proto {} table {}", e.protocol, e.table));
    if let Some(m) = e.metric {
        s.push_str(&format!(" metric {m}"));
    }
    s.trim_start().to_string()
}

/// The route the agent makes for `dst` out of `oif`.
fn spec(dst: IpNet, oif: u32) -> RouteSpec {
    RouteSpec {
        dst,
        gw: None,
        oif: Some(oif),
        scope: RouteScope::Link,
        protocol: RouteProtocol::from(RTPROT_KITFLEET),
        metrics: None,
    }
}

impl NetlinkRoutes {
    pub fn open() -> Result<Self, RouteError> {
        Ok(NetlinkRoutes {
            nl: Netlink::open()?,
        })
    }

    fn ifindex(&mut self, dev: &str) -> Result<u32, RouteError> {
        match self.nl.link(dev)? {
            Some(l) => Ok(l.index as u32),
            None => Err(RouteError::NoInterface { name: dev.into() }),
        }
    }

    fn dump(&mut self) -> Result<Vec<RouteEntry>, RouteError> {
        Ok(self.nl.dump_routes(AddressFamily::Unspec)?)
    }

    /// Deletes every route carrying the agent's protocol tag ([`RTPROT_KITFLEET`]) in the main table, whatever its
    /// interface (what `kitfleet-node-agent cleanup` leaves no trace of); returns what it deleted. Routes of any
    /// other protocol are never touched.
    pub fn purge_ours(&mut self) -> Result<Vec<IpNet>, RouteError> {
        let ours = (self.dump()?.into_iter())
            .filter(|e| e.protocol == RTPROT_KITFLEET && e.table == RT_TABLE_MAIN);
        let mut deleted = Vec::new();
        for e in ours {
            let s = RouteSpec {
                dst: e.dst,
                oif: e.oif,
                ..spec(e.dst, 0)
            };
            if self.nl.delete_route_spec(&s)? {
                deleted.push(e.dst.trunc());
            }
        }
        Ok(deleted)
    }
}

impl RouteTable for NetlinkRoutes {
    fn list(&mut self, dev: &str) -> Result<BTreeSet<IpNet>, RouteError> {
        let oif = self.ifindex(dev)?;
        Ok((self.dump()?.into_iter())
            .filter(|e| ours(e, oif))
            .map(|e| e.dst.trunc())
            .collect())
    }

    fn host_view(&mut self, dev: &str) -> Result<HostView, RouteError> {
        let oif = self.ifindex(dev).ok();
        let names: BTreeMap<u32, String> = (self.nl.links()?.into_iter())
            .map(|l| (l.index as u32, l.name))
            .collect();
        let foreign = (self.dump()?.iter())
            .filter(|e| oif.is_none_or(|o| !ours(e, o)))
            .map(|e| ForeignRoute {
                dst: e.dst.trunc(),
                what: describe(e, &names),
                local: e.kind == RTN_LOCAL,
            })
            .collect();
        Ok(HostView { foreign })
    }

    fn add(&mut self, dev: &str, cidr: IpNet) -> Result<(), RouteError> {
        let oif = self.ifindex(dev)?;
        match self.nl.add_route_spec(&spec(cidr, oif)) {
            Ok(()) => Ok(()),
            Err(e) if e.errno() == Errno::EEXIST => {
                if self.list(dev)?.contains(&cidr) {
                    Ok(())
                } else {
                    Err(RouteError::NotOurs {
                        target: format!("{cidr} dev {dev}"),
                    })
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    fn del(&mut self, dev: &str, cidr: IpNet) -> Result<(), RouteError> {
        let oif = match self.ifindex(dev) {
            Ok(i) => i,
            Err(RouteError::NoInterface { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.nl.delete_route_spec(&spec(cidr, oif))?;
        Ok(())
    }
}
