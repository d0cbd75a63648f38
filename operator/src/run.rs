//! `kitfleet-operator run`: health and metrics server, leader election on a Lease, the controller, graceful shutdown.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::{Duration, Instant};
use tracing::{info, warn};

use crate::build::controller::{self, Context};
use crate::build::job::JobSettings;
use crate::build::registry::{ArtifactRegistry, BuilderRegistry};
use crate::config::Config;
use crate::leader::Elector;
use crate::metrics::Metrics;
use crate::server::{self, Health};

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
    // The admission webhooks run on every replica, leader or not.
    let webhook = config
        .webhook
        .clone()
        .map(|w| spawn_webhook(&config, w, client.clone(), stop_rx.clone()))
        .transpose()?;
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
            leader_controllers(ctx, &config.identity, async move {
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
    if let Some(w) = webhook {
        let _ = w.await;
    }
    result
}

/// Waits for the Lease, runs the controller while holding it, releases it on the way out.
///
/// The leader renews every retry period. When it has not renewed for the renew deadline (the API server is
/// unreachable, or another replica took the Lease) it drops the controller at once — in-flight reconciliations are
/// cancelled, not finished — and returns an error, so that its restart starts clean. On a shutdown signal it lets the
/// controller finish what is in flight, then releases the Lease so that a standby takes over at its next attempt.
async fn lead<R: ArtifactRegistry>(
    config: &Config,
    client: Client,
    ctx: Arc<Context<R>>,
    health: &Health,
    mut stop_rx: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut elector = Elector::new(
        client,
        &config.namespace,
        &config.identity,
        config.lease.clone(),
    );
    let retry = config.lease.retry_period;
    let deadline = config.lease.renew_deadline;
    health.ready.store(true, Ordering::Release);
    info!(lease = %config.lease.name, identity = %config.identity, "waiting for leadership");
    loop {
        let attempt = Instant::now();
        match tokio::time::timeout(deadline, elector.try_acquire_or_renew()).await {
            Ok(Ok(true)) => break,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!(error = %e, "trying to acquire the Lease"),
            Err(_) => warn!(after = ?deadline, "trying to acquire the Lease: no answer"),
        }
        tokio::select! {
            _ = tokio::time::sleep_until(attempt + jitter(retry)) => {}
            _ = stopped(&mut stop_rx) => return Ok(()),
        }
    }
    let mut renewed = Instant::now();
    info!(identity = %config.identity, "acquired leadership; starting the NodeImage controller");
    let (ctl_stop_tx, ctl_stop_rx) = watch::channel(false);
    let mut ctl_stop = ctl_stop_rx;
    let controller = leader_controllers(ctx, &config.identity, async move {
        let _ = ctl_stop.wait_for(|s| *s).await;
    });
    tokio::pin!(controller);
    let mut next = renewed + retry;
    let lost = loop {
        tokio::select! {
            _ = &mut controller => return Err(anyhow::anyhow!("the NodeImage controller stopped")),
            _ = stopped(&mut stop_rx) => break None,
            _ = tokio::time::sleep_until(renewed + deadline) => break Some(format!("not renewed for {deadline:?}")),
            _ = tokio::time::sleep_until(next) => {
                let attempt = Instant::now();
                let left = (renewed + deadline).saturating_duration_since(attempt);
                match tokio::time::timeout(left, elector.try_acquire_or_renew()).await {
                    Ok(Ok(true)) => renewed = attempt,
                    Ok(Ok(false)) => break Some("another replica holds the Lease".to_string()),
                    Ok(Err(e)) => warn!(error = %e, "renewing the Lease"),
                    Err(_) => warn!("renewing the Lease: no answer"),
                }
                next = Instant::now() + retry;
            }
        }
    };
    if let Some(why) = lost {
        // The controller future is no longer polled: its reconciliations stop where they stand, and returning
        // drops them.
        warn!(reason = %why, "leadership lost; stopped reconciling");
        return Err(anyhow::anyhow!("leadership lost: {why}"));
    }
    // Finish what is in flight, but never past the point where the Lease may pass to another replica.
    let _ = ctl_stop_tx.send(true);
    if tokio::time::timeout_at(renewed + deadline, controller)
        .await
        .is_err()
    {
        warn!("reconciliations still in flight at the renew deadline were cancelled");
    }
    match elector.release().await {
        Ok(()) => info!("lease released"),
        Err(e) => warn!(error = %e, "releasing the lease"),
    }
    Ok(())
}

/// The controllers only the leader runs, side by side until `shutdown`: the NodeImage controller, the
/// SecurityPolicy status controller (`policy`), the rollout controller (`rollout::controller`) and the NodeImage
/// KSPP status (`hardening`).
async fn leader_controllers<R: ArtifactRegistry>(
    ctx: Arc<Context<R>>,
    identity: &str,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (tx, rx) = watch::channel(false);
    let client = ctx.client.clone();
    let client_h = client.clone();
    let mut rx_a = rx.clone();
    let mut rx_b = rx;
    let mut rx_c = rx_b.clone();
    let mut rx_d = rx_b.clone();
    let rollout = Arc::new(crate::rollout::controller::Context::new(
        client.clone(),
        ctx.metrics.clone(),
        identity,
    ));
    let nodeimages = controller::run(ctx, async move {
        let _ = rx_a.wait_for(|s| *s).await;
    });
    let policies = crate::policy::run(client, identity, Default::default(), async move {
        let _ = rx_b.wait_for(|s| *s).await;
    });
    let rollouts = crate::rollout::controller::run(rollout, async move {
        let _ = rx_c.wait_for(|s| *s).await;
    });
    let hardening = crate::hardening::run(client_h, Default::default(), async move {
        let _ = rx_d.wait_for(|s| *s).await;
    });
    let stop = async move {
        shutdown.await;
        let _ = tx.send(true);
    };
    tokio::join!(nodeimages, policies, rollouts, hardening, stop);
}

/// Starts the admission webhooks (`webhook::server::run`) in a task.
fn spawn_webhook(
    config: &Config,
    w: crate::config::WebhookConfig,
    client: Client,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let images = if w.image_lookup {
        let dir = Path::new(&config.cache_dir).join("webhook-images");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Some(crate::webhook::images::RegistryImages::new(
            &dir,
            &config.arch,
            config.insecure_registries.clone(),
            config.docker_config.as_deref().map(Path::new),
            Duration::from_secs(300),
        )?)
    } else {
        None
    };
    Ok(tokio::spawn(async move {
        if let Err(e) = crate::webhook::server::run(client, w.settings, images, stop).await {
            tracing::error!(error = %e, "the admission webhooks stopped");
        }
    }))
}

/// Resolves once the stop flag is set (the flag's read guard never lives across an await).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// `d` plus up to 20 % (from the clock's nanoseconds: replicas started together do not retry in step).
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d + d.mul_f64(f64::from(nanos % 1000) / 5000.0)
}
