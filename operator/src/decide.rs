//! The NodeImage controller's decisions, as pure functions of what it observed (the NodeImage, its build Jobs, the
//! registry's answers) and the clock. The reconciler gathers the inputs, calls [`decide`], and executes the
//! [`Decision`]; nothing here does I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kitfleet_api::constants::ANNOTATION_REFRESH;
use kitfleet_api::nodeimage::ArtifactStatus;
use kitfleet_api::{FieldError, FieldErrors, NodeImage, NodeImageSpec, NodeImageStatus};

use crate::registry::{Resolution, artifact_tag};

/// Annotation the operator writes on a NodeImage: when its references were last resolved (RFC 3339).
pub const ANNOTATION_RESOLVED_AT: &str = "kitfleet.dev/resolved-at";
/// Annotation the operator writes on a NodeImage: the `kitfleet.dev/refresh` value its last resolution honoured.
pub const ANNOTATION_RESOLVED_REFRESH: &str = "kitfleet.dev/resolved-refresh";

pub const COND_BUILT: &str = "Built";
pub const COND_PROGRESSING: &str = "Progressing";
pub const COND_DEGRADED: &str = "Degraded";

/// Why references are resolved again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveReason {
    /// The spec's generation is not the one the status was resolved for (or nothing was resolved yet).
    SpecChanged,
    /// `kitfleet.dev/refresh` has a value not honoured yet.
    RefreshRequested,
    /// `spec.refreshInterval` has passed since the last resolution.
    IntervalElapsed,
}

/// Whether this reconcile resolves the spec's references, and why. `None`: the digests in status stand.
pub fn resolve_reason(ni: &NodeImage, now: Timestamp) -> Option<ResolveReason> {
    let status = ni.status.as_ref();
    let annotations = &ni.metadata.annotations;
    let get = |k: &str| {
        annotations
            .as_ref()
            .and_then(|a| a.get(k))
            .map(String::as_str)
    };
    if status.and_then(|s| s.build_key.as_ref()).is_none()
        || status.and_then(|s| s.observed_generation) != ni.metadata.generation
    {
        return Some(ResolveReason::SpecChanged);
    }
    if let Some(r) = get(ANNOTATION_REFRESH).filter(|r| !r.is_empty())
        && get(ANNOTATION_RESOLVED_REFRESH) != Some(r)
    {
        return Some(ResolveReason::RefreshRequested);
    }
    if let Some(interval) = ni.spec.refresh_interval {
        let due = get(ANNOTATION_RESOLVED_AT)
            .and_then(|t| t.parse::<Timestamp>().ok())
            .map(|at| elapsed(at, now));
        match due {
            Some(e) if e < Duration::from(interval) => {}
            _ => return Some(ResolveReason::IntervalElapsed),
        }
    }
    None
}

fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}

/// Validation for in-cluster builds: the API's rules, plus no local `files[].source` (a Job cannot read them).
pub fn validate(spec: &NodeImageSpec) -> Result<(), FieldErrors> {
    let mut errs = match kitfleet_api::validate::nodeimage(spec) {
        Ok(()) => Vec::new(),
        Err(e) => e.0,
    };
    for (i, f) in spec.image.files.iter().enumerate() {
        if f.source.is_some() {
            errs.push(FieldError::new(
                format!("spec.files[{i}].source"),
                "local sources cannot be read by in-cluster builds; use contents",
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(FieldErrors(errs))
    }
}

/// A build Job as the decision sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    pub name: String,
    /// `sha256:<hex>`, from the Job's build-key annotation.
    pub build_key: String,
    /// 1 for the first build of a key, then one more per retry.
    pub attempt: u32,
    pub state: JobState,
    /// When it finished (succeeded or failed).
    pub finished: Option<Timestamp>,
}

/// Where a Job is.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Running,
    Succeeded,
    /// `reason` from the Job's Failed condition, `message` the tail of the build container's termination message.
    Failed {
        reason: String,
        message: String,
    },
}

/// What the registry said about the artifact of the current build key.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// Not asked (the status already records the artifact, or there is no key).
    Skipped,
    Found(ArtifactStatus),
    Absent,
    Error(String),
}

/// Whether the reconciler must ask the registry for the artifact of `build_key`.
pub fn needs_lookup(status: Option<&NodeImageStatus>, build_key: Option<&str>) -> bool {
    match build_key {
        None => false,
        Some(k) => !status
            .and_then(|s| s.artifact.as_ref())
            .is_some_and(|a| artifact_is_for(a, k)),
    }
}

/// The build key the decision works with: this reconcile's resolution, else the one in status.
pub fn current_key<'a>(ni: &'a NodeImage, resolution: Option<&'a Resolution>) -> Option<&'a str> {
    match resolution {
        Some(r) => r.build_key.as_deref(),
        None => ni.status.as_ref().and_then(|s| s.build_key.as_deref()),
    }
}

fn artifact_is_for(a: &ArtifactStatus, key: &str) -> bool {
    a.reference.contains(&format!(":{}@", artifact_tag(key)))
}

/// Retry policy of failed builds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl Policy {
    /// How long to wait after attempt `attempt` failed: base, 2·base, 4·base… capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.retry_base
            .checked_mul(factor)
            .map_or(self.retry_max, |d| d.min(self.retry_max))
    }
}

/// Everything one decision looks at.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub ni: &'a NodeImage,
    /// This reconcile's resolution, when [`resolve_reason`] asked for one.
    pub resolution: Option<&'a Resolution>,
    /// The NodeImage's build Jobs.
    pub jobs: &'a [JobView],
    pub lookup: &'a Lookup,
    /// Why the push secret could not be used (missing, wrong type, no `.dockerconfigjson`).
    pub secret_error: Option<&'a str>,
    pub now: Timestamp,
}

/// What the controller does this time.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The spec is invalid: Degraded, no Job.
    Invalid(FieldErrors),
    /// The push secret cannot be used: Degraded, no Job, retried.
    PushSecret(String),
    /// A reference did not resolve: Degraded, retried.
    Unresolved(String),
    /// The registry could not be asked: nothing written, retried with backoff.
    RegistryUnavailable(String),
    /// The status already records the artifact of the current key.
    UpToDate,
    /// The artifact of the current key is already published: adopt it, no Job.
    Adopt(ArtifactStatus),
    /// Create the build Job of the current key.
    Build { build_key: String, attempt: u32 },
    /// The current key's Job is running.
    Building { job: String },
    /// The current key's Job succeeded and its artifact is published.
    Built {
        job: String,
        artifact: ArtifactStatus,
    },
    /// The current key's Job failed; it is retried once `retry_in` has passed.
    Failed {
        job: String,
        reason: String,
        message: String,
        retry_in: Duration,
    },
}

/// An Event to publish about the NodeImage.
#[derive(Debug, Clone, PartialEq)]
pub struct EventNote {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// A decision and every write it implies. An empty decision (no status, no annotations, no deletions, no Job, no
/// Event) writes nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub action: Action,
    /// The new status, only when it differs from the current one.
    pub status: Option<NodeImageStatus>,
    /// Annotations to apply on the NodeImage (resolution bookkeeping), only when a resolution ran.
    pub annotations: Option<BTreeMap<String, String>>,
    /// Jobs to delete (superseded, or failed and about to be retried).
    pub delete_jobs: Vec<String>,
    pub event: Option<EventNote>,
    /// Reconcile again after this long (besides watch events).
    pub requeue: Option<Duration>,
}

/// Sets a condition, keeping its transition time when its status does not change.
pub fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let new = |time| Condition {
        type_: type_.to_string(),
        status: status.clone(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time: time,
    };
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == status => *c = new(c.last_transition_time.clone()),
        Some(c) => *c = new(Time(now)),
        None => conds.push(new(Time(now))),
    }
}

struct Draft<'a> {
    obs: &'a Observed<'a>,
    status: NodeImageStatus,
    delete_jobs: Vec<String>,
    annotations: Option<BTreeMap<String, String>>,
}

impl Draft<'_> {
    fn cond(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        let message = clamp(message, MAX_MESSAGE);
        let generation = self.obs.ni.metadata.generation;
        set_condition(
            &mut self.status.conditions,
            type_,
            status,
            reason,
            &message,
            generation,
            self.obs.now,
        );
    }

    /// Marks every running Job not building `keep` for deletion.
    fn supersede_running(&mut self, keep: Option<&str>) {
        for j in self.obs.jobs {
            if j.state == JobState::Running && Some(j.build_key.as_str()) != keep {
                self.delete_jobs.push(j.name.clone());
            }
        }
    }

    fn finish(
        self,
        action: Action,
        event: Option<EventNote>,
        requeue: Option<Duration>,
    ) -> Decision {
        let current = self.obs.ni.status.clone().unwrap_or_default();
        let changed = self.status != current;
        Decision {
            action,
            status: changed.then_some(self.status),
            annotations: self.annotations,
            delete_jobs: self.delete_jobs,
            // Events accompany changes: a repeated, unchanged observation stays silent.
            event: event.filter(|_| changed),
            requeue,
        }
    }
}

/// Longest condition message written (the API allows 32768 bytes; a long list of errors is cut).
pub const MAX_MESSAGE: usize = 4096;

/// `s` cut to at most `max` bytes at a character boundary, marked with `…` when cut.
pub fn clamp(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn note(warning: bool, reason: &str, note: String) -> Option<EventNote> {
    Some(EventNote {
        warning,
        reason: reason.to_string(),
        note,
    })
}

/// Decides what to do with one NodeImage (not being deleted; see [`cleanup`]).
pub fn decide(obs: &Observed<'_>, policy: &Policy) -> Decision {
    let ni = obs.ni;
    let mut d = Draft {
        obs,
        status: ni.status.clone().unwrap_or_default(),
        delete_jobs: Vec::new(),
        annotations: None,
    };
    if let Err(errors) = validate(&ni.spec) {
        d.status.observed_generation = ni.metadata.generation;
        d.cond(COND_DEGRADED, true, "InvalidSpec", &errors.to_string());
        d.cond(
            COND_BUILT,
            false,
            "InvalidSpec",
            "the spec is invalid (see Degraded)",
        );
        d.cond(
            COND_PROGRESSING,
            false,
            "InvalidSpec",
            "no build while the spec is invalid",
        );
        d.supersede_running(None);
        let ev = note(true, "InvalidSpec", errors.to_string());
        return d.finish(Action::Invalid(errors), ev, None);
    }
    if let Some(e) = obs.secret_error {
        d.cond(COND_DEGRADED, true, "PushSecret", e);
        d.cond(
            COND_PROGRESSING,
            false,
            "PushSecret",
            "no build without the push secret",
        );
        let ev = note(true, "PushSecret", e.to_string());
        return d.finish(
            Action::PushSecret(e.to_string()),
            ev,
            Some(policy.retry_base),
        );
    }
    if let Some(res) = obs.resolution {
        // The recorded digests no longer describe the spec (or there are none): a failed resolution replaces them.
        let stale = ni.status.as_ref().and_then(|s| s.observed_generation)
            != ni.metadata.generation
            || ni
                .status
                .as_ref()
                .and_then(|s| s.build_key.as_ref())
                .is_none();
        d.status.observed_generation = ni.metadata.generation;
        match &res.build_key {
            Some(k) => {
                d.status.build_key = Some(k.clone());
                d.status.resolved = res.resolved.clone();
                let refresh = ni
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_REFRESH))
                    .cloned();
                d.annotations = Some(BTreeMap::from([
                    (ANNOTATION_RESOLVED_AT.to_string(), obs.now.to_string()),
                    (
                        ANNOTATION_RESOLVED_REFRESH.to_string(),
                        refresh.unwrap_or_default(),
                    ),
                ]));
            }
            None => {
                let why: Vec<String> = res
                    .resolved
                    .iter()
                    .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.reference)))
                    .collect();
                let message = format!("unresolved references: {}", why.join("; "));
                if stale {
                    d.status.build_key = None;
                    d.status.resolved = res.resolved.clone();
                    d.supersede_running(None);
                    d.cond(
                        COND_BUILT,
                        false,
                        "Unresolved",
                        "references of the current spec did not resolve",
                    );
                }
                // A failed refresh keeps the recorded digests and key (and their build); no bookkeeping is written,
                // so the refresh is tried again.
                d.cond(COND_DEGRADED, true, "Unresolved", &message);
                let ev = note(true, "Unresolved", message.clone());
                return d.finish(Action::Unresolved(message), ev, Some(policy.retry_base));
            }
        }
    }
    let Some(key) = d.status.build_key.clone() else {
        // Only reachable when the caller skipped a resolution that resolve_reason asked for.
        return d.finish(
            Action::Unresolved("no build key yet".into()),
            None,
            Some(policy.retry_base),
        );
    };
    d.cond(COND_DEGRADED, false, "AsExpected", "");
    d.supersede_running(Some(&key));
    if d.status
        .artifact
        .as_ref()
        .is_some_and(|a| artifact_is_for(a, &key))
    {
        d.cond(
            COND_BUILT,
            true,
            built_reason(&d.status),
            &built_message(&d.status),
        );
        d.cond(COND_PROGRESSING, false, "UpToDate", "");
        return d.finish(Action::UpToDate, None, refresh_requeue(ni, obs.now));
    }
    let latest = obs
        .jobs
        .iter()
        .filter(|j| j.build_key == key)
        .max_by_key(|j| j.attempt);
    match (latest, obs.lookup) {
        (_, Lookup::Error(e)) => {
            // Nothing is written: the error policy retries with backoff.
            Decision {
                action: Action::RegistryUnavailable(e.clone()),
                status: None,
                annotations: None,
                delete_jobs: Vec::new(),
                event: None,
                requeue: None,
            }
        }
        (Some(j), _) if j.state == JobState::Running => {
            d.cond(
                COND_BUILT,
                false,
                "Building",
                &format!("build Job {} (attempt {}) is running", j.name, j.attempt),
            );
            d.cond(
                COND_PROGRESSING,
                true,
                "Building",
                &format!("building {key}"),
            );
            d.finish(
                Action::Building {
                    job: j.name.clone(),
                },
                None,
                None,
            )
        }
        (Some(j), Lookup::Found(a)) if j.state == JobState::Succeeded => {
            let a = a.clone();
            d.status.artifact = Some(a.clone());
            d.cond(
                COND_BUILT,
                true,
                "Built",
                &format!("published {}", a.reference),
            );
            d.cond(COND_PROGRESSING, false, "UpToDate", "");
            let ev = note(
                false,
                "Built",
                format!("build Job {} published {}", j.name, a.reference),
            );
            d.finish(
                Action::Built {
                    job: j.name.clone(),
                    artifact: a,
                },
                ev,
                refresh_requeue(ni, obs.now),
            )
        }
        (Some(j), Lookup::Absent) if j.state == JobState::Succeeded => {
            let message = format!(
                "the Job succeeded but {:?} holds no artifact tagged {}",
                ni.spec.output.repository,
                artifact_tag(&key)
            );
            failed(d, j, &key, "ArtifactMissing".into(), message, policy)
        }
        (_, Lookup::Found(a)) => {
            let a = a.clone();
            d.status.artifact = Some(a.clone());
            d.cond(
                COND_BUILT,
                true,
                "Adopted",
                &format!("adopted {} (already published)", a.reference),
            );
            d.cond(COND_PROGRESSING, false, "UpToDate", "");
            let ev = note(
                false,
                "Adopted",
                format!("artifact {} was already published; no build", a.reference),
            );
            d.finish(Action::Adopt(a), ev, refresh_requeue(ni, obs.now))
        }
        (Some(j), _) if matches!(j.state, JobState::Failed { .. }) => {
            let JobState::Failed { reason, message } = j.state.clone() else {
                unreachable!("matched Failed")
            };
            failed(d, j, &key, reason, message, policy)
        }
        (_, Lookup::Skipped) => d.finish(
            Action::Unresolved("artifact lookup skipped".into()),
            None,
            Some(Duration::from_secs(1)),
        ),
        (_, Lookup::Absent) => start_build(d, &key, 1, "BuildStarted"),
    }
}

fn built_reason(s: &NodeImageStatus) -> &'static str {
    match s
        .conditions
        .iter()
        .find(|c| c.type_ == COND_BUILT && c.status == "True")
    {
        Some(c) if c.reason == "Adopted" => "Adopted",
        _ => "Built",
    }
}

fn built_message(s: &NodeImageStatus) -> String {
    match s
        .conditions
        .iter()
        .find(|c| c.type_ == COND_BUILT && c.status == "True")
    {
        Some(c) => c.message.clone(),
        None => format!(
            "published {}",
            s.artifact.as_ref().map_or("", |a| a.reference.as_str())
        ),
    }
}

fn start_build(mut d: Draft<'_>, key: &str, attempt: u32, reason: &str) -> Decision {
    let job = crate::job::job_name(d.obs.ni, key, attempt);
    d.cond(
        COND_BUILT,
        false,
        "Building",
        &format!("build Job {job} (attempt {attempt}) is running"),
    );
    d.cond(
        COND_PROGRESSING,
        true,
        "Building",
        &format!("building {key}"),
    );
    let event = Some(EventNote {
        warning: false,
        reason: reason.to_string(),
        note: format!("created build Job {job} for {key} (attempt {attempt})"),
    });
    let mut dec = d.finish(
        Action::Build {
            build_key: key.to_string(),
            attempt,
        },
        None,
        None,
    );
    dec.event = event;
    dec
}

fn failed(
    mut d: Draft<'_>,
    j: &JobView,
    key: &str,
    reason: String,
    message: String,
    policy: &Policy,
) -> Decision {
    let wait = policy.backoff(j.attempt);
    let since = j.finished.map_or(wait, |f| elapsed(f, d.obs.now));
    if since >= wait {
        d.delete_jobs.push(j.name.clone());
        return start_build(d, key, j.attempt + 1, "BuildRetried");
    }
    let retry_in = wait - since;
    let text = format!("attempt {} failed ({reason}): {message}", j.attempt);
    d.cond(COND_BUILT, false, "BuildFailed", &text);
    d.cond(
        COND_PROGRESSING,
        false,
        "BuildFailed",
        &format!("retrying in {}s", wait.as_secs()),
    );
    let ev = note(true, "BuildFailed", format!("build Job {}: {text}", j.name));
    let action = Action::Failed {
        job: j.name.clone(),
        reason,
        message,
        retry_in,
    };
    d.finish(action, ev, Some(retry_in))
}

/// When a `spec.refreshInterval` asks for the next resolution.
fn refresh_requeue(ni: &NodeImage, now: Timestamp) -> Option<Duration> {
    let interval = Duration::from(ni.spec.refresh_interval?);
    let at = ni
        .metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_RESOLVED_AT)?
        .parse::<Timestamp>()
        .ok();
    Some(
        at.map_or(interval, |at| interval.saturating_sub(elapsed(at, now)))
            .max(Duration::from_secs(1)),
    )
}

/// On deletion: the Jobs to delete (every Job still running; finished Jobs and published artifacts stay).
pub fn cleanup(jobs: &[JobView]) -> Vec<String> {
    jobs.iter()
        .filter(|j| j.state == JobState::Running)
        .map(|j| j.name.clone())
        .collect()
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
