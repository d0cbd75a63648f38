//! kitfleet-cni-wg: the `kitfleet-wg` CNI plugin (routed /32 pods, own IPAM, masquerade) and
//! the WireGuard data-plane library the node agent runs.
//!
//! The plugin half: [`cni`] (protocol, pure), [`ipam`] (allocation, pure + on-disk store),
//! [`netlink`] and [`netns`] (the kernel edge), [`plugin`] (the verbs), [`state`] (the node
//! state file shared with the node agent), [`nft`] (masquerade).

pub mod cidr;
pub mod cni;
pub mod ipam;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod plugin;
pub mod state;

pub mod dataplane;
