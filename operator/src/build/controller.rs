//! The NodeImage controller: gathers what [`decide`](crate::build::decide::decide) needs, then executes its [`Decision`]
//! against the API server (server-side apply with the operator's field manager).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kitfleet_api::constants::{LABEL_MANAGED_BY, NODEIMAGE_FINALIZER, OPERATOR_FIELD_MANAGER};
use kitfleet_api::{NodeImage, NodeImageStatus};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, Event as Finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{Instrument as _, info, instrument, warn};

use crate::build::decide::{self, Action, Decision, JobView, Lookup, Observed, Policy};
use crate::build::job::{self, JobError, JobSettings};
use crate::build::registry::{ArtifactRegistry, PullSecret, RegistryError};
use crate::metrics::Metrics;

/// A reconciliation failure (retried by [`error_policy`] with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API server: {0}")]
    Kube(#[from] kube::Error),
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("build Job: {0}")]
    Job(#[from] JobError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("the {0} cache stopped (its watch ended)")]
    CacheStopped(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The `reason` label of the error counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Registry(_) => "registry",
            Error::Job(_) => "job",
            Error::CacheStopped(_) => "cache",
            Error::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "finalizer",
            },
        }
    }
}

/// What the reconciler works with.
pub struct Context<R> {
    pub client: Client,
    pub registry: R,
    pub settings: JobSettings,
    pub policy: Policy,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// The clock (tests pin it).
    pub now: fn() -> Timestamp,
    /// The build Jobs and their Pods in the namespace, kept by reflectors that [`run`] feeds.
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
    writers: Mutex<Option<(Writer<Job>, Writer<Pod>)>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl<R> std::fmt::Debug for Context<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<R: ArtifactRegistry> Context<R> {
    /// A context publishing Events as `kitfleet-operator` (instance `identity`).
    pub fn new(
        client: Client,
        registry: R,
        settings: JobSettings,
        metrics: Arc<Metrics>,
        identity: &str,
    ) -> Self {
        let reporter = Reporter {
            controller: OPERATOR_FIELD_MANAGER.into(),
            instance: Some(identity.to_string()),
        };
        let policy = Policy {
            retry_base: settings.build.retry_base,
            retry_max: settings.build.retry_max,
        };
        let (jobs, job_writer) = reflector::store();
        let (pods, pod_writer) = reflector::store();
        Context {
            jobs,
            pods,
            writers: Mutex::new(Some((job_writer, pod_writer))),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            registry,
            settings,
            policy,
            metrics,
            now: Timestamp::now,
            failures: Mutex::default(),
        }
    }

    /// Fills the Job and Pod caches once, instead of [`run`]'s watches (for reconciling without a controller, as
    /// tests against a mock API server do). Returns false when the caches were already taken.
    pub fn prime_caches(&self, jobs: Vec<Job>, pods: Vec<Pod>) -> bool {
        let Some((mut jw, mut pw)) = self
            .writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return false;
        };
        jw.apply_watcher_event(&watcher::Event::Init);
        for j in jobs {
            jw.apply_watcher_event(&watcher::Event::InitApply(j));
        }
        jw.apply_watcher_event(&watcher::Event::InitDone);
        pw.apply_watcher_event(&watcher::Event::Init);
        for p in pods {
            pw.apply_watcher_event(&watcher::Event::InitApply(p));
        }
        pw.apply_watcher_event(&watcher::Event::InitDone);
        // The stores stay readable (and ready) after their writers are dropped.
        true
    }

    fn jobs_api(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reconciles one NodeImage: the finalizer first, then [`apply`] or [`cleanup`].
#[instrument(skip(ni, ctx), fields(name = %ni.name_any()))]
pub async fn reconcile<R: ArtifactRegistry>(
    ni: Arc<NodeImage>,
    ctx: Arc<Context<R>>,
) -> Result<Requeue> {
    ctx.metrics.reconciles.inc();
    let api: Api<NodeImage> = Api::all(ctx.client.clone());
    let name = ni.name_any();
    let result = finalizer::finalizer(&api, NODEIMAGE_FINALIZER, ni, |event| async {
        match event {
            Finalizer::Apply(ni) => apply(ni, ctx.as_ref()).await,
            Finalizer::Cleanup(ni) => cleanup(ni, ctx.as_ref()).await,
        }
    })
    .await;
    let result = match result {
        // The object was already gone when its finalizer was to be removed (another event for it was queued):
        // nothing is left to do.
        Err(finalizer::Error::RemoveFinalizer(kube::Error::Api(e))) if e.code == 404 => {
            tracing::debug!("already deleted");
            Ok(Requeue::await_change())
        }
        r => r.map_err(|e| Error::Finalizer(Box::new(e))),
    };
    if result.is_ok() {
        ctx.failures().remove(&name);
    }
    result
}

/// Requeues a failed reconciliation with a per-object exponential backoff (5 s, 10 s, … 5 min) and counts the error.
pub fn error_policy<R: ArtifactRegistry>(
    ni: Arc<NodeImage>,
    err: &Error,
    ctx: Arc<Context<R>>,
) -> Requeue {
    ctx.metrics.error(err.reason());
    let mut failures = ctx.failures();
    let n = failures.entry(ni.name_any()).or_insert(0);
    *n = n.saturating_add(1);
    let delay = Duration::from_secs(5u64.saturating_mul(1 << (*n - 1).min(6)))
        .min(Duration::from_secs(300));
    warn!(name = %ni.name_any(), error = %err, retry_in = ?delay, "reconcile failed");
    Requeue::requeue(delay)
}

/// The NodeImage's own Jobs (owned by its uid), from the Job cache.
async fn list_jobs<R: ArtifactRegistry>(ni: &NodeImage, ctx: &Context<R>) -> Result<Vec<Job>> {
    ctx.jobs
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheStopped("Job"))?;
    let uid = ni.uid();
    Ok(ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| {
            j.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref())
        })
        .map(|j| (*j).clone())
        .collect())
}

/// A Job's Pods, from the Pod cache.
async fn job_pods<R: ArtifactRegistry>(job: &Job, ctx: &Context<R>) -> Result<Vec<Pod>> {
    ctx.pods
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheStopped("Pod"))?;
    let name = job.name_any();
    Ok(ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.labels().get("job-name") == Some(&name))
        .map(|p| (*p).clone())
        .collect())
}

/// Reads the Jobs back: the termination message of failed Jobs building `key`, the waiting reason of a build pod
/// that cannot start.
async fn views<R: ArtifactRegistry>(
    jobs: &[Job],
    key: Option<&str>,
    ctx: &Context<R>,
) -> Result<Vec<JobView>> {
    let mut out = Vec::new();
    for j in jobs {
        let wanted = key.is_some_and(|k| job::job_view(j, None).is_some_and(|v| v.build_key == k));
        let pods = if wanted {
            job_pods(j, ctx).await?
        } else {
            Vec::new()
        };
        let message = if job::is_failed(j) {
            job::termination_message(&pods)
        } else {
            None
        };
        let Some(mut view) = job::job_view(j, message.as_deref()) else {
            continue;
        };
        if view.state == decide::JobState::Running
            && let Some((reason, message)) = job::stuck(&pods)
        {
            view.state = decide::JobState::Stuck { reason, message };
        }
        out.push(view);
    }
    Ok(out)
}

/// Reconciles a NodeImage that is not being deleted.
pub async fn apply<R: ArtifactRegistry>(ni: Arc<NodeImage>, ctx: &Context<R>) -> Result<Requeue> {
    let now = (ctx.now)();
    let valid = decide::validate(&ni.spec).is_ok();
    let reason = decide::resolve_reason(&ni, now).filter(|_| valid);
    let recorded_key = ni.status.as_ref().and_then(|s| s.build_key.as_deref());
    let needs_registry =
        valid && (reason.is_some() || decide::needs_lookup(ni.status.as_ref(), recorded_key));
    let (secret, secret_error) = match &ni.spec.output.push_secret_name {
        Some(name) if needs_registry => match read_secret(name, ctx).await? {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e)),
        },
        _ => (None, None),
    };
    let usable = secret_error.is_none();
    let resolution = match reason.filter(|_| usable) {
        Some(reason) => {
            info!(?reason, "resolving references");
            Some(ctx.registry.resolve(&ni.spec, secret.as_ref()).await?)
        }
        None => None,
    };
    let key = decide::current_key(&ni, resolution.as_ref()).map(str::to_string);
    let lookup = match &key {
        Some(k) if valid && usable && decide::needs_lookup(ni.status.as_ref(), Some(k)) => {
            match ctx
                .registry
                .lookup(&ni.spec.output.repository, k, secret.as_ref())
                .await
            {
                Ok(Some(a)) => Lookup::Found(a),
                Ok(None) => Lookup::Absent,
                Err(e) => Lookup::Error(e.to_string()),
            }
        }
        _ => Lookup::Skipped,
    };
    let jobs = list_jobs(&ni, ctx).await?;
    let views = views(&jobs, key.as_deref(), ctx).await?;
    let obs = Observed {
        ni: &ni,
        resolution: resolution.as_ref(),
        jobs: &views,
        lookup: &lookup,
        secret_error: secret_error.as_deref(),
        now,
    };
    let mut decision = decide::decide(&obs, &ctx.policy);
    let loopback = decide::flag_loopback(&ni, &mut decision, now);
    execute(&ni, &jobs, decision, loopback, ctx).await
}

/// The push secret's Docker config; `Ok(Err(why))` when the secret cannot be used (reported in status).
async fn read_secret<R: ArtifactRegistry>(
    name: &str,
    ctx: &Context<R>,
) -> Result<Result<PullSecret, String>> {
    let ns = &ctx.settings.namespace;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let Some(secret) = api.get_opt(name).await? else {
        return Ok(Err(format!(
            "spec.output.pushSecretName: Secret {ns}/{name} not found"
        )));
    };
    if secret.type_.as_deref() != Some("kubernetes.io/dockerconfigjson") {
        return Ok(Err(format!(
            "spec.output.pushSecretName: Secret {ns}/{name} has type {:?}, not kubernetes.io/dockerconfigjson",
            secret.type_.unwrap_or_default()
        )));
    }
    match secret.data.and_then(|mut d| d.remove(".dockerconfigjson")) {
        Some(bytes) => Ok(Ok(PullSecret(bytes.0))),
        None => Ok(Err(format!(
            "spec.output.pushSecretName: Secret {ns}/{name} has no .dockerconfigjson"
        ))),
    }
}

fn job_seconds(jobs: &[Job], name: &str) -> Option<f64> {
    let j = jobs.iter().find(|j| j.name_any() == name)?;
    let st = j.status.as_ref()?;
    let start = st.start_time.as_ref()?.0;
    let end = st.completion_time.as_ref().map(|t| t.0).or_else(|| {
        st.conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Failed")?
            .last_transition_time
            .as_ref()
            .map(|t| t.0)
    })?;
    Some(end.duration_since(start).as_secs_f64().max(0.0))
}

/// Applies a decision: annotations, Job deletions, the new Job, the status, the Event — in that order, so a crash
/// in between leaves a state the next reconcile decides on correctly.
async fn execute<R: ArtifactRegistry>(
    ni: &NodeImage,
    jobs: &[Job],
    d: Decision,
    loopback: Option<decide::EventNote>,
    ctx: &Context<R>,
) -> Result<Requeue> {
    let name = ni.name_any();
    let ssa = PatchParams::apply(OPERATOR_FIELD_MANAGER).force();
    let api: Api<NodeImage> = Api::all(ctx.client.clone());
    info!(action = ?d.action, writes_status = d.status.is_some(), deletes = d.delete_jobs.len(), "decided");
    if let Some(annotations) = &d.annotations {
        let patch = serde_json::json!({
            "apiVersion": "kitfleet.dev/v1alpha1",
            "kind": "NodeImage",
            "metadata": { "name": name, "annotations": annotations },
        });
        api.patch(&name, &ssa, &Patch::Apply(&patch)).await?;
    }
    for j in &d.delete_jobs {
        match ctx.jobs_api().delete(j, &DeleteParams::background()).await {
            Ok(_) => info!(job = %j, "deleted build Job"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Action::Build { build_key, attempt } = &d.action {
        let mut with_status = ni.clone();
        if let Some(s) = &d.status {
            with_status.status = Some(s.clone());
        }
        let created = match job::build_job(&with_status, build_key, *attempt, &ctx.settings) {
            Ok(job) => {
                let job_name = job.name_any();
                ctx.jobs_api()
                    .patch(&job_name, &ssa, &Patch::Apply(&job))
                    .await
                    .map(|_| job_name)
                    .map_err(Error::from)
            }
            Err(e) => Err(e.into()),
        };
        match created {
            Ok(job_name) => info!(job = %job_name, %build_key, attempt, "created build Job"),
            Err(e) => {
                report_job_failure(ni, d.status.as_ref(), &e, ctx).await;
                return Err(e);
            }
        }
    }
    if let Some(status) = &d.status {
        patch_status(&api, &name, status, &ssa).await?;
    }
    match &d.action {
        Action::Built { job, .. } if d.status.is_some() => {
            ctx.metrics
                .build_finished(true, job_seconds(jobs, job).unwrap_or(0.0));
        }
        Action::Failed { job, .. } if d.status.is_some() => {
            ctx.metrics
                .build_finished(false, job_seconds(jobs, job).unwrap_or(0.0));
        }
        _ => {}
    }
    ctx.metrics.set_building(
        &name,
        matches!(d.action, Action::Build { .. } | Action::Building { .. }),
    );
    // Each build attempt's Events name its Job as the related object, so they are not folded into the Events of
    // an earlier attempt (the recorder folds repeats of one reason about one pair of objects into a series).
    let related = match &d.action {
        Action::Build { build_key, attempt } => Some(job::job_name(ni, build_key, *attempt)),
        Action::Building { job } | Action::Built { job, .. } | Action::Failed { job, .. } => {
            Some(job.clone())
        }
        _ => None,
    }
    .map(|name| ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: Some(name),
        namespace: Some(ctx.settings.namespace.clone()),
        ..Default::default()
    });
    for ev in d.event.iter().chain(loopback.iter()) {
        let related = related.clone().filter(|_| ev.reason != "LoopbackRegistry");
        publish(ni, ev, related, ctx).await;
    }
    if let Action::RegistryUnavailable(message) = d.action {
        return Err(RegistryError::Request {
            reference: ni.spec.output.repository.clone(),
            message,
        }
        .into());
    }
    Ok(match d.requeue {
        Some(after) => Requeue::requeue(after),
        None => Requeue::await_change(),
    })
}

/// Makes a Job that could not be created visible (status and a Warning Event), best effort: the error itself is
/// returned to the error policy, which retries.
async fn report_job_failure<R: ArtifactRegistry>(
    ni: &NodeImage,
    decided: Option<&NodeImageStatus>,
    err: &Error,
    ctx: &Context<R>,
) {
    let mut status = decided
        .cloned()
        .or_else(|| ni.status.clone())
        .unwrap_or_default();
    let message = decide::clamp(
        &format!("could not create the build Job: {err}"),
        decide::MAX_MESSAGE,
    );
    let (generation, now) = (ni.metadata.generation, (ctx.now)());
    decide::set_condition(
        &mut status.conditions,
        decide::COND_BUILT,
        false,
        "JobCreateFailed",
        &message,
        generation,
        now,
    );
    decide::set_condition(
        &mut status.conditions,
        decide::COND_PROGRESSING,
        false,
        "JobCreateFailed",
        "",
        generation,
        now,
    );
    let api: Api<NodeImage> = Api::all(ctx.client.clone());
    let ssa = PatchParams::apply(OPERATOR_FIELD_MANAGER).force();
    if let Err(e) = patch_status(&api, &ni.name_any(), &status, &ssa).await {
        warn!(error = %e, "could not report the Job failure in status");
    }
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: "JobCreateFailed".into(),
        note: Some(decide::clamp(&message, 1024)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &ni.object_ref(&())).await {
        warn!(error = %e, "could not publish Event");
    }
}

async fn publish<R: ArtifactRegistry>(
    ni: &NodeImage,
    ev: &decide::EventNote,
    related: Option<ObjectReference>,
    ctx: &Context<R>,
) {
    let event = KubeEvent {
        type_: if ev.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: ev.reason.clone(),
        note: Some(decide::clamp(&ev.note, 1024)),
        action: "Reconcile".into(),
        secondary: related,
    };
    if let Err(e) = ctx.recorder.publish(&event, &ni.object_ref(&())).await {
        warn!(error = %e, reason = %ev.reason, "could not publish Event");
    }
}

async fn patch_status(
    api: &Api<NodeImage>,
    name: &str,
    status: &NodeImageStatus,
    ssa: &PatchParams,
) -> Result<()> {
    // `status.hardening` has its own field manager (crate::hardening): never apply a (stale) copy of it.
    let patch = serde_json::json!({
        "apiVersion": "kitfleet.dev/v1alpha1",
        "kind": "NodeImage",
        "status": crate::hardening::without_hardening(status),
    });
    api.patch_status(name, ssa, &Patch::Apply(&patch)).await?;
    Ok(())
}

/// On deletion: deletes the running build Jobs (published artifacts stay in the registry).
pub async fn cleanup<R: ArtifactRegistry>(ni: Arc<NodeImage>, ctx: &Context<R>) -> Result<Requeue> {
    let jobs = list_jobs(&ni, ctx).await?;
    let views: Vec<JobView> = jobs.iter().filter_map(|j| job::job_view(j, None)).collect();
    for j in decide::cleanup(&views) {
        match ctx.jobs_api().delete(&j, &DeleteParams::background()).await {
            Ok(_) => info!(job = %j, "deleted in-flight build Job of a deleted NodeImage"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    ctx.metrics.set_building(&ni.name_any(), false);
    Ok(Requeue::await_change())
}

/// Maps a build Job to the NodeImage that owns it. (`Controller::owns` cannot: it looks the owner up in the Job's
/// namespace, and NodeImages are cluster-scoped.)
pub fn owner_of(job: Job) -> Option<ObjectRef<NodeImage>> {
    job.owner_references()
        .iter()
        .find(|o| o.kind == "NodeImage" && o.api_version == NodeImage::api_version(&()))
        .map(|o| ObjectRef::new(&o.name))
}

/// The NodeImage a build Pod works for: its Job (`job-name` label) in the Job cache, then the Job's owner.
fn pod_owner(jobs: &Store<Job>, pod: &Pod) -> Option<ObjectRef<NodeImage>> {
    let job = pod.labels().get("job-name")?;
    let ns = pod.namespace()?;
    let j = jobs.get(&ObjectRef::new(job).within(&ns))?;
    owner_of((*j).clone())
}

/// Runs the controller until `shutdown` resolves; then finishes the reconciliations in flight. Jobs and Pods
/// (those the operator labels as its own, in its namespace) are watched into the context's caches, and each of
/// their changes reconciles the owning NodeImage.
pub async fn run<R: ArtifactRegistry>(
    ctx: Arc<Context<R>>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let Some((job_writer, pod_writer)) =
        ctx.writers.lock().unwrap_or_else(|p| p.into_inner()).take()
    else {
        warn!("the controller of this context already ran");
        return;
    };
    let nodeimages: Api<NodeImage> = Api::all(ctx.client.clone());
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let ours =
        watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={OPERATOR_FIELD_MANAGER}"));
    let jobs = reflector::reflector(job_writer, watcher(ctx.jobs_api(), ours.clone()))
        .default_backoff()
        .touched_objects();
    let pods = reflector::reflector(pod_writer, watcher(pods, ours))
        .default_backoff()
        .touched_objects();
    let job_store = ctx.jobs.clone();
    Controller::new(nodeimages, watcher::Config::default())
        .watches_stream(jobs, owner_of)
        .watches_stream(pods, move |p| pod_owner(&job_store, &p))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(name = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .instrument(tracing::info_span!("nodeimage-controller"))
        .await;
}
