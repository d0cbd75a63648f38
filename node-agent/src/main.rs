//! `kitfleet-node-agent`: parse the command line, build the context, run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ipnet::IpNet;
use kitfleet_node_agent::mesh::{
    self, MeshConfig, keyfile, kube_source::KubeSource, routes::NetlinkRoutes, source::DirSource,
};

#[derive(Debug, Parser)]
#[command(name = "kitfleet-node-agent", version, about = "Kitfleet node agent")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the WireGuard mesh for this node until SIGTERM/SIGINT.
    Mesh(MeshArgs),
    /// Replace the private key in KEY_FILE; a running `mesh` picks it up within its resync interval.
    RotateKey {
        #[arg(long, default_value = "/var/lib/kitfleet/wg.key")]
        key_file: PathBuf,
    },
    /// Delete the persistent WireGuard TUN interface (and with it the mesh routes).
    MeshCleanup {
        #[arg(long, default_value = "kfwg0")]
        interface: String,
    },
    /// Serve the CSI node plugin for the sandbox volume (sandbox.kitfleet.dev) until SIGTERM/SIGINT.
    Csi(kitfleet_node_agent::csi::cli::CsiArgs),
    /// Stage a node image (artifact or raw-efi disk) and boot it once (BootNext or kexec); `--commit` after a
    /// healthy boot makes it permanent in BootOrder.
    Upgrade(kitfleet_node_agent::upgrade::cli::UpgradeArgs),
    /// Watch this node's Node and move it to the build key the operator asks for (the upgrade DaemonSet).
    UpgradeAgent(kitfleet_node_agent::upgrade::agent_cli::AgentArgs),
    /// Remove everything the agent and the CNI plugin left on this node: TUN, tagged routes, nft table, conflist,
    /// plugin binary, state files, this Node's agent annotations (idempotent).
    Cleanup(kitfleet_node_agent::cleanup::local::CleanupArgs),
    /// Stop the node agents, then run `cleanup` on every node in a pinned pod (the chart's pre-delete hook).
    CleanupNodes(kitfleet_node_agent::cleanup::nodes::NodesArgs),
}

#[derive(Debug, clap::Args)]
struct MeshArgs {
    /// This node's name (the Node object).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Read Nodes from this directory of manifests instead of the apiserver.
    #[arg(long)]
    nodes_dir: Option<PathBuf>,
    /// How often the manifest directory is re-read, in milliseconds.
    #[arg(long, default_value_t = 200)]
    nodes_dir_poll_ms: u64,
    #[arg(long, default_value = "kfwg0")]
    interface: String,
    #[arg(long, default_value_t = mesh::nodes::DEFAULT_PORT)]
    listen_port: u16,
    #[arg(long, default_value = "/var/lib/kitfleet/wg.key")]
    key_file: PathBuf,
    #[arg(long, default_value = kitfleet_cni_wg::state::DEFAULT_STATE_FILE)]
    state_file: PathBuf,
    /// Endpoint to publish (default <InternalIP>:<listen-port>).
    #[arg(long)]
    endpoint: Option<SocketAddr>,
    /// Underlay MTU (default: MTU of the interface holding the endpoint IP).
    #[arg(long)]
    underlay_mtu: Option<u32>,
    /// The cluster's pod CIDR (required, repeatable): only podCIDRs inside them are routed, and
    /// traffic inside them is not masqueraded.
    #[arg(long = "cluster-cidr", env = "KITFLEET_CLUSTER_CIDRS", value_delimiter = ',',
          required = true, value_parser = mesh::guard::parse_cluster_cidr)]
    cluster_cidrs: Vec<IpNet>,
    /// Persistent keepalive in seconds (off by default).
    #[arg(long)]
    keepalive: Option<u16>,
    /// Key-file/annotation/route re-check interval in milliseconds.
    #[arg(long, default_value_t = 1000)]
    resync_ms: u64,
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

async fn run_mesh(a: MeshArgs) -> anyhow::Result<()> {
    let cfg = MeshConfig {
        node_name: a.node_name,
        interface: a.interface,
        listen_port: a.listen_port,
        key_file: a.key_file,
        state_file: a.state_file,
        endpoint: a.endpoint,
        underlay_mtu: a.underlay_mtu,
        cluster_cidrs: a.cluster_cidrs,
        keepalive: a.keepalive,
        resync: Duration::from_millis(a.resync_ms.max(50)),
    };
    let routes = NetlinkRoutes::open()?;
    match a.nodes_dir {
        Some(dir) => {
            let src = DirSource::new(dir, Duration::from_millis(a.nodes_dir_poll_ms.max(10)));
            mesh::run(cfg, src, routes, shutdown_signal()).await?;
        }
        None => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the apiserver")?;
            // The Node condition KitfleetHardened: the running kernel's KSPP state, at start and every 10 minutes.
            let (hc, node) = (client.clone(), cfg.node_name.clone());
            tokio::spawn(async move {
                let paths = kitfleet_node_agent::hardening::Paths::default();
                loop {
                    kitfleet_node_agent::hardening::report(&hc, &node, &paths).await;
                    tokio::time::sleep(Duration::from_secs(600)).await;
                }
            });
            mesh::run(cfg, KubeSource::new(client), routes, shutdown_signal()).await?;
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let result = match cli.cmd {
        Cmd::Mesh(a) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")
            .and_then(|rt| rt.block_on(run_mesh(a))),
        Cmd::RotateKey { key_file } => keyfile::rotate(&key_file)
            .map(|k| println!("{}", k.public_key()))
            .map_err(Into::into),
        Cmd::MeshCleanup { interface } => mesh::cleanup(&interface).map_err(Into::into),
        Cmd::Csi(a) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the runtime")
            .and_then(|rt| {
                rt.block_on(kitfleet_node_agent::csi::cli::run(a, shutdown_signal()))
                    .map_err(Into::into)
            }),
        Cmd::Upgrade(a) => kitfleet_node_agent::upgrade::cli::run(a).map_err(Into::into),
        Cmd::Cleanup(a) => kitfleet_node_agent::cleanup::local::run(a).map_err(Into::into),
        Cmd::CleanupNodes(a) => kitfleet_node_agent::cleanup::nodes::run(a).map_err(Into::into),
        Cmd::UpgradeAgent(a) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")
            .and_then(|rt| {
                rt.block_on(kitfleet_node_agent::upgrade::agent_cli::run(
                    a,
                    shutdown_signal(),
                ))
            }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kitfleet-node-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
