//! kitfleet-cni-wg: the `kitfleet-wg` CNI plugin (routed /32 pods, own IPAM, masquerade). The
//! WireGuard data plane the node agent runs is its own crate, `kitfleet-dataplane` (`wg-dataplane/`);
//! this crate does not link it.
//!
//! Modules: [`cni`] (protocol, pure), [`ipam`] (allocation, pure + on-disk store),
//! [`netns`] and `kitfleet_netlink` (the kernel edge), [`plugin`] (the verbs), [`state`] (the node
//! state file shared with the node agent), [`nft`] (masquerade).

pub mod cidr;
pub mod cni;
pub mod ipam;
pub mod netns;
pub mod nft;
pub mod plugin;
pub mod state;
