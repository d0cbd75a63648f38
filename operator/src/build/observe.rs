//! What a decision looks at, and the pure rules about gathering it: when to resolve, when to ask the registry, the
//! build key in force, validation for in-cluster builds, how Jobs and the registry's answers are represented.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kitfleet_api::constants::ANNOTATION_REFRESH;
use kitfleet_api::nodeimage::ArtifactStatus;
use kitfleet_api::{FieldErrors, NodeImage, NodeImageSpec, NodeImageStatus};

use crate::build::registry::{Resolution, artifact_tag};

/// Annotation the operator writes on a NodeImage: when its references were last resolved (RFC 3339).
pub const ANNOTATION_RESOLVED_AT: &str = "kitfleet.dev/resolved-at";
/// Annotation the operator writes on a NodeImage: the `kitfleet.dev/refresh` value its last resolution honoured.
pub const ANNOTATION_RESOLVED_REFRESH: &str = "kitfleet.dev/resolved-refresh";

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

pub(crate) fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}

/// Validation for in-cluster builds: the API's rules, which include that a NodeImage names no local
/// `files[].source` (a Job cannot read the author's files).
pub fn validate(spec: &NodeImageSpec) -> Result<(), FieldErrors> {
    kitfleet_api::validate::nodeimage(spec)
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
    /// Still running, but its build container cannot start: `reason` is the container's waiting reason
    /// (`ImagePullBackOff`, `ErrImagePull`, `CreateContainerConfigError`…), `message` the kubelet's message.
    Stuck {
        reason: String,
        message: String,
    },
}

impl JobState {
    /// Whether the Job still holds a pod (running or stuck): a superseded or orphaned one is deleted.
    pub fn is_active(&self) -> bool {
        matches!(self, JobState::Running | JobState::Stuck { .. })
    }
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

pub(crate) fn artifact_is_for(a: &ArtifactStatus, key: &str) -> bool {
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
