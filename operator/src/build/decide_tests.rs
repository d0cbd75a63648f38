//! Table-driven tests of every decision branch.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kitfleet_api::NodeImage;
use kitfleet_api::constants::ANNOTATION_REFRESH;
use kitfleet_api::nodeimage::{ArtifactStatus, FormatArtifact, ResolvedImage};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kitfleet_api::FieldError;

use super::*;
use crate::build::registry::Resolution;

const K1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const K2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const D: &str = "sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";

const POLICY: Policy = Policy {
    retry_base: Duration::from_secs(30),
    retry_max: Duration::from_secs(900),
};

fn now() -> Timestamp {
    "2026-11-29T01:00:00Z".parse().unwrap()
}

fn ago(secs: i64) -> Timestamp {
    now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(secs))
        .unwrap()
}

const VALID: &str = "apiVersion: kitfleet.dev/v1alpha1
kind: NodeImage
metadata:
  name: demo
spec:
  kernel:
    image: 127.0.0.1:5000/fixtures/kernel:6.1
    cmdline: console=ttyS0
  init:
  - 127.0.0.1:5000/fixtures/init:v1
  formats: [kernel+initrd]
  output:
    repository: 127.0.0.1:5000/kitfleet/demo
";

fn ni(yaml: &str) -> NodeImage {
    let mut ni = NodeImage::from_yaml(yaml).unwrap();
    ni.metadata.uid = Some("uid-1".into());
    ni.metadata.generation = Some(2);
    ni
}

fn valid() -> NodeImage {
    ni(VALID)
}

fn invalid() -> NodeImage {
    ni(&VALID.replace(
        "  kernel:\n    image: 127.0.0.1:5000/fixtures/kernel:6.1\n    cmdline: console=ttyS0\n",
        "",
    ))
}

fn resolved() -> Vec<ResolvedImage> {
    [
        "127.0.0.1:5000/fixtures/kernel:6.1",
        "127.0.0.1:5000/fixtures/init:v1",
    ]
    .map(|r| ResolvedImage {
        reference: r.into(),
        digest: Some(D.into()),
        error: None,
    })
    .into()
}

fn resolution(key: &str) -> Resolution {
    Resolution {
        resolved: resolved(),
        build_key: Some(key.into()),
    }
}

fn artifact(key: &str) -> ArtifactStatus {
    let digest = "sha256:abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789";
    ArtifactStatus {
        reference: format!(
            "127.0.0.1:5000/kitfleet/demo:{}@{digest}",
            crate::build::registry::artifact_tag(key)
        ),
        digest: digest.into(),
        short_digest: digest[7..19].into(),
        formats: vec![FormatArtifact {
            format: "kernel+initrd".into(),
            digest: D.into(),
            size: 42,
        }],
    }
}

/// A NodeImage whose status was resolved to `key` for its current generation.
fn resolved_to(key: &str) -> NodeImage {
    let mut n = valid();
    n.status = Some(NodeImageStatus {
        observed_generation: Some(2),
        build_key: Some(key.into()),
        resolved: resolved(),
        ..Default::default()
    });
    n
}

fn with_artifact(key: &str) -> NodeImage {
    let mut n = resolved_to(key);
    let s = n.status.as_mut().unwrap();
    s.artifact = Some(artifact(key));
    set_condition(
        &mut s.conditions,
        COND_DEGRADED,
        false,
        "AsExpected",
        "",
        Some(2),
        ago(100),
    );
    set_condition(
        &mut s.conditions,
        COND_BUILT,
        true,
        "Built",
        "published x",
        Some(2),
        ago(100),
    );
    set_condition(
        &mut s.conditions,
        COND_PROGRESSING,
        false,
        "UpToDate",
        "",
        Some(2),
        ago(100),
    );
    n
}

fn job(key: &str, attempt: u32, state: JobState, finished: Option<Timestamp>) -> JobView {
    JobView {
        name: format!("demo-{}-{attempt}", &key[7..19]),
        build_key: key.into(),
        attempt,
        state,
        finished,
    }
}

fn failed(msg: &str) -> JobState {
    JobState::Failed {
        reason: "BackoffLimitExceeded".into(),
        message: msg.into(),
    }
}

fn cond<'a>(s: &'a NodeImageStatus, t: &str) -> &'a Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t} condition in {s:?}"))
}

/// Applies a decision's writes to the NodeImage, as the API server would.
fn settle(mut n: NodeImage, d: &Decision) -> NodeImage {
    if let Some(s) = &d.status {
        n.status = Some(s.clone());
    }
    if let Some(a) = &d.annotations {
        n.metadata
            .annotations
            .get_or_insert_default()
            .extend(a.clone());
    }
    n
}

struct Case {
    name: &'static str,
    ni: NodeImage,
    resolution: Option<Resolution>,
    jobs: Vec<JobView>,
    lookup: Lookup,
    check: fn(&Decision),
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "invalid spec: Degraded listing the errors, an Event, no Job",
            ni: invalid(),
            resolution: None,
            jobs: vec![],
            lookup: Lookup::Skipped,
            check: |d| {
                assert!(matches!(&d.action, Action::Invalid(e) if e.at("spec.kernel").is_some()));
                let s = d.status.as_ref().unwrap();
                let c = cond(s, COND_DEGRADED);
                assert_eq!(
                    (c.status.as_str(), c.reason.as_str()),
                    ("True", "InvalidSpec")
                );
                assert!(
                    c.message.contains("spec.kernel: a kernel is required"),
                    "{}",
                    c.message
                );
                assert_eq!(cond(s, COND_BUILT).status, "False");
                assert_eq!(s.observed_generation, Some(2));
                let e = d.event.as_ref().unwrap();
                assert!(e.warning && e.reason == "InvalidSpec" && e.note.contains("spec.kernel"));
                assert!(d.delete_jobs.is_empty() && d.annotations.is_none());
            },
        },
        Case {
            name: "invalid spec during a build: the running Job is superseded",
            ni: {
                let mut n = invalid();
                n.status = resolved_to(K1).status;
                n
            },
            resolution: None,
            jobs: vec![
                job(K1, 1, JobState::Running, None),
                job(K2, 1, JobState::Succeeded, Some(ago(5))),
            ],
            lookup: Lookup::Skipped,
            check: |d| {
                assert!(matches!(d.action, Action::Invalid(_)));
                assert_eq!(d.delete_jobs, vec![format!("demo-{}-1", &K1[7..19])]);
            },
        },
        Case {
            name: "local files[].source is invalid in-cluster, with its path",
            ni: ni(&VALID.replace(
                "  formats:",
                "  files:\n  - path: etc/x\n    source: ./x\n  formats:",
            )),
            resolution: None,
            jobs: vec![],
            lookup: Lookup::Skipped,
            check: |d| {
                assert!(
                    matches!(&d.action, Action::Invalid(e) if e.at("spec.files[0].source").is_some()),
                    "{:?}",
                    d.action
                );
            },
        },
        Case {
            name: "new NodeImage, nothing published: resolve, record digests and key, one build Job",
            ni: valid(),
            resolution: Some(resolution(K1)),
            jobs: vec![],
            lookup: Lookup::Absent,
            check: |d| {
                assert_eq!(
                    d.action,
                    Action::Build {
                        build_key: K1.into(),
                        attempt: 1
                    }
                );
                let s = d.status.as_ref().unwrap();
                assert_eq!(s.build_key.as_deref(), Some(K1));
                assert_eq!(s.resolved, resolved());
                assert_eq!(s.observed_generation, Some(2));
                assert_eq!(cond(s, COND_PROGRESSING).status, "True");
                assert_eq!(cond(s, COND_DEGRADED).status, "False");
                assert_eq!(
                    (
                        cond(s, COND_BUILT).status.as_str(),
                        cond(s, COND_BUILT).reason.as_str()
                    ),
                    ("False", "Building")
                );
                let a = d.annotations.as_ref().unwrap();
                assert_eq!(a[ANNOTATION_RESOLVED_AT], now().to_string());
                assert_eq!(a[ANNOTATION_RESOLVED_REFRESH], "");
                assert_eq!(d.event.as_ref().unwrap().reason, "BuildStarted");
                assert!(d.delete_jobs.is_empty());
            },
        },
        Case {
            name: "a reference does not resolve: Degraded, no Job, retried",
            ni: valid(),
            resolution: Some(Resolution {
                resolved: vec![ResolvedImage {
                    reference: "r/x:1".into(),
                    digest: None,
                    error: Some("manifest unknown".into()),
                }],
                build_key: None,
            }),
            jobs: vec![],
            lookup: Lookup::Skipped,
            check: |d| {
                assert!(
                    matches!(&d.action, Action::Unresolved(m) if m.contains("r/x:1: manifest unknown"))
                );
                let s = d.status.as_ref().unwrap();
                assert_eq!(cond(s, COND_DEGRADED).reason, "Unresolved");
                assert_eq!(s.build_key, None);
                assert_eq!(d.requeue, Some(POLICY.retry_base));
                assert_eq!(d.event.as_ref().unwrap().reason, "Unresolved");
            },
        },
        Case {
            name: "a refresh fails: the recorded digests, key and build stand; no bookkeeping, so it is retried",
            ni: {
                let mut n = with_artifact(K1);
                n.metadata.annotations = Some(BTreeMap::from([(
                    ANNOTATION_REFRESH.to_string(),
                    "1".to_string(),
                )]));
                n
            },
            resolution: Some(Resolution {
                resolved: vec![ResolvedImage {
                    reference: "127.0.0.1:5000/fixtures/init:v1".into(),
                    digest: None,
                    error: Some("connection refused".into()),
                }],
                build_key: None,
            }),
            jobs: vec![],
            lookup: Lookup::Skipped,
            check: |d| {
                assert!(matches!(d.action, Action::Unresolved(_)));
                let s = d.status.as_ref().unwrap();
                assert_eq!(
                    (s.build_key.as_deref(), &s.resolved, &s.artifact),
                    (Some(K1), &resolved(), &Some(artifact(K1)))
                );
                assert_eq!(cond(s, COND_DEGRADED).status, "True");
                assert_eq!(
                    cond(s, COND_BUILT).status,
                    "True",
                    "the artifact of the recorded key is still built"
                );
                assert_eq!(d.annotations, None);
            },
        },
        Case {
            name: "artifact already published for the key: adopt, no Job",
            ni: valid(),
            resolution: Some(resolution(K1)),
            jobs: vec![],
            lookup: Lookup::Found(artifact(K1)),
            check: |d| {
                assert_eq!(d.action, Action::Adopt(artifact(K1)));
                let s = d.status.as_ref().unwrap();
                assert_eq!(s.artifact, Some(artifact(K1)));
                assert_eq!(
                    (
                        cond(s, COND_BUILT).status.as_str(),
                        cond(s, COND_BUILT).reason.as_str()
                    ),
                    ("True", "Adopted")
                );
                assert_eq!(d.event.as_ref().unwrap().reason, "Adopted");
            },
        },
        Case {
            name: "build running: Building",
            ni: resolved_to(K1),
            resolution: None,
            jobs: vec![job(K1, 1, JobState::Running, None)],
            lookup: Lookup::Absent,
            check: |d| {
                assert_eq!(
                    d.action,
                    Action::Building {
                        job: format!("demo-{}-1", &K1[7..19])
                    }
                );
                assert!(d.delete_jobs.is_empty() && d.event.is_none() && d.annotations.is_none());
            },
        },
        Case {
            name: "spec changed during a build: the old Job is superseded, a new one starts",
            ni: {
                let mut n = resolved_to(K1);
                n.metadata.generation = Some(3);
                n
            },
            resolution: Some(resolution(K2)),
            jobs: vec![job(K1, 1, JobState::Running, None)],
            lookup: Lookup::Absent,
            check: |d| {
                assert_eq!(
                    d.action,
                    Action::Build {
                        build_key: K2.into(),
                        attempt: 1
                    }
                );
                assert_eq!(d.delete_jobs, vec![format!("demo-{}-1", &K1[7..19])]);
                assert_eq!(d.status.as_ref().unwrap().observed_generation, Some(3));
            },
        },
        Case {
            name: "Job succeeded: status.artifact and Built=True",
            ni: resolved_to(K1),
            resolution: None,
            jobs: vec![job(K1, 1, JobState::Succeeded, Some(ago(10)))],
            lookup: Lookup::Found(artifact(K1)),
            check: |d| {
                assert_eq!(
                    d.action,
                    Action::Built {
                        job: format!("demo-{}-1", &K1[7..19]),
                        artifact: artifact(K1)
                    }
                );
                let s = d.status.as_ref().unwrap();
                assert_eq!(s.artifact, Some(artifact(K1)));
                assert_eq!(
                    (
                        cond(s, COND_BUILT).status.as_str(),
                        cond(s, COND_BUILT).reason.as_str()
                    ),
                    ("True", "Built")
                );
                assert_eq!(cond(s, COND_PROGRESSING).status, "False");
                assert_eq!(d.event.as_ref().unwrap().reason, "Built");
                assert!(d.delete_jobs.is_empty());
            },
        },
        Case {
            name: "Job succeeded but nothing was published: a failure, retried",
            ni: resolved_to(K1),
            resolution: None,
            jobs: vec![job(K1, 1, JobState::Succeeded, Some(ago(10)))],
            lookup: Lookup::Absent,
            check: |d| {
                assert!(
                    matches!(&d.action, Action::Failed { reason, .. } if reason == "ArtifactMissing")
                );
                assert_eq!(d.requeue, Some(Duration::from_secs(20)));
            },
        },
        Case {
            name: "Job failed recently: Built=False with the reason and the message tail, retry after backoff",
            ni: resolved_to(K1),
            resolution: None,
            jobs: vec![job(
                K1,
                2,
                failed("kitfleet-build: error: registry error: connection refused"),
                Some(ago(15)),
            )],
            lookup: Lookup::Absent,
            check: |d| {
                assert!(
                    matches!(&d.action, Action::Failed { retry_in, .. } if *retry_in == Duration::from_secs(45))
                );
                let c = cond(d.status.as_ref().unwrap(), COND_BUILT);
                assert_eq!(
                    (c.status.as_str(), c.reason.as_str()),
                    ("False", "BuildFailed")
                );
                assert!(c.message.contains("attempt 2 failed (BackoffLimitExceeded): kitfleet-build: error: registry error"), "{}", c.message);
                assert_eq!(d.requeue, Some(Duration::from_secs(45)));
                assert!(d.event.as_ref().unwrap().warning);
                assert!(d.delete_jobs.is_empty());
            },
        },
        Case {
            name: "Job failed and the backoff has passed: delete it, start the next attempt",
            ni: resolved_to(K1),
            resolution: None,
            jobs: vec![job(K1, 2, failed("boom"), Some(ago(61)))],
            lookup: Lookup::Absent,
            check: |d| {
                assert_eq!(
                    d.action,
                    Action::Build {
                        build_key: K1.into(),
                        attempt: 3
                    }
                );
                assert_eq!(d.delete_jobs, vec![format!("demo-{}-2", &K1[7..19])]);
                assert_eq!(d.event.as_ref().unwrap().reason, "BuildRetried");
            },
        },
        Case {
            name: "a failed Job but the artifact is published (another build pushed it): adopt",
            ni: resolved_to(K1),
            resolution: None,
            jobs: vec![job(K1, 1, failed("boom"), Some(ago(1)))],
            lookup: Lookup::Found(artifact(K1)),
            check: |d| assert!(matches!(d.action, Action::Adopt(_))),
        },
        Case {
            name: "up to date: writes nothing",
            ni: with_artifact(K1),
            resolution: None,
            jobs: vec![job(K1, 1, JobState::Succeeded, Some(ago(1000)))],
            lookup: Lookup::Skipped,
            check: |d| {
                assert_eq!(d.action, Action::UpToDate);
                assert_eq!((&d.status, &d.annotations, &d.event), (&None, &None, &None));
                assert!(d.delete_jobs.is_empty());
                assert_eq!(d.requeue, None);
            },
        },
        Case {
            name: "refresh gave the same key: only the bookkeeping annotations are written",
            ni: with_artifact(K1),
            resolution: Some(resolution(K1)),
            jobs: vec![],
            lookup: Lookup::Skipped,
            check: |d| {
                assert_eq!(d.action, Action::UpToDate);
                assert_eq!(d.status, None);
                assert!(d.annotations.is_some());
            },
        },
        Case {
            name: "registry unreachable: nothing written (the error policy retries)",
            ni: resolved_to(K1),
            resolution: None,
            jobs: vec![],
            lookup: Lookup::Error("connection refused".into()),
            check: |d| {
                assert_eq!(
                    d.action,
                    Action::RegistryUnavailable("connection refused".into())
                );
                assert_eq!((&d.status, &d.event), (&None, &None));
            },
        },
    ]
}

#[test]
fn every_branch() {
    for c in cases() {
        let obs = Observed {
            ni: &c.ni,
            resolution: c.resolution.as_ref(),
            jobs: &c.jobs,
            lookup: &c.lookup,
            secret_error: None,
            now: now(),
        };
        let d = decide(&obs, &POLICY);
        println!("case: {}", c.name);
        (c.check)(&d);
    }
}

/// After a decision's writes land, deciding again on the same world writes nothing (no status, no annotations, no
/// Event): the controller settles.
#[test]
fn decisions_settle() {
    for c in cases() {
        let obs = Observed {
            ni: &c.ni,
            resolution: c.resolution.as_ref(),
            jobs: &c.jobs,
            lookup: &c.lookup,
            secret_error: None,
            now: now(),
        };
        let d = decide(&obs, &POLICY);
        if matches!(d.action, Action::RegistryUnavailable(_)) {
            continue;
        }
        let n = settle(c.ni.clone(), &d);
        if !matches!(d.action, Action::Invalid(_) | Action::Unresolved(_)) {
            assert_eq!(
                resolve_reason(&n, now()),
                None,
                "{}: still wants a resolution",
                c.name
            );
        }
        // The world after the writes: a created Job is running, deleted Jobs are gone.
        let mut jobs: Vec<JobView> = c
            .jobs
            .iter()
            .filter(|j| !d.delete_jobs.contains(&j.name))
            .cloned()
            .collect();
        if let Action::Build { build_key, attempt } = &d.action {
            jobs.push(JobView {
                name: crate::build::job::job_name(&n, build_key, *attempt),
                build_key: build_key.clone(),
                attempt: *attempt,
                state: JobState::Running,
                finished: None,
            });
        }
        let lookup = if needs_lookup(n.status.as_ref(), current_key(&n, None)) {
            c.lookup.clone()
        } else {
            Lookup::Skipped
        };
        // The reconciler resolves again only when asked to (and never for an invalid spec): then it gets the same
        // answer from the same registry.
        let again_resolution = if validate(&n.spec).is_ok() && resolve_reason(&n, now()).is_some() {
            c.resolution.as_ref()
        } else {
            None
        };
        let again = decide(
            &Observed {
                ni: &n,
                resolution: again_resolution,
                jobs: &jobs,
                lookup: &lookup,
                secret_error: None,
                now: now(),
            },
            &POLICY,
        );
        assert_eq!(
            (&again.status, &again.annotations, &again.event),
            (&None, &None, &None),
            "{}: {:?}",
            c.name,
            again.action
        );
        assert!(again.delete_jobs.is_empty(), "{}", c.name);
        assert!(
            !matches!(again.action, Action::Build { .. }),
            "{}: builds twice",
            c.name
        );
    }
}

#[test]
fn an_unusable_push_secret_degrades_without_a_job() {
    let n = resolved_to(K1);
    let jobs = [job(K1, 1, JobState::Running, None)];
    let why = "spec.output.pushSecretName: Secret kitfleet-system/push not found";
    let obs = Observed {
        ni: &n,
        resolution: None,
        jobs: &jobs,
        lookup: &Lookup::Skipped,
        secret_error: Some(why),
        now: now(),
    };
    let d = decide(&obs, &POLICY);
    assert_eq!(d.action, Action::PushSecret(why.into()));
    let c = cond(d.status.as_ref().unwrap(), COND_DEGRADED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
        ("True", "PushSecret", why)
    );
    assert_eq!(
        d.event.as_ref().map(|e| (e.warning, e.reason.as_str())),
        Some((true, "PushSecret"))
    );
    assert!(d.delete_jobs.is_empty(), "a running build is left alone");
    assert_eq!(d.requeue, Some(POLICY.retry_base));
    // Unchanged next time: nothing written.
    let settled = settle(n.clone(), &d);
    let again = decide(
        &Observed {
            ni: &settled,
            ..obs
        },
        &POLICY,
    );
    assert_eq!((again.status, again.event), (None, None));
}

#[test]
fn when_to_resolve() {
    let with = |n: &mut NodeImage, kv: &[(&str, &str)]| {
        let a = n.metadata.annotations.get_or_insert_default();
        for (k, v) in kv {
            a.insert(k.to_string(), v.to_string());
        }
    };
    let hour = kube::core::Duration::from(std::time::Duration::from_secs(3600));
    let cases: Vec<(&str, NodeImage, Option<ResolveReason>)> = vec![
        ("never resolved", valid(), Some(ResolveReason::SpecChanged)),
        ("resolved for this generation", resolved_to(K1), None),
        (
            "spec changed",
            {
                let mut n = resolved_to(K1);
                n.metadata.generation = Some(3);
                n
            },
            Some(ResolveReason::SpecChanged),
        ),
        (
            "refresh asked",
            {
                let mut n = resolved_to(K1);
                with(&mut n, &[(ANNOTATION_REFRESH, "1")]);
                n
            },
            Some(ResolveReason::RefreshRequested),
        ),
        (
            "refresh honoured",
            {
                let mut n = resolved_to(K1);
                with(
                    &mut n,
                    &[
                        (ANNOTATION_REFRESH, "1"),
                        (ANNOTATION_RESOLVED_REFRESH, "1"),
                    ],
                );
                n
            },
            None,
        ),
        (
            "refresh asked again",
            {
                let mut n = resolved_to(K1);
                with(
                    &mut n,
                    &[
                        (ANNOTATION_REFRESH, "2"),
                        (ANNOTATION_RESOLVED_REFRESH, "1"),
                    ],
                );
                n
            },
            Some(ResolveReason::RefreshRequested),
        ),
        (
            "interval, never recorded",
            {
                let mut n = resolved_to(K1);
                n.spec.refresh_interval = Some(hour);
                n
            },
            Some(ResolveReason::IntervalElapsed),
        ),
        (
            "interval elapsed",
            {
                let mut n = resolved_to(K1);
                n.spec.refresh_interval = Some(hour);
                with(&mut n, &[(ANNOTATION_RESOLVED_AT, &ago(3601).to_string())]);
                n
            },
            Some(ResolveReason::IntervalElapsed),
        ),
        (
            "interval not yet",
            {
                let mut n = resolved_to(K1);
                n.spec.refresh_interval = Some(hour);
                with(&mut n, &[(ANNOTATION_RESOLVED_AT, &ago(600).to_string())]);
                n
            },
            None,
        ),
    ];
    for (name, n, want) in cases {
        assert_eq!(resolve_reason(&n, now()), want, "{name}");
    }
}

#[test]
fn refresh_interval_requeues_at_the_next_resolution() {
    let mut n = with_artifact(K1);
    n.spec.refresh_interval = Some(kube::core::Duration::from(std::time::Duration::from_secs(
        3600,
    )));
    n.metadata.annotations = Some(BTreeMap::from([(
        ANNOTATION_RESOLVED_AT.to_string(),
        ago(600).to_string(),
    )]));
    let d = decide(
        &Observed {
            ni: &n,
            resolution: None,
            jobs: &[],
            lookup: &Lookup::Skipped,
            secret_error: None,
            now: now(),
        },
        &POLICY,
    );
    assert_eq!(d.requeue, Some(Duration::from_secs(3000)));
}

#[test]
fn long_messages_are_clamped_at_a_character_boundary() {
    assert_eq!(clamp("short", 10), "short");
    let c = clamp(&"é".repeat(100), 11);
    assert!(c.len() <= 11 && c.ends_with('…'), "{c}");
    let errors = FieldErrors(
        (0..2000)
            .map(|i| FieldError::new(format!("spec.onboot[{i}].image"), "bad"))
            .collect(),
    );
    let mut n = invalid();
    n.spec.image.onboot.clear();
    let d = decide(
        &Observed {
            ni: &n,
            resolution: None,
            jobs: &[],
            lookup: &Lookup::Skipped,
            secret_error: None,
            now: now(),
        },
        &POLICY,
    );
    assert!(
        cond(d.status.as_ref().unwrap(), COND_DEGRADED)
            .message
            .len()
            <= MAX_MESSAGE
    );
    assert!(errors.to_string().len() > MAX_MESSAGE);
}

#[test]
fn backoff_doubles_and_caps() {
    let got: Vec<u64> = [1, 2, 3, 5, 6, 40]
        .map(|a| POLICY.backoff(a).as_secs())
        .into();
    assert_eq!(got, vec![30, 60, 120, 480, 900, 900]);
}

#[test]
fn lookup_only_when_the_artifact_is_not_recorded() {
    assert!(!needs_lookup(None, None));
    assert!(needs_lookup(None, Some(K1)));
    let s = with_artifact(K1).status;
    assert!(!needs_lookup(s.as_ref(), Some(K1)));
    assert!(needs_lookup(s.as_ref(), Some(K2)));
}

#[test]
fn cleanup_deletes_running_jobs_only() {
    let jobs = [
        job(K1, 1, JobState::Running, None),
        job(K2, 1, JobState::Succeeded, Some(ago(1))),
        job(K2, 2, failed("x"), Some(ago(1))),
    ];
    assert_eq!(cleanup(&jobs), vec![format!("demo-{}-1", &K1[7..19])]);
}

#[test]
fn conditions_keep_their_transition_time_while_their_status_holds() {
    let mut conds = Vec::new();
    set_condition(
        &mut conds,
        COND_BUILT,
        false,
        "Building",
        "a",
        Some(1),
        ago(100),
    );
    set_condition(
        &mut conds,
        COND_BUILT,
        false,
        "BuildFailed",
        "b",
        Some(2),
        now(),
    );
    assert_eq!(conds[0].last_transition_time.0, ago(100));
    assert_eq!(
        (conds[0].reason.as_str(), conds[0].observed_generation),
        ("BuildFailed", Some(2))
    );
    set_condition(&mut conds, COND_BUILT, true, "Built", "c", Some(2), now());
    assert_eq!(conds[0].last_transition_time.0, now());
    assert_eq!(conds.len(), 1);
}

fn decide_with(n: &NodeImage, jobs: &[JobView], lookup: &Lookup) -> Decision {
    decide(
        &Observed {
            ni: n,
            resolution: None,
            jobs,
            lookup,
            secret_error: None,
            now: now(),
        },
        &POLICY,
    )
}

#[test]
fn a_build_pod_that_cannot_start_is_reported_by_its_reason() {
    let n = resolved_to(K1);
    let stuck = JobState::Stuck {
        reason: "ImagePullBackOff".into(),
        message: "Back-off pulling image \"reg/kitfleet-build:1\"".into(),
    };
    let d = decide_with(&n, &[job(K1, 1, stuck, None)], &Lookup::Absent);
    assert!(
        matches!(d.action, Action::Building { .. }),
        "{:?}",
        d.action
    );
    let s = d.status.clone().expect("a status change");
    let built = cond(&s, COND_BUILT);
    assert_eq!(
        (built.status.as_str(), built.reason.as_str()),
        ("False", "ImagePullBackOff")
    );
    assert!(
        built.message.contains(
            "demo-111111111111-1 (attempt 1) cannot start: ImagePullBackOff: Back-off pulling"
        ),
        "{}",
        built.message
    );
    assert_eq!(cond(&s, COND_DEGRADED).status, "True");
    let ev = d.event.clone().expect("a Warning Event");
    assert!(ev.warning && ev.reason == "ImagePullBackOff", "{ev:?}");
    // Settled: the same observation writes nothing more.
    let again = decide_with(
        &settle(n.clone(), &d),
        &[job(
            K1,
            1,
            JobState::Stuck {
                reason: "ImagePullBackOff".into(),
                message: "Back-off pulling image \"reg/kitfleet-build:1\"".into(),
            },
            None,
        )],
        &Lookup::Absent,
    );
    assert_eq!((again.status, again.event), (None, None));
    // A stuck Job of an older key is superseded like a running one; deletion cleans it up.
    let old = job(
        K2,
        1,
        JobState::Stuck {
            reason: "ErrImagePull".into(),
            message: "x".into(),
        },
        None,
    );
    let d = decide_with(&n, std::slice::from_ref(&old), &Lookup::Absent);
    assert_eq!(d.delete_jobs, vec![old.name.clone()]);
    assert_eq!(super::cleanup(std::slice::from_ref(&old)), vec![old.name]);
}

#[test]
fn each_build_attempt_has_its_own_event() {
    let n = resolved_to(K1);
    let f1 = job(K1, 1, failed("boom 1"), Some(ago(10)));
    let d1 = decide_with(&n, std::slice::from_ref(&f1), &Lookup::Absent);
    let n = settle(n, &d1);
    assert!(
        d1.event.as_ref().unwrap().note.contains("attempt 1 failed"),
        "{:?}",
        d1.event
    );
    // Retried after the backoff: attempt 2 starts with its own Event.
    let d2 = decide_with(
        &n,
        &[job(K1, 1, failed("boom 1"), Some(ago(40)))],
        &Lookup::Absent,
    );
    assert_eq!(
        d2.action,
        Action::Build {
            build_key: K1.into(),
            attempt: 2
        }
    );
    assert!(
        d2.event.as_ref().unwrap().note.contains("(attempt 2)"),
        "{:?}",
        d2.event
    );
    let n = settle(n, &d2);
    let f2 = job(K1, 2, failed("boom 2"), Some(ago(5)));
    let d3 = decide_with(&n, &[f2], &Lookup::Absent);
    let ev = d3.event.expect("the second failure is an Event of its own");
    assert!(
        ev.note.contains("attempt 2 failed") && ev.note.contains("boom 2"),
        "{ev:?}"
    );
}

#[test]
fn loopback_registries_are_flagged_with_their_fields() {
    let n = resolved_to(K1);
    assert_eq!(
        loopback_references(&n),
        vec![
            "spec.kernel.image: 127.0.0.1:5000/fixtures/kernel:6.1",
            "spec.init[0]: 127.0.0.1:5000/fixtures/init:v1",
            "spec.output.repository: 127.0.0.1:5000/kitfleet/demo",
        ]
    );
    let mut d = decide_with(&n, &[job(K1, 1, JobState::Running, None)], &Lookup::Absent);
    let ev = flag_loopback(&n, &mut d, now()).expect("a Warning Event");
    assert!(
        ev.warning
            && ev
                .note
                .contains("spec.kernel.image: 127.0.0.1:5000/fixtures/kernel:6.1"),
        "{ev:?}"
    );
    let s = d.status.clone().unwrap();
    assert_eq!(cond(&s, COND_LOOPBACK).status, "True");
    // Once recorded, nothing more is written.
    let n2 = settle(n.clone(), &d);
    let mut again = decide_with(&n2, &[job(K1, 1, JobState::Running, None)], &Lookup::Absent);
    assert_eq!(flag_loopback(&n2, &mut again, now()), None);
    assert_eq!(again.status, None);
    // Other hosts are not flagged; the condition goes away.
    let far = ni(&VALID.replace("127.0.0.1:5000", "registry.lan:5000"));
    assert!(loopback_references(&far).is_empty());
    for r in ["localhost:5000/a:1", "[::1]:5000/a:1", "127.1.2.3/a:1"] {
        assert!(is_loopback(r), "{r}");
    }
    for r in [
        "busybox:1",
        "library/busybox:1",
        "reg.local:5000/a:1",
        "10.0.0.1:5000/a:1",
    ] {
        assert!(!is_loopback(r), "{r}");
    }
}
