//! The operator process against a fake API server (a stateful Lease, NodeImage and Job lists, watches left
//! pending): it takes a free Lease, starts the controller, serves /readyz and /metrics, and on shutdown stops and
//! releases the Lease; with the Lease held by another replica it stands by and never starts the controller.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kitfleet_api::NodeImageSpec;
use kitfleet_api::nodeimage::ArtifactStatus;
use kitfleet_operator::build::registry::{ArtifactRegistry, PullSecret, RegistryError, Resolution};
use kitfleet_operator::config::{Config, RunArgs};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Pending = tower_test::mock::SendResponse<Response<Body>>;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kitfleet-system/leases";
const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/kitfleet-system/leases/kitfleet-operator";

/// A registry nobody should call: no NodeImage exists in these scenarios.
struct Unused;

impl ArtifactRegistry for Unused {
    async fn resolve(
        &self,
        _: &NodeImageSpec,
        _: Option<&PullSecret>,
    ) -> Result<Resolution, RegistryError> {
        panic!("no NodeImage exists: nothing to resolve")
    }
    async fn lookup(
        &self,
        _: &str,
        _: &str,
        _: Option<&PullSecret>,
    ) -> Result<Option<ArtifactStatus>, RegistryError> {
        panic!("no NodeImage exists: nothing to look up")
    }
}

#[derive(Default)]
struct ApiState {
    lease: Option<Value>,
    log: Vec<String>,
    /// Watches are never answered (until the test ends).
    watches: Vec<Pending>,
}

fn reply(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn not_found() -> Response<Body> {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"});
    reply(StatusCode::NOT_FOUND, &status)
}

fn list(kind: &str, api_version: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": []})
}

async fn fake_api(mut handle: Handle, state: Arc<Mutex<ApiState>>) {
    while let Some((req, send)) = handle.next_request().await {
        let (method, path, query) = (
            req.method().clone(),
            req.uri().path().to_string(),
            req.uri().query().unwrap_or_default().to_string(),
        );
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let mut st = state.lock().unwrap();
        st.log.push(format!("{method} {path}?{query}"));
        let resp = match (&method, path.as_str()) {
            (_, _) if query.contains("watch=true") => {
                st.watches.push(send);
                continue;
            }
            (&Method::GET, "/version") => reply(
                StatusCode::OK,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "", "gitTreeState": "clean",
                    "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
            ),
            (&Method::GET, LEASE) => match &st.lease {
                Some(l) => reply(StatusCode::OK, l),
                None => not_found(),
            },
            (&Method::POST, LEASES) => {
                let mut l = body;
                l["metadata"]["namespace"] = json!("kitfleet-system");
                l["metadata"]["resourceVersion"] = json!("1");
                st.lease = Some(l.clone());
                reply(StatusCode::CREATED, &l)
            }
            (&Method::PATCH, LEASE) => match st.lease.as_mut() {
                None => not_found(),
                Some(l) => {
                    // Apply and strategic-merge patches of a Lease's flat spec: set, or remove on null.
                    if !l["spec"].is_object() {
                        l["spec"] = json!({});
                    }
                    let spec = l["spec"].as_object_mut().unwrap();
                    for (k, v) in body["spec"].as_object().cloned().unwrap_or_default() {
                        if v.is_null() {
                            spec.remove(&k);
                        } else {
                            spec.insert(k, v);
                        }
                    }
                    reply(StatusCode::OK, l)
                }
            },
            (&Method::GET, "/apis/kitfleet.dev/v1alpha1/nodeimages") => reply(
                StatusCode::OK,
                &list("NodeImageList", "kitfleet.dev/v1alpha1"),
            ),
            (&Method::GET, "/apis/batch/v1/namespaces/kitfleet-system/jobs") => {
                reply(StatusCode::OK, &list("JobList", "batch/v1"))
            }
            _ => not_found(),
        };
        send.send_response(resp);
    }
}

fn holder(state: &Mutex<ApiState>) -> Option<String> {
    state.lock().unwrap().lease.as_ref()?["spec"]["holderIdentity"]
        .as_str()
        .map(String::from)
}

fn controller_started(state: &Mutex<ApiState>) -> bool {
    state
        .lock()
        .unwrap()
        .log
        .iter()
        .any(|l| l.starts_with("GET /apis/kitfleet.dev/v1alpha1/nodeimages?"))
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config(identity: &str) -> Config {
    let args = RunArgs {
        builder_image: Some("b:1".into()),
        identity: Some(identity.into()),
        ..Default::default()
    };
    Config::parse(&args, &|_| None).unwrap()
}

struct Running {
    state: Arc<Mutex<ApiState>>,
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(identity: &str, lease: Option<Value>) -> Running {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let state = Arc::new(Mutex::new(ApiState {
        lease,
        ..Default::default()
    }));
    tokio::spawn(fake_api(handle, state.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let client = Client::new(svc, "default");
    let task = tokio::spawn(kitfleet_operator::run::run_with(
        config(identity),
        client,
        Unused,
        listener,
        shutdown,
    ));
    Running {
        state,
        addr,
        stop,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_a_free_lease_runs_the_controller_and_releases_on_shutdown() {
    let r = start("op-a", None).await;
    let st = r.state.clone();
    wait_until("op-a holds the Lease", || {
        holder(&st).as_deref() == Some("op-a")
    })
    .await;
    wait_until("the controller lists NodeImages", || {
        controller_started(&st)
    })
    .await;
    let addr = r.addr;
    let ready = tokio::task::spawn_blocking(move || http_get(addr, "/readyz"))
        .await
        .unwrap();
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let metrics = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .unwrap();
    assert!(
        metrics.contains("kitfleet_operator_reconciles_total 0"),
        "{metrics}"
    );

    r.stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(15), r.task)
        .await
        .expect("graceful shutdown in time")
        .unwrap();
    result.unwrap();
    assert_eq!(
        holder(&r.state),
        None,
        "the Lease is released on shutdown: {:?}",
        r.state.lock().unwrap().lease
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stands_by_while_another_replica_holds_the_lease() {
    let now = serde_json::to_value(MicroTime(Timestamp::now())).unwrap();
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "kitfleet-operator", "namespace": "kitfleet-system", "resourceVersion": "7"},
        "spec": {"holderIdentity": "op-other", "acquireTime": now, "renewTime": now, "leaseDurationSeconds": 120, "leaseTransitions": 3}
    });
    let r = start("op-b", Some(lease)).await;
    let addr = r.addr;
    let st = r.state.clone();
    wait_until("the Lease was read", || {
        st.lock()
            .unwrap()
            .log
            .iter()
            .any(|l| l.starts_with(&format!("GET {LEASE}")))
    })
    .await;
    wait_until("ready while standing by", || {
        http_get(addr, "/readyz").starts_with("HTTP/1.1 200")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !controller_started(&r.state),
        "a standby must not run the controller: {:?}",
        r.state.lock().unwrap().log
    );

    r.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), r.task)
        .await
        .expect("shutdown in time")
        .unwrap()
        .unwrap();
    assert_eq!(
        holder(&r.state).as_deref(),
        Some("op-other"),
        "a standby leaves the holder's Lease alone"
    );
}

/// Another replica takes the Lease over (as after a partition): at its next renewal the leader sees it, stops the
/// controller and exits with an error, so that its restart starts clean. Takes one renewal period (~10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_lease_stops_the_controller_and_fails() {
    let r = start("op-a", None).await;
    let st = r.state.clone();
    wait_until("op-a holds the Lease", || {
        holder(&st).as_deref() == Some("op-a")
    })
    .await;
    wait_until("the controller lists NodeImages", || {
        controller_started(&st)
    })
    .await;
    {
        let mut s = st.lock().unwrap();
        let spec = &mut s.lease.as_mut().unwrap()["spec"];
        spec["holderIdentity"] = json!("op-x");
        spec["renewTime"] = serde_json::to_value(MicroTime(Timestamp::now())).unwrap();
        spec["leaseDurationSeconds"] = json!(120);
    }
    let result = tokio::time::timeout(Duration::from_secs(30), r.task)
        .await
        .expect("stops after the next renewal")
        .unwrap();
    let err = result.expect_err("losing the Lease is an error exit");
    assert!(err.to_string().contains("leadership lost"), "{err}");
    assert_eq!(
        holder(&r.state).as_deref(),
        Some("op-x"),
        "the new holder's Lease is left alone"
    );
    drop(r.stop);
}
