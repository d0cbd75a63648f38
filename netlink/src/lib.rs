//! Kitfleet's one netlink layer, shared by the CNI plugin (`kitfleet-wg`) and the node agent.
//!
//! Requests are typed `netlink-packet-route` messages (nf_tables: [`nft::NftMessage`] on `netlink-packet-core`),
//! built by pure functions ([`route::msg`]) and sent over a synchronous `netlink-sys` socket ([`Netlink`]). Every
//! receive buffer goes through [`reply::parse`], which refuses any message whose sequence number or port id is not
//! the request's; a failure names the operation and its target ([`NetlinkError`]).
//!
//! Synchronous on purpose: the plugin is a short-lived process whose latency is the sum of a dozen round trips to
//! the kernel, and the agent makes a handful of route changes per mesh change (see the README for why the agent
//! does not use `rtnetlink`'s async connection).
#![forbid(unsafe_code)]

pub mod nft;
pub mod reply;
pub mod route;
mod socket;

pub use netlink_packet_route::AddressFamily;
pub use netlink_packet_route::route::{RouteProtocol, RouteScope};
pub use nft::{nft_delete_table, nft_table_handle};
pub use reply::ReplyError;
pub use route::{Link, Netlink, Route, RouteEntry, RouteSpec, format_mac};

use nix::errno::Errno;
use socket::Failure;

/// A failed netlink operation: what was attempted, on what, and why.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused the request.
    #[error("netlink {op} {target}: {errno}")]
    Kernel {
        /// The operation, e.g. `create veth`.
        op: &'static str,
        /// The object, e.g. the interface name.
        target: String,
        /// The kernel's answer.
        errno: Errno,
    },
    /// Opening, sending or receiving failed.
    #[error("netlink {op} {target}: socket: {source}")]
    Socket {
        /// The operation.
        op: &'static str,
        /// The object.
        target: String,
        /// The error.
        source: std::io::Error,
    },
    /// The reply was not the request's answer (wrong sequence number or port id, undecodable, overrun).
    #[error("netlink {op} {target}: bad reply: {source}")]
    Reply {
        /// The operation.
        op: &'static str,
        /// The object.
        target: String,
        /// What was wrong.
        source: ReplyError,
    },
}

/// Result alias for netlink operations.
pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;

impl NetlinkError {
    fn new(op: &'static str, target: String, f: Failure) -> Self {
        match f {
            Failure::Kernel(errno) => Self::Kernel { op, target, errno },
            Failure::Io(source) => Self::Socket { op, target, source },
            Failure::Reply(source) => Self::Reply { op, target, source },
        }
    }

    /// The operation, e.g. `create veth`.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Kernel { op, .. } | Self::Socket { op, .. } | Self::Reply { op, .. } => op,
        }
    }

    /// The object, e.g. the interface name.
    pub fn target(&self) -> &str {
        match self {
            Self::Kernel { target, .. }
            | Self::Socket { target, .. }
            | Self::Reply { target, .. } => target,
        }
    }

    /// The errno: the kernel's answer, the socket call's, or `EPROTO` for a bad reply.
    pub fn errno(&self) -> Errno {
        match self {
            Self::Kernel { errno, .. } => *errno,
            Self::Socket { source, .. } => Errno::from_raw(source.raw_os_error().unwrap_or(0)),
            Self::Reply { .. } => Errno::EPROTO,
        }
    }
}
