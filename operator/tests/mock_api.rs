//! Mock-apiserver scenarios (the kube-rs controller-rs `fixtures.rs` pattern): `tower_test::mock::pair` behind
//! `kube::Client`; each scenario asserts every request the reconciler sends, in order, answers it with a canned
//! object, and fails on any request it did not expect. The registry is a recording fake (the real one is exercised
//! by `tests/contract.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kitfleet_api::nodeimage::{ArtifactStatus, FormatArtifact, ResolvedImage};
use kitfleet_api::{NodeImage, NodeImageSpec, NodeImageStatus};
use kitfleet_operator::build::controller::{self, Context};
use kitfleet_operator::build::decide::{self, ANNOTATION_RESOLVED_AT, ANNOTATION_RESOLVED_REFRESH};
use kitfleet_operator::build::job::{self, JobSettings};
use kitfleet_operator::build::registry::{
    ArtifactRegistry, PullSecret, RegistryError, Resolution, artifact_tag,
};
use kitfleet_operator::config::BuildSettings;
use kitfleet_operator::metrics::Metrics;
use kube::client::Body;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const KEY: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D: &str = "sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
const NI_PATH: &str = "/apis/kitfleet.dev/v1alpha1/nodeimages/demo";
const JOBS_PATH: &str = "/apis/batch/v1/namespaces/kitfleet-system/jobs";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const SECRET_PATH: &str = "/api/v1/namespaces/kitfleet-system/secrets/push";
const DOCKER_CONFIG: &[u8] = br#"{"auths":{"127.0.0.1:5000":{"username":"u","password":"p"}}}"#;
const MANIFEST: &str = "apiVersion: kitfleet.dev/v1alpha1
kind: NodeImage
metadata:
  name: demo
spec:
  kernel:
    image: 127.0.0.1:5000/fixtures/kernel:6.1
  init:
  - 127.0.0.1:5000/fixtures/init:v1
  formats: [kernel+initrd]
  output:
    repository: 127.0.0.1:5000/kitfleet/demo
    pushSecretName: push
";

fn now() -> Timestamp {
    "2026-11-29T01:00:00Z".parse().unwrap()
}

/// The registry fake: fixed answers, every call recorded.
#[derive(Clone, Default)]
struct FakeRegistry {
    artifact: Option<ArtifactStatus>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl ArtifactRegistry for FakeRegistry {
    async fn resolve(
        &self,
        spec: &NodeImageSpec,
        secret: Option<&PullSecret>,
    ) -> Result<Resolution, RegistryError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("resolve secret={}", secret.is_some()));
        let resolved = spec
            .image
            .references()
            .into_iter()
            .map(|(_, r)| ResolvedImage {
                reference: r.to_string(),
                digest: Some(D.into()),
                error: None,
            })
            .collect();
        Ok(Resolution {
            resolved,
            build_key: Some(KEY.into()),
        })
    }

    async fn lookup(
        &self,
        repository: &str,
        build_key: &str,
        secret: Option<&PullSecret>,
    ) -> Result<Option<ArtifactStatus>, RegistryError> {
        assert_eq!(
            secret,
            Some(&PullSecret(DOCKER_CONFIG.to_vec())),
            "the push secret's credentials"
        );
        self.calls
            .lock()
            .unwrap()
            .push(format!("lookup {repository} {build_key}"));
        Ok(self.artifact.clone())
    }
}

fn artifact() -> ArtifactStatus {
    let digest = "sha256:abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789";
    ArtifactStatus {
        reference: format!(
            "127.0.0.1:5000/kitfleet/demo:{}@{digest}",
            artifact_tag(KEY)
        ),
        digest: digest.into(),
        short_digest: digest[7..19].into(),
        formats: vec![FormatArtifact {
            format: "kernel+initrd".into(),
            digest: D.into(),
            size: 4096,
        }],
    }
}

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

fn nodeimage(yaml: &str, finalizer: bool) -> NodeImage {
    let mut ni = NodeImage::from_yaml(yaml).unwrap();
    ni.metadata.uid = Some("uid-1".into());
    ni.metadata.generation = Some(1);
    ni.metadata.resource_version = Some("100".into());
    if finalizer {
        ni.metadata.finalizers = Some(vec![kitfleet_api::constants::NODEIMAGE_FINALIZER.into()]);
    }
    ni
}

/// A NodeImage resolved to KEY for its generation, as the operator leaves it.
fn resolved(ni: &mut NodeImage) {
    ni.status = Some(NodeImageStatus {
        observed_generation: Some(1),
        build_key: Some(KEY.into()),
        resolved: [
            "127.0.0.1:5000/fixtures/kernel:6.1",
            "127.0.0.1:5000/fixtures/init:v1",
        ]
        .map(|r| ResolvedImage {
            reference: r.into(),
            digest: Some(D.into()),
            error: None,
        })
        .into(),
        ..Default::default()
    });
    ni.metadata.annotations = Some(
        [
            (ANNOTATION_RESOLVED_AT, "2026-11-29T00:00:00Z"),
            (ANNOTATION_RESOLVED_REFRESH, ""),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into(),
    );
}

struct ApiServer(Handle);

impl ApiServer {
    /// Expects `method` on `path` and answers `reply`; returns the request's query and JSON body.
    async fn expect(&mut self, method: Method, path: &str, reply: Value) -> (String, Value) {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
            .unwrap_or_else(|| panic!("the client hung up before {method} {path}"));
        let uri = req.uri().clone();
        assert_eq!(
            (req.method(), uri.path()),
            (&method, path),
            "unexpected request {} {uri}",
            req.method()
        );
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        // `Value::Null`: answer with the request's own body (what an apply or a create returns, near enough).
        let reply = if reply.is_null() { body.clone() } else { reply };
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        (uri.query().unwrap_or_default().to_string(), body)
    }

    /// Fails on any further request; returns once every client is gone.
    async fn done(mut self) {
        if let Some((req, _)) = self.0.next_request().await {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}

/// The push secret `push` in kitfleet-system.
fn push_secret() -> Value {
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("push".into()),
            namespace: Some("kitfleet-system".into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some(
            [(
                ".dockerconfigjson".to_string(),
                k8s_openapi::ByteString(DOCKER_CONFIG.to_vec()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    serde_json::to_value(secret).unwrap()
}

/// What a status patch returns (its content does not matter to the reconciler, its shape does).
fn status_reply() -> Value {
    serde_json::to_value(nodeimage(MANIFEST, true)).unwrap()
}

fn job_list(items: Vec<Job>) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "JobList", "metadata": {"resourceVersion": "1"}, "items": items})
}

fn assert_ssa(query: &str) {
    assert!(
        query.contains("fieldManager=kitfleet-operator") && query.contains("force=true"),
        "not SSA: {query}"
    );
}

/// Runs one reconcile of `ni` against the scenario; returns its result and the registry's calls.
async fn run<F>(
    ni: NodeImage,
    registry: FakeRegistry,
    scenario: impl FnOnce(ApiServer) -> F,
) -> (Result<(), String>, Vec<String>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let calls = registry.calls.clone();
    let mut ctx = Context::new(
        client,
        registry,
        settings(),
        Arc::new(Metrics::default()),
        "test-0",
    );
    ctx.now = now;
    let server = tokio::spawn(scenario(ApiServer(handle)));
    let result = controller::reconcile(Arc::new(ni), Arc::new(ctx))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("scenario did not finish")
        .expect("scenario failed");
    let calls = calls.lock().unwrap().clone();
    (result, calls)
}

#[tokio::test]
async fn new_nodeimage_gets_the_finalizer_then_one_build_job() {
    // First reconcile: only the finalizer.
    let fresh = nodeimage(MANIFEST, false);
    let with_finalizer = nodeimage(MANIFEST, true);
    let reply = serde_json::to_value(&with_finalizer).unwrap();
    let (r, calls) = run(fresh, FakeRegistry::default(), |mut api| async move {
        let (_, patch) = api.expect(Method::PATCH, NI_PATH, reply).await;
        assert_eq!(patch[1], json!({"op": "add", "path": "/metadata/finalizers", "value": ["kitfleet.dev/build-cleanup"]}));
        api.done().await;
    })
    .await;
    r.unwrap();
    assert!(
        calls.is_empty(),
        "no registry access before the finalizer: {calls:?}"
    );

    // Second reconcile: resolve, look up, list Jobs, record the resolution, create the Job, write status, Event.
    let ni = with_finalizer.clone();
    let expected_job = {
        let mut n = ni.clone();
        resolved(&mut n);
        job::build_job(&n, KEY, 1, &settings()).unwrap()
    };
    let job_name = expected_job.name_any();
    let (r, calls) = run(
        ni.clone(),
        FakeRegistry::default(),
        move |mut api| async move {
            api.expect(Method::GET, SECRET_PATH, push_secret()).await;
            let (q, _) = api.expect(Method::GET, JOBS_PATH, job_list(vec![])).await;
            assert!(
                q.contains("labelSelector=kitfleet.dev%2Fnodeimage%3Ddemo"),
                "{q}"
            );
            let (q, ann) = api
                .expect(Method::PATCH, NI_PATH, serde_json::to_value(&ni).unwrap())
                .await;
            assert_ssa(&q);
            assert_eq!(
                ann["metadata"]["annotations"][ANNOTATION_RESOLVED_AT],
                "2026-11-29T01:00:00Z"
            );
            let (q, job) = api
                .expect(
                    Method::PATCH,
                    &format!("{JOBS_PATH}/{job_name}"),
                    Value::Null,
                )
                .await;
            assert_ssa(&q);
            assert_eq!(
                job,
                serde_json::to_value(&expected_job).unwrap(),
                "the Job differs from build_job()"
            );
            assert_eq!(job["apiVersion"], "batch/v1");
            let c = &job["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
            assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
            assert!(
                c["command"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a == "--push")
            );
            assert!(
                c["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["name"] == "push-secret")
            );
            assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "uid-1");
            assert_eq!(job["metadata"]["labels"]["kitfleet.dev/nodeimage"], "demo");
            let (q, st) = api
                .expect(Method::PATCH, &format!("{NI_PATH}/status"), status_reply())
                .await;
            assert_ssa(&q);
            assert_eq!(st["status"]["buildKey"], KEY);
            assert_eq!(st["status"]["resolved"][0]["digest"], D);
            let progressing = st["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Progressing")
                .unwrap();
            assert_eq!(progressing["status"], "True");
            let (_, ev) = api.expect(Method::POST, EVENTS_PATH, Value::Null).await;
            assert_eq!(
                (ev["reason"].as_str(), ev["type"].as_str()),
                (Some("BuildStarted"), Some("Normal"))
            );
            assert_eq!(ev["regarding"]["name"], "demo");
            api.done().await;
        },
    )
    .await;
    r.unwrap();
    assert_eq!(
        calls,
        vec![
            "resolve secret=true".to_string(),
            format!("lookup 127.0.0.1:5000/kitfleet/demo {KEY}")
        ]
    );
}

fn finished_job(ni: &NodeImage, condition: &str, reason: &str) -> Job {
    let mut j = job::build_job(ni, KEY, 1, &settings()).unwrap();
    j.status = Some(JobStatus {
        start_time: Some(Time("2026-11-29T00:50:00Z".parse().unwrap())),
        completion_time: (condition == "Complete")
            .then(|| Time("2026-11-29T00:55:00Z".parse().unwrap())),
        conditions: Some(vec![JobCondition {
            type_: condition.into(),
            status: "True".into(),
            reason: Some(reason.into()),
            last_transition_time: Some(Time("2026-11-29T00:55:00Z".parse().unwrap())),
            ..Default::default()
        }]),
        ..Default::default()
    });
    j
}

#[tokio::test]
async fn job_succeeded_writes_the_artifact_into_status() {
    let mut ni = nodeimage(MANIFEST, true);
    resolved(&mut ni);
    let done = finished_job(&ni, "Complete", "CompletionsReached");
    let registry = FakeRegistry {
        artifact: Some(artifact()),
        ..Default::default()
    };
    let (r, calls) = run(ni, registry, move |mut api| async move {
        api.expect(Method::GET, SECRET_PATH, push_secret()).await;
        api.expect(Method::GET, JOBS_PATH, job_list(vec![done]))
            .await;
        let (q, st) = api
            .expect(Method::PATCH, &format!("{NI_PATH}/status"), status_reply())
            .await;
        assert_ssa(&q);
        assert_eq!(
            st["status"]["artifact"],
            serde_json::to_value(artifact()).unwrap()
        );
        let built = st["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Built")
            .unwrap();
        assert_eq!(
            (built["status"].as_str(), built["reason"].as_str()),
            (Some("True"), Some("Built"))
        );
        let (_, ev) = api.expect(Method::POST, EVENTS_PATH, Value::Null).await;
        assert_eq!(ev["reason"], "Built");
        api.done().await;
    })
    .await;
    r.unwrap();
    assert_eq!(
        calls,
        vec![format!("lookup 127.0.0.1:5000/kitfleet/demo {KEY}")],
        "no resolution: the status digests stand"
    );
}

#[tokio::test]
async fn job_failed_reports_the_termination_message() {
    let mut ni = nodeimage(MANIFEST, true);
    resolved(&mut ni);
    let mut failed = finished_job(&ni, "Failed", "BackoffLimitExceeded");
    // Failed 10 s ago: inside the 30 s backoff of the first attempt, so it is reported, not yet retried.
    let conds = failed.status.as_mut().unwrap().conditions.as_mut().unwrap();
    conds[0].last_transition_time = Some(Time("2026-11-29T00:59:50Z".parse().unwrap()));
    let pod = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [{
        "metadata": {"name": "p"},
        "status": {"containerStatuses": [{"name": "build", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 3, "finishedAt": "2026-11-29T00:55:00Z",
                "message": "pulling 127.0.0.1:5000/fixtures/init\nkitfleet-build: error: registry error: connection refused"}}}]}
    }]});
    let (r, _) = run(ni, FakeRegistry::default(), move |mut api| async move {
        api.expect(Method::GET, SECRET_PATH, push_secret()).await;
        api.expect(Method::GET, JOBS_PATH, job_list(vec![failed]))
            .await;
        let (q, _) = api
            .expect(Method::GET, "/api/v1/namespaces/kitfleet-system/pods", pod)
            .await;
        assert!(
            q.contains("labelSelector=job-name%3Ddemo-111111111111-1"),
            "{q}"
        );
        let (_, st) = api
            .expect(Method::PATCH, &format!("{NI_PATH}/status"), status_reply())
            .await;
        let built = st["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Built")
            .unwrap();
        assert_eq!(
            (built["status"].as_str(), built["reason"].as_str()),
            (Some("False"), Some("BuildFailed"))
        );
        let msg = built["message"].as_str().unwrap();
        assert!(
            msg.contains("(BackoffLimitExceeded)")
                && msg.ends_with("kitfleet-build: error: registry error: connection refused"),
            "{msg}"
        );
        let (_, ev) = api.expect(Method::POST, EVENTS_PATH, Value::Null).await;
        assert_eq!(
            (ev["reason"].as_str(), ev["type"].as_str()),
            (Some("BuildFailed"), Some("Warning"))
        );
        api.done().await;
    })
    .await;
    r.unwrap();
}

#[tokio::test]
async fn invalid_spec_sets_degraded_and_an_event_without_a_job() {
    let invalid = MANIFEST.replace(
        "  kernel:\n    image: 127.0.0.1:5000/fixtures/kernel:6.1\n",
        "",
    );
    let ni = nodeimage(&invalid, true);
    let (r, calls) = run(ni, FakeRegistry::default(), |mut api| async move {
        api.expect(Method::GET, JOBS_PATH, job_list(vec![])).await;
        let (_, st) = api
            .expect(Method::PATCH, &format!("{NI_PATH}/status"), status_reply())
            .await;
        let degraded = st["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Degraded")
            .unwrap();
        assert_eq!(
            (degraded["status"].as_str(), degraded["reason"].as_str()),
            (Some("True"), Some("InvalidSpec"))
        );
        assert!(
            degraded["message"]
                .as_str()
                .unwrap()
                .contains("spec.kernel: a kernel is required")
        );
        let (_, ev) = api.expect(Method::POST, EVENTS_PATH, Value::Null).await;
        assert_eq!(
            (ev["reason"].as_str(), ev["type"].as_str()),
            (Some("InvalidSpec"), Some("Warning"))
        );
        assert!(ev["note"].as_str().unwrap().contains("spec.kernel"));
        api.done().await;
    })
    .await;
    r.unwrap();
    assert!(
        calls.is_empty(),
        "an invalid spec is neither resolved nor looked up: {calls:?}"
    );
}

#[tokio::test]
async fn unchanged_nodeimage_writes_nothing() {
    let mut ni = nodeimage(MANIFEST, true);
    resolved(&mut ni);
    let done = finished_job(&ni, "Complete", "CompletionsReached");
    // The status as the operator left it after the build.
    let jobs = [job::job_view(&done, None).unwrap()];
    let lookup = decide::Lookup::Found(artifact());
    let policy = decide::Policy {
        retry_base: Duration::from_secs(30),
        retry_max: Duration::from_secs(900),
    };
    let d = decide::decide(
        &decide::Observed {
            ni: &ni,
            resolution: None,
            jobs: &jobs,
            lookup: &lookup,
            secret_error: None,
            now: now(),
        },
        &policy,
    );
    ni.status = d.status;
    let (r, calls) = run(ni, FakeRegistry::default(), |mut api| async move {
        api.expect(Method::GET, JOBS_PATH, job_list(vec![done]))
            .await;
        api.done().await;
    })
    .await;
    r.unwrap();
    assert!(
        calls.is_empty(),
        "no registry access when the artifact is recorded: {calls:?}"
    );
}

#[tokio::test]
async fn deletion_removes_in_flight_jobs_then_the_finalizer() {
    let mut ni = nodeimage(MANIFEST, true);
    resolved(&mut ni);
    ni.metadata.deletion_timestamp = Some(Time(now()));
    let mut running = job::build_job(&ni, KEY, 2, &settings()).unwrap();
    running.status = Some(JobStatus {
        active: Some(1),
        ..Default::default()
    });
    let finished = finished_job(&ni, "Complete", "CompletionsReached");
    let running_name = running.name_any();
    let (r, calls) = run(ni, FakeRegistry::default(), move |mut api| async move {
        api.expect(Method::GET, JOBS_PATH, job_list(vec![running.clone(), finished])).await;
        let (q, body) = api.expect(Method::DELETE, &format!("{JOBS_PATH}/{running_name}"), serde_json::to_value(&running).unwrap()).await;
        assert_eq!(body["propagationPolicy"], "Background", "{q} {body}");
        let (_, patch) = api.expect(Method::PATCH, NI_PATH, json!({"apiVersion": "kitfleet.dev/v1alpha1", "kind": "NodeImage", "metadata": {"name": "demo"}, "spec": {"formats": ["tar"], "output": {"repository": "r/x"}}})).await;
        assert_eq!(patch[1], json!({"op": "remove", "path": "/metadata/finalizers/0"}));
        api.done().await;
    })
    .await;
    r.unwrap();
    assert!(calls.is_empty(), "{calls:?}");
}

#[tokio::test]
async fn spec_change_during_a_build_supersedes_the_old_job() {
    const OLD: &str = "sha256:9999999999999999999999999999999999999999999999999999999999999999";
    let mut ni = nodeimage(MANIFEST, true);
    resolved(&mut ni);
    ni.status.as_mut().unwrap().build_key = Some(OLD.into());
    let mut old = job::build_job(&ni, OLD, 1, &settings()).unwrap();
    old.status = Some(JobStatus {
        active: Some(1),
        ..Default::default()
    });
    ni.metadata.generation = Some(2); // the spec changed while `old` runs
    let old_name = old.name_any();
    let new_name = job::job_name(&ni, KEY, 1);
    let reply = serde_json::to_value(&ni).unwrap();
    let (r, calls) = run(ni, FakeRegistry::default(), move |mut api| async move {
        api.expect(Method::GET, SECRET_PATH, push_secret()).await;
        api.expect(Method::GET, JOBS_PATH, job_list(vec![old.clone()]))
            .await;
        api.expect(Method::PATCH, NI_PATH, reply).await;
        api.expect(
            Method::DELETE,
            &format!("{JOBS_PATH}/{old_name}"),
            serde_json::to_value(&old).unwrap(),
        )
        .await;
        let (_, job) = api
            .expect(
                Method::PATCH,
                &format!("{JOBS_PATH}/{new_name}"),
                Value::Null,
            )
            .await;
        assert_eq!(
            job["metadata"]["annotations"]["kitfleet.dev/build-key"],
            KEY
        );
        let (_, st) = api
            .expect(Method::PATCH, &format!("{NI_PATH}/status"), status_reply())
            .await;
        assert_eq!(
            (
                st["status"]["buildKey"].as_str(),
                st["status"]["observedGeneration"].as_i64()
            ),
            (Some(KEY), Some(2))
        );
        api.expect(Method::POST, EVENTS_PATH, Value::Null).await;
        api.done().await;
    })
    .await;
    r.unwrap();
    assert_eq!(calls[0], "resolve secret=true");
}

#[tokio::test]
async fn a_rejected_job_is_reported_in_status_and_retried() {
    let mut ni = nodeimage(MANIFEST, true);
    resolved(&mut ni);
    let job_name = job::job_name(&ni, KEY, 1);
    let (r, _) = run(ni, FakeRegistry::default(), move |mut api| async move {
        api.expect(Method::GET, SECRET_PATH, push_secret()).await;
        api.expect(Method::GET, JOBS_PATH, job_list(vec![])).await;
        let quota = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
            "message": "jobs \"x\" is forbidden: exceeded quota: builds"});
        let (req, send) = api.0.next_request().await.unwrap();
        assert_eq!((req.method(), req.uri().path()), (&Method::PATCH, format!("{JOBS_PATH}/{job_name}").as_str()));
        send.send_response(Response::builder().status(403).body(Body::from(serde_json::to_vec(&quota).unwrap())).unwrap());
        let (_, st) = api.expect(Method::PATCH, &format!("{NI_PATH}/status"), status_reply()).await;
        let built = st["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Built").unwrap();
        assert_eq!(built["reason"], "JobCreateFailed");
        assert!(built["message"].as_str().unwrap().contains("exceeded quota"), "{built}");
        let (_, ev) = api.expect(Method::POST, EVENTS_PATH, Value::Null).await;
        assert_eq!((ev["reason"].as_str(), ev["type"].as_str()), (Some("JobCreateFailed"), Some("Warning")));
        api.done().await;
    })
    .await;
    let err = r.unwrap_err();
    assert!(err.contains("exceeded quota"), "{err}");
}

#[tokio::test]
async fn a_missing_push_secret_is_degraded_without_a_job() {
    let ni = nodeimage(MANIFEST, true);
    let (r, calls) = run(ni, FakeRegistry::default(), |mut api| async move {
        let missing = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "secrets \"push\" not found"});
        let (req, send) = api.0.next_request().await.unwrap();
        assert_eq!((req.method(), req.uri().path()), (&Method::GET, SECRET_PATH));
        send.send_response(Response::builder().status(404).body(Body::from(serde_json::to_vec(&missing).unwrap())).unwrap());
        api.expect(Method::GET, JOBS_PATH, job_list(vec![])).await;
        let (_, st) = api.expect(Method::PATCH, &format!("{NI_PATH}/status"), status_reply()).await;
        let degraded = st["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Degraded").unwrap();
        assert_eq!((degraded["status"].as_str(), degraded["reason"].as_str()), (Some("True"), Some("PushSecret")));
        assert_eq!(degraded["message"], "spec.output.pushSecretName: Secret kitfleet-system/push not found");
        let (_, ev) = api.expect(Method::POST, EVENTS_PATH, Value::Null).await;
        assert_eq!((ev["reason"].as_str(), ev["type"].as_str()), (Some("PushSecret"), Some("Warning")));
        api.done().await;
    })
    .await;
    r.unwrap();
    assert!(
        calls.is_empty(),
        "no registry access without the secret: {calls:?}"
    );
}
