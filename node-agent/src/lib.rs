//! kitfleet-node-agent: the node DaemonSet. Today: the WireGuard mesh ([`mesh`]), the CSI node plugin for the
//! sandbox volume ([`csi`]) and the seccomp profile files ([`seccomp_profiles`]).

pub mod cleanup;
pub mod csi;
pub mod hardening;
pub mod mesh;
pub mod seccomp_profiles;
pub mod upgrade;
