//! The NodeImage controller's decisions, as pure functions of what it observed (the NodeImage, its build Jobs, the
//! registry's answers) and the clock. The reconciler gathers the inputs, calls [`decide`], and executes the
//! [`Decision`]; nothing here does I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kitfleet_api::constants::ANNOTATION_REFRESH;
use kitfleet_api::nodeimage::ArtifactStatus;
use kitfleet_api::{FieldErrors, NodeImage, NodeImageStatus};

pub use crate::build::conditions::*;
pub use crate::build::observe::*;
use crate::build::observe::{artifact_is_for, elapsed};
use crate::build::registry::{Resolution, artifact_tag};

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
            if j.state.is_active() && Some(j.build_key.as_str()) != keep {
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

fn note(warning: bool, reason: &str, note: String) -> Option<EventNote> {
    Some(EventNote {
        warning,
        reason: reason.to_string(),
        note,
    })
}

/// Decides what to do with one NodeImage (not being deleted; see [`cleanup`]).
pub fn decide(obs: &Observed<'_>, policy: &Policy) -> Decision {
    let mut d = Draft {
        obs,
        status: obs.ni.status.clone().unwrap_or_default(),
        delete_jobs: Vec::new(),
        annotations: None,
    };
    if let Err(errors) = validate(&obs.ni.spec) {
        return invalid(d, errors);
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
        d = match record_resolution(d, res, policy) {
            Ok(d) => d,
            Err(unresolved) => return *unresolved,
        };
    }
    for_key(d, policy)
}

fn invalid(mut d: Draft<'_>, errors: FieldErrors) -> Decision {
    d.status.observed_generation = d.obs.ni.metadata.generation;
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
    d.finish(Action::Invalid(errors), ev, None)
}

/// Records this reconcile's resolution; a failed one ends the decision (`Err`).
fn record_resolution<'a>(
    mut d: Draft<'a>,
    res: &Resolution,
    policy: &Policy,
) -> Result<Draft<'a>, Box<Decision>> {
    let ni = d.obs.ni;
    // The recorded digests no longer describe the spec (or there are none): a failed resolution replaces them.
    let stale = ni.status.as_ref().and_then(|s| s.observed_generation) != ni.metadata.generation
        || ni
            .status
            .as_ref()
            .and_then(|s| s.build_key.as_ref())
            .is_none();
    d.status.observed_generation = ni.metadata.generation;
    if let Some(k) = &res.build_key {
        d.status.build_key = Some(k.clone());
        d.status.resolved = res.resolved.clone();
        let refresh = ni
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_REFRESH))
            .cloned();
        d.annotations = Some(BTreeMap::from([
            (ANNOTATION_RESOLVED_AT.to_string(), d.obs.now.to_string()),
            (
                ANNOTATION_RESOLVED_REFRESH.to_string(),
                refresh.unwrap_or_default(),
            ),
        ]));
        return Ok(d);
    }
    let why: Vec<String> = res
        .resolved
        .iter()
        .filter_map(|r| {
            // Name each reference once, whether or not its error already starts with it.
            r.error.as_ref().map(|e| {
                let e = e.strip_prefix(&format!("{}: ", r.reference)).unwrap_or(e);
                format!("{}: {e}", r.reference)
            })
        })
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
    // A failed refresh keeps the recorded digests and key (and their build); no bookkeeping is written, so the
    // refresh is tried again.
    d.cond(COND_DEGRADED, true, "Unresolved", &message);
    let ev = note(true, "Unresolved", message.clone());
    Err(Box::new(d.finish(
        Action::Unresolved(message),
        ev,
        Some(policy.retry_base),
    )))
}

/// Decides on the build key in force: up to date, adopt, build, wait, record, or retry.
fn for_key(mut d: Draft<'_>, policy: &Policy) -> Decision {
    let (obs, ni) = (d.obs, d.obs.ni);
    let Some(key) = d.status.build_key.clone() else {
        // Only reachable when the caller skipped a resolution that resolve_reason asked for.
        return d.finish(
            Action::Unresolved("no build key yet".into()),
            None,
            Some(policy.retry_base),
        );
    };
    // A `Degraded` the rollout controller wrote is its own to clear.
    let rollouts =
        d.status.conditions.iter().any(|c| {
            c.type_ == COND_DEGRADED && crate::rollout::status::is_rollout_reason(&c.reason)
        });
    if !rollouts {
        d.cond(COND_DEGRADED, false, "AsExpected", "");
    }
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
        (Some(j), _) if matches!(j.state, JobState::Stuck { .. }) => {
            let JobState::Stuck { reason, message } = &j.state else {
                unreachable!("matched Stuck")
            };
            let text = format!(
                "build Job {} (attempt {}) cannot start: {reason}: {message}",
                j.name, j.attempt
            );
            d.cond(COND_BUILT, false, reason, &text);
            d.cond(COND_PROGRESSING, false, reason, "the build pod is waiting");
            d.cond(COND_DEGRADED, true, reason, &text);
            let ev = note(true, reason, text.clone());
            d.finish(
                Action::Building {
                    job: j.name.clone(),
                },
                ev,
                None,
            )
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
    let job = crate::build::job::job_name(d.obs.ni, key, attempt);
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
    d.finish(
        Action::Build {
            build_key: key.to_string(),
            attempt,
        },
        event,
        None,
    )
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

/// Condition type: a reference names a loopback registry, which the operator may reach but a build pod cannot.
pub const COND_LOOPBACK: &str = "LoopbackRegistry";

/// Whether an image reference or repository names a registry on the loopback interface.
fn is_loopback(reference: &str) -> bool {
    let host = reference.split('/').next().unwrap_or_default();
    if !reference.contains('/') {
        return false;
    }
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost" || name == "::1" || name.starts_with("127.")
}

/// The spec's references (and the output repository) on a loopback registry, each with its field path.
pub fn loopback_references(ni: &NodeImage) -> Vec<String> {
    let mut out: Vec<String> = ni
        .spec
        .image
        .references()
        .into_iter()
        .filter(|(_, r)| is_loopback(r))
        .map(|(path, r)| format!("spec.{path}: {r}"))
        .collect();
    if is_loopback(&ni.spec.output.repository) {
        out.push(format!(
            "spec.output.repository: {}",
            ni.spec.output.repository
        ));
    }
    out
}

/// Adds to a decision the `LoopbackRegistry` condition (or removes it once no reference needs it): the operator
/// resolved these references, but a build Job's pod has its own loopback and will not reach them. Returns the
/// Warning Event to publish when the condition appears or changes.
pub fn flag_loopback(ni: &NodeImage, d: &mut Decision, now: Timestamp) -> Option<EventNote> {
    if matches!(d.action, Action::Invalid(_)) {
        return None;
    }
    let refs = loopback_references(ni);
    let current = ni.status.clone().unwrap_or_default();
    let mut status = d.status.clone().unwrap_or_else(|| current.clone());
    let before = status.clone();
    let message = format!(
        "a build Job's pod has its own loopback interface and cannot reach {}; name a registry address that both \
         the operator and the build pods reach",
        refs.join(", ")
    );
    if refs.is_empty() {
        status.conditions.retain(|c| c.type_ != COND_LOOPBACK);
    } else {
        set_condition(
            &mut status.conditions,
            COND_LOOPBACK,
            true,
            "LoopbackRegistry",
            &clamp(&message, MAX_MESSAGE),
            ni.metadata.generation,
            now,
        );
    }
    if status == before {
        return None;
    }
    d.status = (status != current).then_some(status);
    (!refs.is_empty()).then(|| EventNote {
        warning: true,
        reason: "LoopbackRegistry".into(),
        note: message,
    })
}

/// On deletion: the Jobs to delete (every Job still running; finished Jobs and published artifacts stay).
pub fn cleanup(jobs: &[JobView]) -> Vec<String> {
    jobs.iter()
        .filter(|j| j.state.is_active())
        .map(|j| j.name.clone())
        .collect()
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
