//! Serving the webhooks: HTTPS (hyper on rustls) on every replica, the certificate from [`certs`], the `caBundle`
//! of the two configurations the chart owns, and the namespace label that scopes them.
//!
//! [`run`] loops until stopped: every [`WebhookSettings::refresh`] it re-reads (creating or rotating) the
//! certificate Secret, swaps the served certificate when it changed, patches `caBundle` where it differs, and
//! labels namespaces that have SecurityPolicies (`kitfleet.dev/sandbox=true`, removed when their last policy goes);
//! the label pass also runs at once after every SecurityPolicy change the webhook's watch sees.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Namespace;
use kitfleet_api::SecurityPolicy;
use kitfleet_api::constants::LABEL_SANDBOX_NAMESPACE;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::certs::{self, Bundle, CertResolver};
use super::images::RegistryImages;
use super::mutate::{self, Outcome};
use super::review::{self, SetCache};

/// The MutatingWebhookConfiguration the chart installs (its `caBundle` is the operator's to patch).
pub const MUTATING_CONFIGURATION: &str = "kitfleet-sandbox";
/// The ValidatingWebhookConfiguration the chart installs.
pub const VALIDATING_CONFIGURATION: &str = "kitfleet-validate";
/// Field manager of the namespace label (shared by every replica: they apply the same value).
pub const LABEL_FIELD_MANAGER: &str = "kitfleet-operator-sandbox-label";
/// Largest AdmissionReview body read (the apiserver's own request limit is 3 MiB).
pub const MAX_BODY: usize = 4 << 20;

/// Webhook settings (`kitfleet-operator run --webhook-*`).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSettings {
    /// Where to serve HTTPS.
    pub listen: SocketAddr,
    /// The operator's namespace: the certificate Secret lives there; its pods are exempt.
    pub namespace: String,
    /// Names in the serving certificate (the Service's DNS names, plus any extra, e.g. an IP for tests).
    pub names: Vec<String>,
    /// Between certificate, `caBundle` and label passes.
    pub refresh: Duration,
}

/// The admission handler shared by every connection.
pub struct Webhook {
    /// The operator's namespace (exempt).
    pub namespace: String,
    /// SecurityPolicies, every namespace.
    pub policies: Store<SecurityPolicy>,
    /// Image lookups; `None`: disabled (pods whose containers lack `command` are refused).
    pub images: Option<RegistryImages>,
    /// Compile results by set hash.
    pub sets: SetCache,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// The answer to one AdmissionReview posted to `path` (`/mutate` or `/validate`): HTTP status and body.
    pub async fn handle(&self, path: &str, body: &[u8]) -> (StatusCode, Vec<u8>) {
        let req = match review::parse(body) {
            Ok(r) => r,
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string().into_bytes()),
        };
        let started = Instant::now();
        let response = match path {
            "/validate" => review::validate(&req),
            "/mutate" => match review::pod_of(&req) {
                Ok(None) => review::allow(&req),
                Err(e) => review::deny(&req, e),
                Ok(Some(pod)) => {
                    let namespace = req
                        .namespace
                        .clone()
                        .or_else(|| pod.metadata.namespace.clone())
                        .unwrap_or_default();
                    let policies: Vec<SecurityPolicy> = self
                        .policies
                        .state()
                        .iter()
                        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
                        .map(|p| (**p).clone())
                        .collect();
                    let wanted = if policies.is_empty()
                        || mutate::exemption(&pod, &namespace, &self.namespace).is_some()
                    {
                        Vec::new()
                    } else {
                        mutate::images_to_look_up(&pod)
                    };
                    let images = match &self.images {
                        Some(i) if !wanted.is_empty() => i.look_up(&wanted).await,
                        _ => BTreeMap::new(),
                    };
                    let (resp, outcome) = review::mutate_pod(
                        &req,
                        &pod,
                        &self.namespace,
                        &policies,
                        &images,
                        &self.sets,
                    );
                    if let Some(Outcome::Mutated { set, .. }) = &outcome {
                        debug!(
                            namespace,
                            set = set.policies_attr(),
                            allowed = resp.allowed,
                            "pod wrapped"
                        );
                    }
                    resp
                }
            },
            _ => return (StatusCode::NOT_FOUND, b"no such webhook".to_vec()),
        };
        if !response.allowed {
            info!(
                path,
                uid = req.uid,
                message = response.message.as_deref().unwrap_or(""),
                "admission refused"
            );
        }
        debug!(
            path,
            elapsed_us = started.elapsed().as_micros() as u64,
            "admission reviewed"
        );
        (
            StatusCode::OK,
            serde_json::to_vec(&response.to_review()).expect("a JSON value serializes"),
        )
    }
}

async fn respond(
    webhook: Arc<Webhook>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let (status, body) = if req.method() != hyper::Method::POST {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            b"POST an AdmissionReview".to_vec(),
        )
    } else {
        match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => webhook.handle(&path, &b.to_bytes()).await,
            Err(e) => (StatusCode::PAYLOAD_TOO_LARGE, e.to_string().into_bytes()),
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// Serves HTTPS on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    webhook: Arc<Webhook>,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "webhook accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let acceptor = acceptor.clone();
        let webhook = webhook.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    debug!(%peer, error = %e, "webhook TLS handshake");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| respond(webhook.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                debug!(%peer, error = %e, "webhook connection");
            }
        });
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Patches `caBundle` of every webhook of the two configurations where it differs from `ca_pem` (a strategic merge
/// by webhook name: nothing else is touched). Returns how many webhooks changed; a missing configuration is skipped.
pub async fn patch_ca_bundles(client: &Client, ca_pem: &str) -> Result<usize, kube::Error> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let pp = PatchParams::default();
    let mut changed = 0;
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(c) = m.get_opt(MUTATING_CONFIGURATION).await? {
        let hooks = c.webhooks.iter().flatten();
        let stale = stale_ca(hooks.map(|w| (&w.name, &w.client_config)), ca_pem);
        if !stale.is_empty() {
            m.patch(MUTATING_CONFIGURATION, &pp, &ca_patch(&stale, &b64))
                .await?;
            changed += stale.len();
        }
    }
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(c) = v.get_opt(VALIDATING_CONFIGURATION).await? {
        let hooks = c.webhooks.iter().flatten();
        let stale = stale_ca(hooks.map(|w| (&w.name, &w.client_config)), ca_pem);
        if !stale.is_empty() {
            v.patch(VALIDATING_CONFIGURATION, &pp, &ca_patch(&stale, &b64))
                .await?;
            changed += stale.len();
        }
    }
    Ok(changed)
}

/// Names of the webhooks whose `caBundle` is not `ca_pem`.
fn stale_ca<'a>(
    hooks: impl Iterator<Item = (&'a String, &'a WebhookClientConfig)>,
    ca_pem: &str,
) -> Vec<String> {
    hooks
        .filter(|(_, cc)| cc.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(ca_pem.as_bytes()))
        .map(|(name, _)| name.clone())
        .collect()
}

/// A strategic-merge patch setting `caBundle` on the named webhooks only (the list merges by webhook name).
fn ca_patch(names: &[String], b64: &str) -> Patch<serde_json::Value> {
    let hooks: Vec<_> = names
        .iter()
        .map(|n| json!({"name": n, "clientConfig": {"caBundle": b64}}))
        .collect();
    Patch::Strategic(json!({"webhooks": hooks}))
}

/// Sets `kitfleet.dev/sandbox=true` on the namespaces of `policies` and removes it from labelled namespaces without
/// one (server-side apply under [`LABEL_FIELD_MANAGER`]: the label is the only field that manager owns).
pub async fn label_namespaces(
    client: &Client,
    policies: &[Arc<SecurityPolicy>],
) -> Result<(), kube::Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    let want: BTreeSet<String> = policies.iter().filter_map(|p| p.namespace()).collect();
    let labelled: BTreeSet<String> = api
        .list_metadata(&ListParams::default().labels(&format!("{LABEL_SANDBOX_NAMESPACE}=true")))
        .await?
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    let pp = PatchParams::apply(LABEL_FIELD_MANAGER);
    for ns in want.difference(&labelled) {
        let body = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {LABEL_SANDBOX_NAMESPACE: "true"}}});
        match api.patch(ns, &pp, &Patch::Apply(body)).await {
            Ok(_) => info!(namespace = ns, "namespace labelled for the sandbox webhook"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    for ns in labelled.difference(&want) {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        api.patch(ns, &pp, &Patch::Apply(body)).await?;
        info!(
            namespace = ns,
            "sandbox label removed (no SecurityPolicy left)"
        );
    }
    Ok(())
}

/// Webhook failures that stop [`run`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error(transparent)]
    Certs(#[from] certs::CertError),
}

/// Serves the webhooks until `stop`: certificate from the Secret (created or rotated as needed), `caBundle`
/// patched, SecurityPolicies watched, namespaces labelled, everything refreshed every `settings.refresh`.
pub async fn run(
    client: Client,
    settings: WebhookSettings,
    images: Option<RegistryImages>,
    stop: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| ServeError::Bind(settings.listen, e))?;
    run_on(client, settings, images, listener, stop).await
}

/// [`run`] on a bound listener.
pub async fn run_on(
    client: Client,
    settings: WebhookSettings,
    images: Option<RegistryImages>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let mut bundle: Bundle = loop {
        match certs::ensure(&client, &settings.namespace, &settings.names).await {
            Ok(b) => break b,
            Err(e) => {
                warn!(error = %e, "webhook certificate; retrying in 5 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stopped(&mut stop) => return Ok(()),
                }
            }
        }
    };
    let resolver = Arc::new(CertResolver::new(&bundle)?);
    let (reader, writer) = reflector::store();
    let api: Api<SecurityPolicy> = Api::all(client.clone());
    // Every SecurityPolicy change (created, changed, deleted) wakes the label pass at once: a namespace must carry the
    // label as soon as its first policy exists, or the apiserver does not send its pods to the mutating webhook and
    // they start unconfined (the refresh interval alone left that window open for up to a minute).
    let changed = Arc::new(Notify::new());
    let notify = changed.clone();
    let watch = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .for_each(move |r| {
            match r {
                Ok(_) => notify.notify_one(),
                Err(e) => warn!(error = %e, "SecurityPolicy watch"),
            }
            std::future::ready(())
        });
    let watch = tokio::spawn(watch);
    let webhook = Arc::new(Webhook {
        namespace: settings.namespace.clone(),
        policies: reader.clone(),
        images,
        sets: SetCache::default(),
    });
    info!(addr = %settings.listen, "serving the admission webhooks (/mutate, /validate)");
    let server = tokio::spawn(serve(
        listener,
        resolver.server_config(),
        webhook,
        stop.clone(),
    ));
    let _ = reader.wait_until_ready().await;
    let mut next_refresh = tokio::time::Instant::now() + settings.refresh;
    let mut full_pass = true;
    loop {
        if full_pass {
            match patch_ca_bundles(&client, &bundle.ca_pem).await {
                Ok(0) => {}
                Ok(n) => info!(webhooks = n, "caBundle patched"),
                Err(e) => warn!(error = %e, "patching caBundle"),
            }
        }
        if let Err(e) = label_namespaces(&client, &reader.state()).await {
            warn!(error = %e, "labelling namespaces");
        }
        // A policy change runs the label pass alone; the refresh runs everything (a failed label pass is retried
        // then, or at the next change).
        full_pass = tokio::select! {
            _ = tokio::time::sleep_until(next_refresh) => true,
            _ = changed.notified() => false,
            _ = stopped(&mut stop) => break,
        };
        if !full_pass {
            continue;
        }
        next_refresh = tokio::time::Instant::now() + settings.refresh;
        match certs::ensure(&client, &settings.namespace, &settings.names).await {
            Ok(b) if b != bundle => {
                resolver.set(&b)?;
                info!(not_after = b.not_after, "serving a new webhook certificate");
                bundle = b;
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "re-reading the webhook certificate"),
        }
    }
    watch.abort();
    let _ = server.await;
    Ok(())
}
