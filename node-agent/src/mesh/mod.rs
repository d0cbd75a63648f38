//! The WireGuard mesh: every Node with a podCIDR and a published key becomes a peer, its podCIDRs
//! routed through the userspace WireGuard interface of `kitfleet_dataplane`.
//!
//! Decide purely ([`nodes`], [`diff`]), act separately ([`run`] drives the data plane, [`routes`] and
//! the node state file; [`source`] and [`kube_source`] read Nodes and publish this node's annotations).

pub mod diff;
pub mod guard;
pub mod keyfile;
pub mod kube_source;
pub mod node_address;
pub mod nodes;
pub mod prefix;
pub mod routes;
pub mod run;
pub mod source;
pub mod underlay;

pub use run::{MeshConfig, cleanup, run};

/// Errors that stop the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error(transparent)]
    KeyFile(#[from] keyfile::KeyFileError),
    #[error("data plane: {0}")]
    DataPlane(#[from] kitfleet_dataplane::Error),
    #[error("node source: {0}")]
    Source(#[from] source::SourceError),
    #[error("routes: {0}")]
    Route(#[from] routes::RouteError),
    #[error(transparent)]
    State(#[from] kitfleet_cni_wg::state::StateError),
    #[error(
        "data plane on {interface} stopped (interface deleted?); restart the agent to recreate it"
    )]
    DataPlaneStopped { interface: String },
    #[error("cluster CIDRs: {0}")]
    ClusterCidrs(String),
    #[error("node {node}: no InternalIP in status.addresses and no --endpoint given")]
    NoEndpoint { node: String },
}
