//! kitfleet-cni-wg: the `kitfleet-wg` CNI plugin (routed /32 pods, own IPAM, masquerade) and
//! the WireGuard data-plane library the node agent runs.
//!
//! The plugin half: [`cni`] (protocol, pure), [`ipam`] (allocation, pure + on-disk store),
//! [`netns`] and `kitfleet_netlink` (the kernel edge), [`plugin`] (the verbs), [`state`] (the node
//! state file shared with the node agent), [`nft`] (masquerade).

pub mod cidr;
pub mod cni;
pub mod ipam;
/// The netlink layer, now the shared crate `kitfleet-netlink` (kept here for the node agent until it imports it directly).
pub use kitfleet_netlink as netlink;
pub mod netns;
pub mod nft;
pub mod plugin;
pub mod state;

pub mod dataplane;
