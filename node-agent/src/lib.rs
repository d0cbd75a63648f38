//! kitfleet-node-agent: the node DaemonSet. Today: the WireGuard mesh ([`mesh`]).

pub mod mesh;
pub mod testbed;
