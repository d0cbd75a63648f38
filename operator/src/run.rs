//! `kitfleet-operator run`: health and metrics server, leader election on a Lease, the controller, graceful shutdown.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::build::controller::{self, Context};
use crate::build::job::JobSettings;
use crate::build::registry::{ArtifactRegistry, BuilderRegistry};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::{self, Health};

/// Seconds a Lease is held without renewal.
const LEASE_SECONDS: u64 = 15;
/// Renewal margin before the Lease expires.
const LEASE_GRACE_SECONDS: u64 = 5;

/// Resolves on SIGTERM or SIGINT.
async fn signalled() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
    }
}

/// Job settings from the configuration.
pub fn job_settings(c: &Config) -> JobSettings {
    JobSettings {
        builder_image: c.builder_image.clone(),
        namespace: c.namespace.clone(),
        cache_pvc: c.cache_pvc.clone(),
        insecure_registries: c.insecure_registries.clone(),
        arch: c.arch.clone(),
        build: c.build.clone(),
    }
}

/// Runs the operator until a signal arrives (or leadership is lost: then it exits so that its replacement starts
/// from a clean state).
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = server::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    info!(addr = %config.listen, "serving /healthz, /readyz, /metrics");
    let client = Client::try_default()
        .await
        .context("connecting to the API server")?;
    std::fs::create_dir_all(&config.cache_dir)
        .with_context(|| format!("creating {}", config.cache_dir))?;
    let registry = BuilderRegistry::new(
        Path::new(&config.cache_dir),
        &config.arch,
        config.insecure_registries.clone(),
        config.docker_config.as_deref().map(Path::new),
    )?;
    run_with(config, client, registry, listener, signalled()).await
}

/// [`run`] with its edges passed in: the API client, the registry, the health listener, and the shutdown signal.
pub async fn run_with<R: ArtifactRegistry>(
    config: Config,
    client: Client,
    registry: R,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let http = tokio::spawn(server::serve(
        listener,
        health.clone(),
        metrics.clone(),
        stop_rx.clone(),
    ));
    let signal = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let result = async {
        client
            .apiserver_version()
            .await
            .context("asking the API server for its version")?;
        let ctx = Arc::new(Context::new(
            client.clone(),
            registry,
            job_settings(&config),
            metrics,
            &config.identity,
        ));
        if config.leader_election {
            lead(&config, client, ctx, &health, stop_rx.clone()).await
        } else {
            health.ready.store(true, Ordering::Release);
            info!("leader election disabled; starting the NodeImage controller");
            let mut stop = stop_rx.clone();
            controller::run(ctx, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
            Ok(())
        }
    }
    .await;
    // Aborting the signal task drops the sender: the health server sees the channel close and returns.
    signal.abort();
    let _ = http.await;
    result
}

/// Waits for the Lease, runs the controller while holding it, releases it on the way out.
async fn lead<R: ArtifactRegistry>(
    config: &Config,
    client: Client,
    ctx: Arc<Context<R>>,
    health: &Health,
    stop_rx: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let manager = LeaseManagerBuilder::new(client, &config.lease_name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
        .with_field_manager(crate::FIELD_MANAGER)
        .build()
        .await
        .context("creating the lease manager")?;
    let (leader, lease_task) = manager.watch().await;
    health.ready.store(true, Ordering::Release);
    info!(lease = %config.lease_name, identity = %config.identity, "waiting for leadership");
    let mut waiting = leader.clone();
    let mut stop = stop_rx.clone();
    let outcome = tokio::select! {
        r = waiting.wait_for(|l| *l) => r.map(|_| true).map_err(|_| anyhow::anyhow!("lease manager stopped")),
        _ = stop.wait_for(|s| *s) => Ok(false),
    };
    drop(waiting);
    let result = match outcome {
        Ok(true) => {
            info!("acquired leadership; starting the NodeImage controller");
            let mut lost = leader.clone();
            let mut stop2 = stop_rx.clone();
            controller::run(ctx, async move {
                tokio::select! {
                    _ = lost.wait_for(|l| !*l) => warn!("leadership lost; stopping"),
                    _ = stop2.wait_for(|s| *s) => {},
                }
            })
            .await;
            if *stop_rx.borrow() {
                Ok(())
            } else {
                Err(anyhow::anyhow!("leadership lost"))
            }
        }
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };
    // Dropping the last receiver makes the lease manager release the Lease and return.
    drop(leader);
    match lease_task.await {
        Ok(Ok(_)) => info!("lease released"),
        Ok(Err(e)) => warn!(error = %e, "releasing the lease"),
        Err(e) => warn!(error = %e, "lease task"),
    }
    result
}
