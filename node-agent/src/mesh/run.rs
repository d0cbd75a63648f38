//! The mesh runner: keys, data plane, annotations, peers, routes and the node state file, kept equal
//! to what the Nodes say.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use kitfleet_cni_wg::state::NodeState;
use kitfleet_dataplane::{self as dataplane, Config, DataPlane, PrivateKey};

use super::MeshError;
use super::diff::{self, Actual, Skip};
use super::guard::{self, Guard};
use super::keyfile;
use super::node_address;
use super::nodes::{ANNOTATION_ENDPOINT, ANNOTATION_PUBLIC_KEY, NodeInfo};
use super::routes::{RouteError, RouteTable};
use super::source::NodeSource;
use super::underlay;

/// Everything the mesh needs to know about this node.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub node_name: String,
    pub interface: String,
    pub listen_port: u16,
    pub key_file: PathBuf,
    pub state_file: PathBuf,
    /// Published endpoint; default `<InternalIP>:<listen_port>`.
    pub endpoint: Option<SocketAddr>,
    /// Underlay MTU; default the MTU of the interface holding the InternalIP (1500 if none).
    pub underlay_mtu: Option<u32>,
    /// The cluster's pod CIDRs (required): only podCIDRs inside them are routed; the state file
    /// lists them (not masqueraded).
    pub cluster_cidrs: Vec<IpNet>,
    pub keepalive: Option<u16>,
    /// How often the key file, own annotations and health are re-checked.
    pub resync: Duration,
}

/// How often the status lines are logged.
const STATUS_EVERY: Duration = Duration::from_secs(60);

enum Wake {
    Stop,
    Nodes(Result<Vec<k8s_openapi::api::core::v1::Node>, super::source::SourceError>),
    Tick,
}

struct Mesh<S, R> {
    cfg: MeshConfig,
    source: S,
    routes: R,
    key: PrivateKey,
    endpoint: SocketAddr,
    pod_mtu: u32,
    dp: DataPlane,
    actual: Actual,
    nodes: Vec<NodeInfo>,
    /// The build key the running kernel booted (`kitfleet.buildkey=` in /proc/cmdline), published once per start.
    booted_build_key: Option<String>,
    booted_published: bool,
    /// A route change failed: re-apply at the next resync.
    dirty: bool,
    /// Publishing the annotations failed: retry at the next resync.
    publish_pending: bool,
    /// When the last status line was logged.
    last_status: std::time::Instant,
    /// Nodes and podCIDRs left out at the last apply (logged when this changes).
    skipped: Vec<Skip>,
}

fn infos(nodes: &[k8s_openapi::api::core::v1::Node]) -> Vec<NodeInfo> {
    let infos: Vec<NodeInfo> = nodes.iter().map(NodeInfo::from_node).collect();
    for i in infos.iter().filter(|i| !i.problems.is_empty()) {
        tracing::warn!(node = %i.name, problems = ?i.problems, "Node fields ignored");
    }
    infos
}

/// Waits until this node appears in the source.
async fn own_node<S: NodeSource>(
    source: &mut S,
    name: &str,
) -> Result<(NodeInfo, Vec<NodeInfo>), MeshError> {
    loop {
        let all = infos(&source.next().await?);
        if let Some(me) = all.iter().find(|n| n.name == name) {
            return Ok((me.clone(), all));
        }
        tracing::warn!(
            node = name,
            "this node is not in the Node list yet; waiting"
        );
    }
}

/// Runs the mesh until `shutdown` completes. The TUN interface and its routes stay for the next start.
pub async fn run<S: NodeSource, R: RouteTable>(
    cfg: MeshConfig,
    mut source: S,
    routes: R,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MeshError> {
    if cfg.cluster_cidrs.is_empty() {
        return Err(MeshError::ClusterCidrs("none given".into()));
    }
    for c in &cfg.cluster_cidrs {
        guard::check_cluster_cidr(c).map_err(MeshError::ClusterCidrs)?;
    }
    let key = keyfile::load_or_create(&cfg.key_file)?;
    let mut shutdown = std::pin::pin!(shutdown);
    let (me, nodes) = tokio::select! {
        () = &mut shutdown => return Ok(()),
        found = own_node(&mut source, &cfg.node_name) => found?,
    };
    let endpoint = cfg
        .endpoint
        .or_else(|| {
            me.internal_ip
                .map(|ip| SocketAddr::new(ip, cfg.listen_port))
        })
        .ok_or_else(|| MeshError::NoEndpoint {
            node: cfg.node_name.clone(),
        })?;
    let underlay = match cfg.underlay_mtu {
        Some(m) => m,
        None => match underlay::mtu_for(endpoint.ip()) {
            Some((dev, m)) => {
                tracing::info!(underlay = dev, mtu = m, "underlay MTU detected");
                m
            }
            None => {
                tracing::warn!(ip = %endpoint.ip(), "no local interface holds the endpoint IP; assuming MTU 1500");
                1500
            }
        },
    };
    let pod_mtu = underlay::pod_mtu(underlay);
    let dp = DataPlane::start(Config {
        interface: cfg.interface.clone(),
        listen_port: cfg.listen_port,
        private_key: key.clone(),
        mtu: pod_mtu,
    })?;
    let mut routes = routes;
    let existing = routes.list(dp.interface())?;
    let actual = Actual {
        peers: BTreeMap::new(),
        routes: existing,
    };
    let booted =
        crate::upgrade::booted::booted_build_key(crate::upgrade::booted::PROC_CMDLINE.as_ref());
    let mut mesh = Mesh {
        cfg,
        source,
        routes,
        key,
        endpoint,
        pod_mtu,
        dp,
        actual,
        nodes: Vec::new(),
        booted_build_key: booted.clone(),
        booted_published: booted.is_none(),
        dirty: false,
        publish_pending: false,
        last_status: std::time::Instant::now(),
        skipped: Vec::new(),
    };
    mesh.publish_if_needed(&me).await;
    mesh.apply(nodes)?;
    let mut tick = tokio::time::interval(mesh.cfg.resync);
    loop {
        let wake = tokio::select! {
            () = &mut shutdown => Wake::Stop,
            nodes = mesh.source.next() => Wake::Nodes(nodes),
            _ = tick.tick() => Wake::Tick,
        };
        match wake {
            Wake::Stop => break,
            Wake::Nodes(nodes) => {
                let all = infos(&nodes?);
                if let Some(me) = all.iter().find(|n| n.name == mesh.cfg.node_name) {
                    let me = me.clone();
                    mesh.publish_if_needed(&me).await;
                }
                mesh.apply(all)?;
            }
            Wake::Tick => mesh.resync().await?,
        }
    }
    mesh.write_state(false)?;
    mesh.dp.stop();
    tracing::info!("mesh stopped; the TUN interface stays for the next start");
    Ok(())
}

impl<S: NodeSource, R: RouteTable> Mesh<S, R> {
    fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                ANNOTATION_PUBLIC_KEY.to_string(),
                self.key.public_key().to_string(),
            ),
            (ANNOTATION_ENDPOINT.to_string(), self.endpoint.to_string()),
        ])
        .into_iter()
        .chain(self.booted_build_key.clone().map(|k| {
            let key = kitfleet_api::constants::ANNOTATION_BOOTED_BUILD_KEY;
            (key.to_string(), k)
        }))
        .collect()
    }

    async fn publish_if_needed(&mut self, me: &NodeInfo) {
        if me.public_key == Some(self.key.public_key())
            && me.endpoint == Some(self.endpoint)
            && self.booted_published
        {
            return;
        }
        self.publish().await;
    }

    /// Publishes key and endpoint; a failure is logged and retried at the next resync.
    async fn publish(&mut self) {
        tracing::info!(node = %self.cfg.node_name, public_key = %self.key.public_key(), endpoint = %self.endpoint, "publishing annotations");
        let ann = self.annotations();
        match self.source.publish(&self.cfg.node_name, &ann).await {
            Ok(()) => {
                self.publish_pending = false;
                self.booted_published = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "publishing annotations failed; retrying");
                self.publish_pending = true;
            }
        }
    }

    /// Makes peers and routes equal to what `nodes` ask for, then rewrites the state file.
    fn apply(&mut self, nodes: Vec<NodeInfo>) -> Result<(), MeshError> {
        let guard = Guard {
            cluster_cidrs: self.cfg.cluster_cidrs.clone(),
            host: self.routes.host_view(self.dp.interface())?,
        };
        let want = diff::desired(
            &self.cfg.node_name,
            &self.key.public_key(),
            &nodes,
            self.cfg.keepalive,
            &guard,
        );
        if want.skipped != self.skipped {
            log_skips(&want.skipped);
            self.skipped = want.skipped.clone();
        }
        let plan = diff::diff(&self.actual, &want);
        if !plan.is_empty() {
            tracing::info!(?plan, "applying mesh plan");
        }
        if plan.peers_changed() {
            self.dp.set_peers(want.peers.values().cloned().collect())?;
            self.actual.peers = want.peers.clone();
        }
        let dev = self.dp.interface().to_string();
        self.dirty = false;
        for r in plan.del_routes {
            match self.routes.del(&dev, r) {
                Ok(()) => drop(self.actual.routes.remove(&r)),
                Err(e) => self.route_failed(e),
            }
        }
        for r in plan.add_routes {
            match self.routes.add(&dev, r) {
                Ok(()) => drop(self.actual.routes.insert(r)),
                Err(e) => self.route_failed(e),
            }
        }
        self.ensure_node_address(&nodes);
        self.nodes = nodes;
        self.write_state(self.dp.is_running())
    }

    /// Puts the node's own address on the mesh interface (see [`node_address`]); a failure is logged and retried at
    /// the next apply, since pods keep working without it (only the node's own traffic to remote pods needs it).
    fn ensure_node_address(&self, nodes: &[NodeInfo]) {
        let Some(me) = nodes.iter().find(|n| n.name == self.cfg.node_name) else {
            return;
        };
        let Some(ip) = node_address::node_address(&me.pod_cidrs, &self.cfg.cluster_cidrs) else {
            return;
        };
        match node_address::ensure(self.dp.interface(), ip) {
            Ok(true) => {
                tracing::info!(interface = self.dp.interface(), %ip, "node address added to the mesh interface")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(interface = self.dp.interface(), %ip, error = %e, "cannot add the node address to the mesh interface; retrying at the next change")
            }
        }
    }

    /// One line per peer: endpoint, handshake age, bytes (what `wg show` would say).
    fn log_status(&self) {
        let Ok(st) = self.dp.stats() else { return };
        let c = &st.counters;
        tracing::info!(interface = %st.interface, peers = st.peers.len(), skipped = self.skipped.len(), gso = c.gso, gro = c.gro,
            tun_reads = c.tun_reads, tun_writes = c.tun_writes, udp_datagrams_in = c.udp_datagrams_in,
            dropped_no_peer = c.dropped_no_peer, dropped_bad_source = c.dropped_bad_source, "mesh status");
        for p in &st.peers {
            tracing::info!(peer = %p.public_key, endpoint = ?p.endpoint, handshake_age = ?p.last_handshake,
                tx_bytes = p.tx_bytes, rx_bytes = p.rx_bytes, "mesh peer");
        }
    }

    fn route_failed(&mut self, e: RouteError) {
        if let RouteError::NotOurs { target } = &e {
            // Someone else routes it (it appeared after the check): leave it, do not retry.
            tracing::warn!(route = %target, reason = %e, "route skipped");
            return;
        }
        tracing::warn!(error = %e, "route change failed; retrying at the next resync");
        self.dirty = true;
    }

    /// Picks up a rotated key file, re-publishes own annotations if they drifted, refreshes health.
    async fn resync(&mut self) -> Result<(), MeshError> {
        if !self.dp.is_running() {
            self.write_state(false)?;
            return Err(MeshError::DataPlaneStopped {
                interface: self.dp.interface().to_string(),
            });
        }
        let key = keyfile::load_or_create(&self.cfg.key_file)?;
        if key.public_key() != self.key.public_key() {
            tracing::info!(public_key = %key.public_key(), "key file changed; rotating");
            self.dp.set_private_key(key.clone())?;
            self.key = key;
            self.publish().await;
            // Peers are re-evaluated: a peer might have carried the new key.
            let nodes = std::mem::take(&mut self.nodes);
            return self.apply(nodes);
        }
        if self.publish_pending {
            self.publish().await;
        }
        if self.last_status.elapsed() >= STATUS_EVERY {
            self.last_status = std::time::Instant::now();
            self.log_status();
        }
        // Routes removed behind our back come back; failed changes are retried.
        let have = self.routes.list(self.dp.interface())?;
        if have != self.actual.routes || self.dirty {
            self.actual.routes = have;
            let nodes = std::mem::take(&mut self.nodes);
            return self.apply(nodes);
        }
        self.write_state(self.dp.is_running())
    }

    fn write_state(&self, healthy: bool) -> Result<(), MeshError> {
        let v4 = |c: &&IpNet| matches!(c, IpNet::V4(_));
        let own: Vec<String> = self
            .nodes
            .iter()
            .find(|n| n.name == self.cfg.node_name)
            .map(|n| {
                n.pod_cidrs
                    .iter()
                    .filter(v4)
                    .map(|c| c.to_string())
                    .collect()
            })
            .unwrap_or_default();
        let cluster: Vec<String> = (self.cfg.cluster_cidrs.iter())
            .filter(v4)
            .map(|c| c.to_string())
            .collect();
        let state = NodeState {
            pod_cidrs: own,
            mtu: self.pod_mtu,
            mesh_healthy: healthy,
            cluster_cidrs: cluster,
            wg_interface: self.dp.interface().to_string(),
            heartbeat: None,
        };
        // Rewritten when it changed or its heartbeat is due (the plugin reads a stale one as
        // "mesh down"), so the resync interval must stay well under HEARTBEAT_EVERY.
        state.refresh(&self.cfg.state_file, std::time::SystemTime::now())?;
        Ok(())
    }
}

/// Logs every skip with its fields: a refused podCIDR as a warning, a Node that is not a peer as info.
fn log_skips(skipped: &[Skip]) {
    for s in skipped {
        match &s.prefix {
            Some(p) => {
                tracing::warn!(node = %s.node, prefix = %p, reason = %s.reason, "prefix skipped")
            }
            None => tracing::info!(node = %s.node, reason = %s.reason, "Node is not a peer"),
        }
    }
}

/// Removes the persistent TUN interface (its routes go with it): `mesh --cleanup`.
pub fn cleanup(interface: &str) -> Result<(), MeshError> {
    Ok(dataplane::delete_interface(interface)?)
}
