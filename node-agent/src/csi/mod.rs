//! The CSI node plugin for `sandbox.kitfleet.dev`, on tonic: Identity and Node over a unix socket, registered with
//! the kubelet through its plugin-registration socket (no sidecar). Publish gives a pod a read-only directory with
//! the static launcher, the compiled policy set and the outcome socket, after writing the set's seccomp profile.
//! README.md ("CSI node plugin") has the attribute schema, the error codes and the limits.

pub mod attrs;
pub mod authority;
pub mod cli;
pub mod driver;
pub mod mount;
pub mod report;
pub mod service;
pub mod source;

/// Code generated at build time from `proto/` (see `build.rs`).
pub mod proto {
    /// CSI v1 (the subset in `proto/csi.proto`).
    #[allow(missing_docs, clippy::all, missing_debug_implementations)]
    pub mod csi {
        tonic::include_proto!("csi.v1");
    }
    /// The kubelet's plugin registration API.
    #[allow(missing_docs, clippy::all, missing_debug_implementations)]
    pub mod registration {
        tonic::include_proto!("pluginregistration");
    }
}

use driver::Driver;
use service::{CsiService, RegistrationService};
use source::PolicySource;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

/// Where the plugin listens.
#[derive(Debug, Clone)]
pub struct Sockets {
    /// The CSI socket (Identity + Node).
    pub csi: PathBuf,
    /// The registration socket in the kubelet's `plugins_registry` directory; `None`: do not register.
    pub registration: Option<PathBuf>,
    /// The CSI socket's path as the kubelet sees it (`PluginInfo.endpoint`); default: `csi`.
    pub kubelet_endpoint: Option<PathBuf>,
}

/// A serving failure.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A socket could not be created.
    #[error("{path}: {source}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Startup recovery failed.
    #[error("recovering volumes: {0}")]
    Recover(#[from] driver::DriverError),
    /// The gRPC server failed.
    #[error("gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// How long a shutdown waits for open connections (in-flight calls) before it closes them.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Binds a unix socket, replacing a stale one (a socket file nobody listens on) and creating its directory.
pub fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    UnixListener::bind(path).map_err(err)
}

/// Recovers the driver's volumes, then serves CSI (and registration) until `shutdown` completes; removes both
/// sockets on the way out (the kubelet then deregisters the plugin).
pub async fn serve<S: PolicySource>(
    driver: Arc<Driver<S>>,
    sockets: Sockets,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    driver.recover().await?;
    let csi = bind(&sockets.csi)?;
    let svc = CsiService::new(driver.clone());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let reg_task = match &sockets.registration {
        Some(path) => {
            let l = bind(path)?;
            let reg = RegistrationService {
                name: driver.config().driver_name.clone(),
                endpoint: sockets
                    .kubelet_endpoint
                    .clone()
                    .unwrap_or_else(|| sockets.csi.clone())
                    .display()
                    .to_string(),
                status: Default::default(),
            };
            let mut rx = rx.clone();
            Some(tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(
                        proto::registration::registration_server::RegistrationServer::new(reg),
                    )
                    .serve_with_incoming_shutdown(UnixListenerStream::new(l), async move {
                        let _ = rx.wait_for(|v| *v).await;
                    }),
            ))
        }
        None => None,
    };
    tracing::info!(csi = %sockets.csi.display(), registration = ?sockets.registration, driver = %driver.config().driver_name, "CSI node plugin serving");
    let mut rx_csi = rx.clone();
    let server = tonic::transport::Server::builder()
        .add_service(proto::csi::identity_server::IdentityServer::new(
            svc.clone(),
        ))
        .add_service(proto::csi::node_server::NodeServer::new(svc))
        .serve_with_incoming_shutdown(UnixListenerStream::new(csi), async move {
            let _ = rx_csi.wait_for(|v| *v).await;
        });
    // Graceful shutdown waits for open connections, and the kubelet keeps its connections open: after
    // SHUTDOWN_GRACE the servers are dropped, which closes them.
    let stop_then_grace = async move {
        shutdown.await;
        let _ = tx.send(true);
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let result = tokio::select! {
        r = server => r,
        () = stop_then_grace => {
            tracing::info!("closing the connections still open");
            Ok(())
        }
    };
    if let Some(t) = reg_task {
        let abort = t.abort_handle();
        if tokio::time::timeout(std::time::Duration::from_millis(200), t)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    let _ = std::fs::remove_file(&sockets.csi);
    if let Some(p) = &sockets.registration {
        let _ = std::fs::remove_file(p);
    }
    result.map_err(Into::into)
}

/// A gRPC channel to a unix socket (tests, the bench, health checks).
pub async fn channel(path: &Path) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}
