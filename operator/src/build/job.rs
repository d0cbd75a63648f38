//! Build Jobs: their names and labels, the Job the operator creates (pure), and how it reads a Job back.
//!
//! The Job carries its input itself: the NodeImage with every reference pinned to the digest recorded in status sits in
//! a pod-template annotation that a downward-API volume turns into the file `kitfleet-build` reads. The build therefore
//! uses exactly the digests (and computes exactly the build key) the operator resolved, even if a tag moves meanwhile.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource,
    EnvVar, ObjectFieldSelector, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::api::core::v1::{KeyToPath, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kitfleet_api::constants::{
    ANNOTATION_BUILD_KEY, LABEL_BUILD_KEY, LABEL_MANAGED_BY, LABEL_NODEIMAGE,
    OPERATOR_FIELD_MANAGER,
};
use kitfleet_api::{NodeImage, NodeImageSpec};
use kitfleet_builder::reference::ImageRef;
use kube::{Resource, ResourceExt};
use sha2::{Digest as _, Sha256};

use crate::build::decide::{JobState, JobView};
use crate::config::BuildSettings;

/// Job annotation: the attempt number of this build key (1, 2, …).
pub const ANNOTATION_ATTEMPT: &str = "kitfleet.dev/attempt";
/// Pod-template annotation holding the pinned NodeImage manifest the build reads.
pub const ANNOTATION_MANIFEST: &str = "kitfleet.dev/build-manifest";
/// Name of the build container.
pub const CONTAINER: &str = "build";
/// Where the manifest file appears in the build container.
pub const MANIFEST_PATH: &str = "/etc/kitfleet/build/nodeimage.yaml";
/// Where the push secret's Docker config appears.
pub const DOCKER_CONFIG_PATH: &str = "/var/run/kitfleet/push/.dockerconfigjson";
/// Output directory of the build (an emptyDir).
pub const OUT_DIR: &str = "/work/out";
/// Build cache (emptyDir, or the configured PVC).
pub const CACHE_DIR: &str = "/cache";
/// Largest manifest a Job carries (Kubernetes limits an object's annotations to 256 KiB in total).
pub const MAX_MANIFEST: usize = 200 * 1024;
/// User and group the build runs as.
pub const BUILD_UID: i64 = 65532;

/// Why a Job cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    #[error("{reference}: no digest recorded in status.resolved")]
    Unpinned { reference: String },
    #[error("{reference}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("the NodeImage has no uid (not read from the API server)")]
    NoUid,
    #[error(
        "the pinned manifest is {size} bytes; a Job carries at most {MAX_MANIFEST} (annotation size limit)"
    )]
    ManifestTooLarge { size: usize },
}

/// Everything a Job needs besides the NodeImage.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSettings {
    pub builder_image: String,
    pub namespace: String,
    pub cache_pvc: Option<String>,
    pub insecure_registries: Vec<String>,
    pub arch: String,
    pub build: BuildSettings,
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..4])
}

/// `name` shortened to `max` characters (a hash of the full name keeps shortened names apart), DNS-label safe.
fn stem(name: &str, max: usize) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c == '.' { '-' } else { c })
        .collect();
    if clean.len() <= max {
        return clean;
    }
    let head = clean[..max - 9].trim_end_matches('-');
    format!("{head}-{}", short_hash(name))
}

fn key_hex(build_key: &str) -> &str {
    build_key.strip_prefix("sha256:").unwrap_or(build_key)
}

/// The Job of attempt `attempt` at building `build_key` for `ni`: `<name>-<12 hex of the key>-<attempt>`.
pub fn job_name(ni: &NodeImage, build_key: &str, attempt: u32) -> String {
    let hex = key_hex(build_key);
    format!(
        "{}-{}-{attempt}",
        stem(&ni.name_any(), 40),
        &hex[..hex.len().min(12)]
    )
}

/// The `kitfleet.dev/nodeimage` label value of a NodeImage (label values hold at most 63 characters).
pub fn nodeimage_label(name: &str) -> String {
    if name.len() <= 63 {
        name.to_string()
    } else {
        stem(name, 63)
    }
}

/// The label selector of a NodeImage's Jobs.
pub fn selector(name: &str) -> String {
    format!("{LABEL_NODEIMAGE}={}", nodeimage_label(name))
}

/// The spec with every reference replaced by `registry/repository@digest` from `status.resolved`.
pub fn pinned_spec(ni: &NodeImage) -> Result<NodeImageSpec, JobError> {
    let resolved = ni
        .status
        .as_ref()
        .map(|s| s.resolved.as_slice())
        .unwrap_or_default();
    let pin = |r: &mut String| -> Result<(), JobError> {
        let digest = resolved
            .iter()
            .find(|x| &x.reference == r)
            .and_then(|x| x.digest.clone())
            .ok_or_else(|| JobError::Unpinned {
                reference: r.clone(),
            })?;
        let parsed = ImageRef::parse(r, "").map_err(|e| JobError::BadReference {
            reference: r.clone(),
            reason: e.to_string(),
        })?;
        *r = parsed.with_digest(&digest);
        Ok(())
    };
    let mut spec = ni.spec.clone();
    let c = &mut spec.image;
    if let Some(k) = c.kernel.as_mut() {
        pin(&mut k.image)?;
    }
    for r in &mut c.init {
        pin(r)?;
    }
    for img in c
        .onboot
        .iter_mut()
        .chain(c.onshutdown.iter_mut())
        .chain(c.services.iter_mut())
    {
        pin(&mut img.image)?;
    }
    for v in &mut c.volumes {
        if let Some(img) = v.image.as_mut() {
            pin(img)?;
        }
    }
    Ok(spec)
}

/// The manifest the build reads: the NodeImage's name and pinned spec.
pub fn pinned_manifest(ni: &NodeImage) -> Result<String, JobError> {
    Ok(NodeImage::new(&ni.name_any(), pinned_spec(ni)?).to_yaml())
}

/// The build container's command line.
pub fn build_command(ni: &NodeImage, s: &JobSettings) -> Vec<String> {
    let formats: Vec<&str> = ni.spec.formats.iter().map(|f| f.as_str()).collect();
    let mut argv: Vec<String> = [
        "kitfleet-build",
        "build",
        MANIFEST_PATH,
        "-o",
        OUT_DIR,
        "--format",
    ]
    .map(String::from)
    .into();
    argv.push(formats.join(","));
    argv.extend(["--push".into(), ni.spec.output.repository.clone()]);
    argv.extend([
        "--cache".into(),
        CACHE_DIR.into(),
        "--arch".into(),
        s.arch.clone(),
    ]);
    argv.extend([
        "--level".into(),
        crate::build::registry::JOB_GZIP_LEVEL.to_string(),
    ]);
    argv.extend(["--json".into(), "--no-progress".into()]);
    for r in &s.insecure_registries {
        argv.extend(["--insecure-registry".into(), r.clone()]);
    }
    if ni.spec.output.push_secret_name.is_some() {
        argv.extend(["--docker-config".into(), DOCKER_CONFIG_PATH.into()]);
    }
    argv
}

fn labels(ni: &NodeImage, build_key: &str) -> BTreeMap<String, String> {
    let hex = key_hex(build_key);
    BTreeMap::from([
        (LABEL_NODEIMAGE.to_string(), nodeimage_label(&ni.name_any())),
        (
            LABEL_BUILD_KEY.to_string(),
            hex[..hex.len().min(63)].to_string(),
        ),
        (
            LABEL_MANAGED_BY.to_string(),
            OPERATOR_FIELD_MANAGER.to_string(),
        ),
    ])
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

fn volumes(ni: &NodeImage, s: &JobSettings) -> (Vec<Volume>, Vec<VolumeMount>) {
    let manifest = Volume {
        name: "manifest".into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![DownwardAPIVolumeFile {
                path: "nodeimage.yaml".into(),
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.annotations['{ANNOTATION_MANIFEST}']"),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let work = Volume {
        name: "work".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    };
    let cache = match &s.cache_pvc {
        Some(claim) => Volume {
            name: "cache".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(false),
            }),
            ..Default::default()
        },
        None => Volume {
            name: "cache".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    };
    let mut vols = vec![manifest, work, cache];
    let mut mounts = vec![
        mount("manifest", "/etc/kitfleet/build", true),
        mount("work", "/work", false),
        mount("cache", CACHE_DIR, false),
    ];
    if let Some(secret) = &ni.spec.output.push_secret_name {
        vols.push(Volume {
            name: "push-secret".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                items: Some(vec![KeyToPath {
                    key: ".dockerconfigjson".into(),
                    path: ".dockerconfigjson".into(),
                    mode: None,
                }]),
                default_mode: Some(0o440),
                optional: Some(false),
            }),
            ..Default::default()
        });
        mounts.push(mount("push-secret", "/var/run/kitfleet/push", true));
    }
    (vols, mounts)
}

fn container(ni: &NodeImage, s: &JobSettings, mounts: Vec<VolumeMount>) -> Container {
    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    };
    Container {
        name: CONTAINER.into(),
        image: Some(s.builder_image.clone()),
        command: Some(build_command(ni, s)),
        env: Some(vec![
            env("HOME", "/work"),
            env("TMPDIR", "/work"),
            env("RUST_LOG", "info"),
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), s.build.cpu.clone()),
                ("memory".into(), s.build.memory.clone()),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), s.build.memory.clone())])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

/// The build Job of attempt `attempt` at `build_key` for `ni`.
pub fn build_job(
    ni: &NodeImage,
    build_key: &str,
    attempt: u32,
    s: &JobSettings,
) -> Result<Job, JobError> {
    let owner = ni.controller_owner_ref(&()).ok_or(JobError::NoUid)?;
    let manifest = pinned_manifest(ni)?;
    if manifest.len() > MAX_MANIFEST {
        return Err(JobError::ManifestTooLarge {
            size: manifest.len(),
        });
    }
    let labels = labels(ni, build_key);
    let (vols, mounts) = volumes(ni, s);
    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(BUILD_UID),
            run_as_group: Some(BUILD_UID),
            fs_group: Some(BUILD_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        containers: vec![container(ni, s, mounts)],
        volumes: Some(vols),
        ..Default::default()
    };
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name(ni, build_key, attempt)),
            namespace: Some(s.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([
                (ANNOTATION_BUILD_KEY.to_string(), build_key.to_string()),
                (ANNOTATION_ATTEMPT.to_string(), attempt.to_string()),
            ])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(
                i64::try_from(s.build.timeout.as_secs()).unwrap_or(i64::MAX),
            ),
            ttl_seconds_after_finished: Some(86_400),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(
                        ANNOTATION_MANIFEST.to_string(),
                        manifest,
                    )])),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// At most the last 10 lines and 1 KiB of a termination message.
pub fn tail(message: &str) -> String {
    let lines: Vec<&str> = message.trim_end().lines().collect();
    let mut out = lines[lines.len().saturating_sub(10)..].join("\n");
    if out.len() > 1024 {
        let mut cut = out.len() - 1024;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = format!("…{}", &out[cut..]);
    }
    out
}

/// The build container's termination message among a Job's Pods (the newest one that has one).
pub fn termination_message(pods: &[Pod]) -> Option<String> {
    pods.iter()
        .filter_map(|p| {
            let cs = p
                .status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .iter()
                .find(|c| c.name == CONTAINER)?;
            let t = cs.state.as_ref()?.terminated.as_ref()?;
            Some((
                t.finished_at.clone(),
                t.message.clone().or_else(|| t.reason.clone())?,
            ))
        })
        .max_by(|a, b| a.0.as_ref().map(|t| t.0).cmp(&b.0.as_ref().map(|t| t.0)))
        .map(|(_, m)| m)
}

/// Waiting reasons of the build container that will not resolve by themselves while the Job runs (the Job would
/// otherwise report "running" until its deadline).
pub const STUCK_REASONS: [&str; 6] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// The build container's waiting reason and message among a Job's Pods, when it is one of [`STUCK_REASONS`].
pub fn stuck(pods: &[Pod]) -> Option<(String, String)> {
    pods.iter().find_map(|p| {
        let cs = p
            .status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .iter()
            .find(|c| c.name == CONTAINER)?;
        let w = cs.state.as_ref()?.waiting.as_ref()?;
        let reason = w.reason.as_deref().filter(|r| STUCK_REASONS.contains(r))?;
        Some((
            reason.to_string(),
            tail(w.message.as_deref().unwrap_or("no message")),
        ))
    })
}

/// Reads a Job back (`None` for a Job without a build key, which the operator did not make). `message` is the
/// build container's termination message, when the caller fetched it.
pub fn job_view(job: &Job, message: Option<&str>) -> Option<JobView> {
    let annotations = job.metadata.annotations.as_ref()?;
    let build_key = annotations.get(ANNOTATION_BUILD_KEY)?.clone();
    let attempt = annotations
        .get(ANNOTATION_ATTEMPT)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let status = job.status.as_ref();
    let conds = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let is = |t: &str| conds.iter().find(|c| c.type_ == t && c.status == "True");
    let (state, finished) = if let Some(c) = is("Complete") {
        let at = status
            .and_then(|s| s.completion_time.clone())
            .or_else(|| c.last_transition_time.clone());
        (JobState::Succeeded, at.map(|t| t.0))
    } else if let Some(c) = is("Failed") {
        let reason = c.reason.clone().unwrap_or_else(|| "Failed".into());
        let text = message
            .or(c.message.as_deref())
            .unwrap_or("no termination message");
        (
            JobState::Failed {
                reason,
                message: tail(text),
            },
            c.last_transition_time.clone().map(|t| t.0),
        )
    } else {
        (JobState::Running, None)
    };
    Some(JobView {
        name: job.name_any(),
        build_key,
        attempt,
        state,
        finished,
    })
}

/// Whether a Job needs its Pods read for a termination message (it failed).
pub fn is_failed(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Failed" && c.status == "True"))
}

#[cfg(test)]
#[path = "job_tests.rs"]
mod tests;
