//! `kitfleet-node-agent csi`: the command-line flags and the run function (`main.rs` only dispatches).

use crate::csi::driver::{Driver, DriverConfig};
use crate::csi::source::{DirSource, KubePolicySource, PolicySource};
use crate::csi::{ServeError, Sockets, serve};
use crate::seccomp_profiles::ProfileStore;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Flags of the `csi` subcommand.
#[derive(Debug, clap::Args)]
pub struct CsiArgs {
    /// This node's name (`NodeGetInfo`'s node id).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// CSI driver name.
    #[arg(long, default_value = kitfleet_api::constants::CSI_DRIVER)]
    pub driver_name: String,
    /// The CSI socket (Identity + Node).
    #[arg(
        long,
        env = "KITFLEET_CSI_SOCKET",
        default_value = "/var/lib/kubelet/plugins/sandbox.kitfleet.dev/csi.sock"
    )]
    pub csi_socket: PathBuf,
    /// The CSI socket's path as the kubelet sees it, if the agent sees it elsewhere (PluginInfo.endpoint).
    #[arg(long)]
    pub kubelet_endpoint: Option<PathBuf>,
    /// The registration socket in the kubelet's plugins_registry directory. Its file name needs an `@`: the
    /// kubelet sends the path as HTTP/2 `:authority`, which the plugin's server accepts only then (see
    /// `csi::authority`).
    #[arg(
        long,
        env = "KITFLEET_CSI_REGISTRATION_SOCKET",
        default_value = "/var/lib/kubelet/plugins_registry/sandbox.kitfleet.dev@reg.sock"
    )]
    pub registration_socket: PathBuf,
    /// Do not register with the kubelet (serve the CSI socket only).
    #[arg(long)]
    pub no_registration: bool,
    /// Staging directories and volume records (bind-mount sources: must be visible to the kubelet's mount namespace).
    #[arg(
        long,
        env = "KITFLEET_CSI_STATE_DIR",
        default_value = "/var/lib/kitfleet/csi"
    )]
    pub state_dir: PathBuf,
    /// The static launcher placed in every volume.
    #[arg(
        long,
        env = "KITFLEET_LAUNCHER",
        default_value = "/usr/lib/kitfleet/kitfleet-sandbox"
    )]
    pub launcher: PathBuf,
    /// Where the Localhost seccomp profiles are written (`<dir>/<set hash>.json`; pods name `kitfleet/<hash>.json`).
    #[arg(
        long,
        env = "KITFLEET_SECCOMP_DIR",
        default_value = "/var/lib/kubelet/seccomp/kitfleet"
    )]
    pub seccomp_dir: PathBuf,
    /// Read SecurityPolicies and Pods from this directory of manifests instead of the apiserver (no sandbox
    /// report is written then).
    #[arg(long)]
    pub objects_dir: Option<PathBuf>,
    /// How often the node's sandbox report (Node annotation `agent.kitfleet.dev/sandbox-report`) is rebuilt; it is
    /// written only when it changed. 0: never write it.
    #[arg(long, env = "KITFLEET_REPORT_INTERVAL_MS", default_value_t = 2000)]
    pub report_interval_ms: u64,
}

/// Why `csi` stopped.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No apiserver client.
    #[error("connecting to the apiserver: {0}")]
    Kube(#[from] kube::Error),
    /// Serving failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// A flag's value cannot work.
    #[error("--{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
}

/// Runs the plugin until `shutdown` completes.
pub async fn run(
    a: CsiArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CliError> {
    if !a.no_registration {
        crate::csi::authority::check_registration_socket(&a.registration_socket).map_err(
            |reason| CliError::Invalid {
                flag: "registration-socket",
                reason,
            },
        )?;
    }
    let cfg = DriverConfig {
        driver_name: a.driver_name,
        node_id: a.node_name,
        state_dir: a.state_dir,
        launcher: a.launcher,
        profiles: ProfileStore::new(a.seccomp_dir),
        arches: kitfleet_sandbox::seccomp::Arch::native()
            .into_iter()
            .collect(),
    };
    let sockets = Sockets {
        csi: a.csi_socket,
        registration: (!a.no_registration).then_some(a.registration_socket),
        kubelet_endpoint: a.kubelet_endpoint,
    };
    match a.objects_dir {
        Some(dir) => go(cfg, DirSource::new(dir), sockets, None, shutdown).await,
        None => {
            let client = kube::Client::try_default().await?;
            let report = (a.report_interval_ms > 0).then(|| {
                (
                    client.clone(),
                    Duration::from_millis(a.report_interval_ms.max(100)),
                )
            });
            go(
                cfg,
                KubePolicySource::new(client),
                sockets,
                report,
                shutdown,
            )
            .await
        }
    }
}

async fn go<S: PolicySource>(
    cfg: DriverConfig,
    src: S,
    sockets: Sockets,
    report: Option<(kube::Client, Duration)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CliError> {
    let driver = Arc::new(Driver::new(cfg, src));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reporter = report.map(|(client, every)| {
        let mut stop = stop_rx.clone();
        tokio::spawn(crate::csi::report::run(
            driver.clone(),
            client,
            every,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ))
    });
    let result = serve(driver, sockets, shutdown).await;
    let _ = stop_tx.send(true);
    if let Some(t) = reporter {
        let _ = t.await;
    }
    result?;
    Ok(())
}
