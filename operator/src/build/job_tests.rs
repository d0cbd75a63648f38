//! Tests of the build Job and of reading Jobs back.

use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kitfleet_api::NodeImageStatus;
use kitfleet_api::nodeimage::ResolvedImage;

use super::*;

const KEY: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn settings() -> JobSettings {
    JobSettings {
        builder_image: "registry.example/kitfleet/build:0.1".into(),
        namespace: "kitfleet-system".into(),
        cache_pvc: None,
        insecure_registries: vec!["127.0.0.1:5000".into()],
        arch: "amd64".into(),
        build: BuildSettings::default(),
    }
}

fn ni(push_secret: bool) -> NodeImage {
    let secret = if push_secret {
        "    pushSecretName: push\n"
    } else {
        ""
    };
    let mut ni = NodeImage::from_yaml(&format!(
        "apiVersion: kitfleet.dev/v1alpha1\nkind: NodeImage\nmetadata:\n  name: demo\nspec:\n  kernel:\n    image: linuxkit/kernel:6.6.71\n  init:\n  - 127.0.0.1:5000/fixtures/init:v1\n  onboot:\n  - name: marker\n    image: 127.0.0.1:5000/fixtures/init:v1\n  formats: [kernel+initrd, raw-efi]\n  output:\n    repository: 127.0.0.1:5000/kitfleet/demo\n{secret}"
    ))
    .unwrap();
    ni.metadata.uid = Some("uid-1".into());
    ni.status = Some(NodeImageStatus {
        resolved: vec![
            ResolvedImage {
                reference: "linuxkit/kernel:6.6.71".into(),
                digest: Some(D1.into()),
                error: None,
            },
            ResolvedImage {
                reference: "127.0.0.1:5000/fixtures/init:v1".into(),
                digest: Some(D2.into()),
                error: None,
            },
        ],
        build_key: Some(KEY.into()),
        ..Default::default()
    });
    ni
}

#[test]
fn the_build_job() {
    let job = build_job(&ni(false), KEY, 2, &settings()).unwrap();
    let m = &job.metadata;
    assert_eq!(m.name.as_deref(), Some("demo-0123456789ab-2"));
    assert_eq!(m.namespace.as_deref(), Some("kitfleet-system"));
    let labels = m.labels.as_ref().unwrap();
    assert_eq!(labels[LABEL_NODEIMAGE], "demo");
    assert_eq!(labels[LABEL_BUILD_KEY], &KEY[7..7 + 63]);
    assert_eq!(labels[LABEL_MANAGED_BY], "kitfleet-operator");
    let ann = m.annotations.as_ref().unwrap();
    assert_eq!(
        (
            ann[ANNOTATION_BUILD_KEY].as_str(),
            ann[ANNOTATION_ATTEMPT].as_str()
        ),
        (KEY, "2")
    );
    let owner = &m.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("NodeImage", "demo", "uid-1")
    );
    assert_eq!(owner.controller, Some(true));

    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.active_deadline_seconds, Some(3600));
    let tpl = &spec.template;
    assert_eq!(tpl.metadata.as_ref().unwrap().labels.as_ref(), Some(labels));
    let pod = tpl.spec.as_ref().unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.automount_service_account_token, Some(false));
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(
        (psc.run_as_non_root, psc.run_as_user, psc.fs_group),
        (Some(true), Some(65532), Some(65532))
    );
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("registry.example/kitfleet/build:0.1")
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(
        (
            sc.privileged,
            sc.allow_privilege_escalation,
            sc.read_only_root_filesystem
        ),
        (Some(false), Some(false), Some(true))
    );
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    let res = c.resources.as_ref().unwrap();
    assert_eq!(
        res.requests.as_ref().unwrap()["cpu"],
        Quantity("500m".into())
    );
    assert_eq!(
        res.requests.as_ref().unwrap()["memory"],
        Quantity("1Gi".into())
    );
    assert_eq!(
        res.limits.as_ref().unwrap()["memory"],
        Quantity("1Gi".into())
    );
    assert_eq!(
        c.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );
    assert_eq!(
        c.command.as_ref().unwrap().join(" "),
        "kitfleet-build build /etc/kitfleet/build/nodeimage.yaml -o /work/out --format kernel+initrd,raw-efi \
         --push 127.0.0.1:5000/kitfleet/demo --cache /cache --arch amd64 --level 6 --json --no-progress \
         --insecure-registry 127.0.0.1:5000"
    );
    let vols: Vec<&str> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(vols, vec!["manifest", "work", "cache"]);
    assert!(
        pod.volumes.as_ref().unwrap()[2].empty_dir.is_some(),
        "no PVC configured: the cache is an emptyDir"
    );
    let mounts: Vec<(&str, &str, Option<bool>)> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        vec![
            ("manifest", "/etc/kitfleet/build", Some(true)),
            ("work", "/work", Some(false)),
            ("cache", "/cache", Some(false))
        ]
    );
    let field = &pod.volumes.as_ref().unwrap()[0]
        .downward_api
        .as_ref()
        .unwrap()
        .items
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        field.field_ref.as_ref().unwrap().field_path,
        "metadata.annotations['kitfleet.dev/build-manifest']"
    );
}

#[test]
fn the_manifest_pins_every_reference_to_the_recorded_digest() {
    let job = build_job(&ni(false), KEY, 1, &settings()).unwrap();
    let text = &job
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap()[ANNOTATION_MANIFEST];
    let back = NodeImage::from_yaml(text).unwrap();
    assert_eq!(back.metadata.name.as_deref(), Some("demo"));
    assert_eq!(
        back.spec.image.kernel.unwrap().image,
        format!("docker.io/linuxkit/kernel@{D1}")
    );
    assert_eq!(
        back.spec.image.init,
        vec![format!("127.0.0.1:5000/fixtures/init@{D2}")]
    );
    assert_eq!(
        back.spec.image.onboot[0].image,
        format!("127.0.0.1:5000/fixtures/init@{D2}")
    );
    assert_eq!(back.spec.formats, ni(false).spec.formats);
}

#[test]
fn push_secret_and_cache_pvc() {
    let mut s = settings();
    s.cache_pvc = Some("build-cache".into());
    s.insecure_registries.clear();
    let job = build_job(&ni(true), KEY, 1, &s).unwrap();
    let pod = job.spec.unwrap().template.spec.unwrap();
    let vols = pod.volumes.unwrap();
    assert_eq!(
        vols[2].persistent_volume_claim.as_ref().unwrap().claim_name,
        "build-cache"
    );
    let secret = vols[3].secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("push"));
    assert_eq!(secret.items.as_ref().unwrap()[0].key, ".dockerconfigjson");
    let c = &pod.containers[0];
    let cmd = c.command.as_ref().unwrap().join(" ");
    assert!(
        cmd.ends_with("--no-progress --docker-config /var/run/kitfleet/push/.dockerconfigjson"),
        "{cmd}"
    );
    assert!(
        c.volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.name == "push-secret" && m.read_only == Some(true))
    );
}

#[test]
fn jobs_need_recorded_digests_and_a_uid() {
    let mut n = ni(false);
    n.status.as_mut().unwrap().resolved.pop();
    assert_eq!(
        build_job(&n, KEY, 1, &settings()).unwrap_err(),
        JobError::Unpinned {
            reference: "127.0.0.1:5000/fixtures/init:v1".into()
        }
    );
    let mut n = ni(false);
    n.metadata.uid = None;
    assert_eq!(
        build_job(&n, KEY, 1, &settings()).unwrap_err(),
        JobError::NoUid
    );
}

#[test]
fn long_names_stay_within_label_and_name_limits() {
    let mut n = ni(false);
    let long = format!("{}.example", "a".repeat(120));
    n.metadata.name = Some(long.clone());
    let name = job_name(&n, KEY, 12);
    assert!(name.len() <= 63, "{name}");
    assert!(!name.contains('.'));
    let label = nodeimage_label(&long);
    assert!(
        label.len() <= 63 && label.chars().last().unwrap().is_ascii_alphanumeric(),
        "{label}"
    );
    let other = format!("{}.example2", "a".repeat(120));
    assert_ne!(nodeimage_label(&other), label, "shortened names stay apart");
}

fn job_with(conds: &[(&str, &str, &str)], completion: Option<&str>) -> Job {
    let mut j = build_job(&ni(false), KEY, 3, &settings()).unwrap();
    j.status = Some(JobStatus {
        conditions: Some(
            conds
                .iter()
                .map(|(t, reason, message)| JobCondition {
                    type_: t.to_string(),
                    status: "True".into(),
                    reason: Some(reason.to_string()),
                    message: Some(message.to_string()),
                    last_transition_time: Some(Time("2026-11-29T00:30:00Z".parse().unwrap())),
                    ..Default::default()
                })
                .collect(),
        ),
        completion_time: completion.map(|c| Time(c.parse().unwrap())),
        ..Default::default()
    });
    j
}

#[test]
fn reading_jobs_back() {
    let running = job_view(&job_with(&[], None), None).unwrap();
    assert_eq!(
        (running.attempt, running.build_key.as_str(), &running.state),
        (3, KEY, &JobState::Running)
    );
    let done = job_view(
        &job_with(
            &[("SuccessCriteriaMet", "x", ""), ("Complete", "x", "")],
            Some("2026-11-29T00:31:00Z"),
        ),
        None,
    )
    .unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.finished.unwrap().to_string(), "2026-11-29T00:31:00Z");
    let failed = job_with(
        &[(
            "Failed",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        )],
        None,
    );
    assert!(is_failed(&failed));
    let v = job_view(&failed, Some("line\nkitfleet-build: error: boom\n")).unwrap();
    assert_eq!(
        v.state,
        JobState::Failed {
            reason: "BackoffLimitExceeded".into(),
            message: "line\nkitfleet-build: error: boom".into()
        }
    );
    let v = job_view(&failed, None).unwrap();
    assert!(
        matches!(v.state, JobState::Failed { message, .. } if message == "Job has reached the specified backoff limit")
    );
    let mut foreign = job_with(&[], None);
    foreign.metadata.annotations = None;
    assert_eq!(job_view(&foreign, None), None);
}

#[test]
fn message_tail_and_termination_message() {
    let long: String = (0..50).map(|i| format!("line {i}\n")).collect();
    let t = tail(&long);
    assert_eq!(t.lines().count(), 10);
    assert!(t.starts_with("line 40") && t.ends_with("line 49"));
    let wide = "é".repeat(2000);
    let t = tail(&wide);
    assert!(t.len() <= 1024 + "…".len() && t.starts_with('…'));

    let pod = |finished: &str, message: &str| Pod {
        status: Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: CONTAINER.into(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 3,
                        message: Some(message.into()),
                        finished_at: Some(Time(finished.parse().unwrap())),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pods = [
        pod("2026-11-29T00:10:00Z", "old"),
        pod("2026-11-29T00:20:00Z", "new"),
    ];
    assert_eq!(termination_message(&pods).as_deref(), Some("new"));
    assert_eq!(termination_message(&[]), None);
}

#[test]
fn a_build_pod_waiting_for_good_is_stuck() {
    let pod = |reason: &str| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"containerStatuses": [{"name": "build", "image": "x", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"waiting": {"reason": reason, "message": "Back-off pulling image \"x\""}}}]}
        }))
        .unwrap()
    };
    assert_eq!(
        stuck(&[pod("ImagePullBackOff")]),
        Some((
            "ImagePullBackOff".into(),
            "Back-off pulling image \"x\"".into()
        ))
    );
    assert_eq!(
        stuck(&[pod("CreateContainerConfigError")]).unwrap().0,
        "CreateContainerConfigError"
    );
    assert_eq!(
        stuck(&[pod("ContainerCreating")]),
        None,
        "a transient wait is not stuck"
    );
    assert_eq!(stuck(&[]), None);
}
