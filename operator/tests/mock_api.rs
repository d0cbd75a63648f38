//! Mock-apiserver scenarios (the kube-rs controller-rs `fixtures.rs` pattern), kept only for answers a real API
//! server does not give on demand (a quota rejection): `tower_test::mock::pair` behind `kube::Client`; the scenario
//! asserts every request the reconciler sends, in order, answers it with a canned object, and fails on any request
//! it did not expect. Every other scenario runs against a real kube-apiserver (`tests/apiserver.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::jiff::Timestamp;
use kitfleet_api::nodeimage::{ArtifactStatus, ResolvedImage};
use kitfleet_api::{NodeImage, NodeImageSpec, NodeImageStatus};
use kitfleet_operator::build::controller::{self, Context};
use kitfleet_operator::build::decide::{ANNOTATION_RESOLVED_AT, ANNOTATION_RESOLVED_REFRESH};
use kitfleet_operator::build::job::{self, JobSettings};
use kitfleet_operator::build::registry::{ArtifactRegistry, PullSecret, RegistryError, Resolution};
use kitfleet_operator::config::BuildSettings;
use kitfleet_operator::metrics::Metrics;
use kube::Client;
use kube::client::Body;
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
    assert!(ctx.prime_caches(Vec::new(), Vec::new()));
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
async fn a_rejected_job_is_reported_in_status_and_retried() {
    let mut ni = nodeimage(MANIFEST, true);
    resolved(&mut ni);
    let job_name = job::job_name(&ni, KEY, 1);
    let (r, _) = run(ni, FakeRegistry::default(), move |mut api| async move {
        api.expect(Method::GET, SECRET_PATH, push_secret()).await;
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
