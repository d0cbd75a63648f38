//! The mesh runner against a mock apiserver (tower-test scenario) in a throwaway network namespace:
//! initial LIST → SSA PATCH of this node's annotations → WATCH events (annotation-only change, key
//! rotation of a peer, deletion) → routes and the node state file follow. Real TUN and rtnetlink.
//! Needs root, TUN and netns: fails under CI=true without them, skips with a message otherwise.

use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use kitfleet_cni_wg::state::NodeState;
use kitfleet_dataplane::PrivateKey;
use kitfleet_node_agent::mesh::kube_source::KubeSource;
use kitfleet_node_agent::mesh::nodes::{ANNOTATION_ENDPOINT, ANNOTATION_PUBLIC_KEY};
use kitfleet_node_agent::mesh::routes::NetlinkRoutes;
use kitfleet_node_agent::mesh::{MeshConfig, run};
use kitfleet_testbed::netns::{ip, ns_output, require_privileges, with_netns};
use kube::client::Body;
use serde_json::json;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn node(name: &str, rv: &str, cidr: &str, addr: &str, key: Option<&str>) -> serde_json::Value {
    let mut n = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "resourceVersion": rv},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": addr}]}
    });
    if let Some(k) = key {
        n["metadata"]["annotations"] = json!({ ANNOTATION_PUBLIC_KEY: k });
    }
    n
}

fn ok(send: tower_test::mock::SendResponse<Response<Body>>, body: &serde_json::Value) {
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn watch_body(events: &[(&str, serde_json::Value)]) -> Body {
    let mut b = Vec::new();
    for (ty, obj) in events {
        b.extend(serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap());
        b.push(b'\n');
    }
    Body::from(b)
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn mesh_follows_the_apiserver() {
    if !require_privileges("mesh_follows_the_apiserver") {
        return;
    }
    let ns = format!("kk{}", std::process::id() % 10000);
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &ns])
        .status();
    ip(&["netns", "add", &ns]).unwrap();
    let cleanup = Guard(ns.clone());
    ip(&[
        "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ])
    .unwrap();
    ip(&["-n", &ns, "link", "set", "eth0", "mtu", "9000", "up"]).unwrap();
    ip(&["-n", &ns, "addr", "add", "192.168.220.1/24", "dev", "eth0"]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (key_file, state_file) = (tmp.path().join("wg.key"), tmp.path().join("node.json"));
    let ns2 = ns.clone();
    let result = with_netns(&ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(scenario(ns2, key_file, state_file))
    })
    .join()
    .unwrap();
    result.unwrap();
    drop(cleanup);
}

struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

async fn scenario(ns: String, key_file: std::path::PathBuf, state_file: std::path::PathBuf) {
    let (svc, mut handle): (_, Handle) = tower_test::mock::pair();
    let client = kube::Client::new(svc, "default");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = MeshConfig {
        node_name: "n1".into(),
        interface: "kfk0".into(),
        listen_port: 51820,
        key_file: key_file.clone(),
        state_file: state_file.clone(),
        endpoint: None,
        underlay_mtu: None,
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        keepalive: None,
        resync: Duration::from_millis(200),
    };
    let shutdown = async {
        let _ = stop_rx.await;
    };
    let mesh = tokio::spawn(run(
        cfg,
        KubeSource::new(client),
        NetlinkRoutes::open().unwrap(),
        shutdown,
    ));
    let k2 = PrivateKey::generate().unwrap().public_key().to_string();
    let k2b = PrivateKey::generate().unwrap().public_key().to_string();

    // 1. Initial LIST: this node without annotations, a peer with a key.
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(
        (req.method(), req.uri().path()),
        (&Method::GET, "/api/v1/nodes")
    );
    let n2 = node("n2", "3", "10.244.2.0/24", "192.168.220.2", Some(&k2));
    let list = json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "10"},
        "items": [node("n1", "2", "10.244.1.0/24", "192.168.220.1", None), n2]});
    ok(send, &list);

    // 2. The agent publishes its key and endpoint with server-side apply.
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(
        (req.method(), req.uri().path()),
        (&Method::PATCH, "/api/v1/nodes/n1")
    );
    let body: serde_json::Value =
        serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
    let own_key = public_key_of(&key_file);
    assert_eq!(
        body["metadata"]["annotations"][ANNOTATION_PUBLIC_KEY],
        own_key
    );
    assert_eq!(
        body["metadata"]["annotations"][ANNOTATION_ENDPOINT],
        "192.168.220.1:51820"
    );
    let mut n1 = node("n1", "11", "10.244.1.0/24", "192.168.220.1", Some(&own_key));
    n1["metadata"]["annotations"][ANNOTATION_ENDPOINT] = json!("192.168.220.1:51820");
    // The apiserver fails this one: the agent keeps running and retries at its next resync,
    // while its watch starts; the two requests may come in either order.
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcdserver: request timed out", "code": 500});
    send.send_response(
        Response::builder()
            .status(500)
            .body(Body::from(serde_json::to_vec(&status).unwrap()))
            .unwrap(),
    );
    let mut watch = None;
    let mut retried = false;
    while watch.is_none() || !retried {
        let (req, send) = handle.next_request().await.unwrap();
        if req.method() == Method::PATCH {
            assert_eq!(req.uri().path(), "/api/v1/nodes/n1");
            ok(send, &n1);
            retried = true;
        } else {
            assert!(
                watch.is_none(),
                "a second watch before the first was answered"
            );
            watch = Some((req, send));
        }
    }

    let routes = || ns_output(&ns, "ip", &["route", "show", "dev", "kfk0"]).unwrap_or_default();
    wait_for("the route to n2's podCIDR", || {
        routes().contains("10.244.2.0/24")
    })
    .await;
    let st = NodeState::load(&state_file).unwrap();
    assert_eq!(st.pod_cidrs, ["10.244.1.0/24"]);
    assert_eq!(st.mtu, 8920, "underlay MTU 9000 - 80");
    assert!(st.mesh_healthy);
    assert_eq!(st.cluster_cidrs, ["10.244.0.0/16"], "as configured");
    assert_eq!(st.wg_interface, "kfk0");

    // 3. WATCH: our own annotated Node (no re-publish), a new node n3, n2 rotates its key.
    let (req, send) = watch.unwrap();
    let q = req.uri().query().unwrap_or_default().to_string();
    assert!(
        q.contains("watch=true") && q.contains("resourceVersion=10"),
        "{q}"
    );
    let n3 = node(
        "n3",
        "13",
        "10.244.3.0/24",
        "192.168.220.3",
        Some(&PrivateKey::generate().unwrap().public_key().to_string()),
    );
    let n2b = node("n2", "14", "10.244.2.0/24", "192.168.220.2", Some(&k2b));
    send.send_response(
        Response::builder()
            .body(watch_body(&[
                ("MODIFIED", n1),
                ("ADDED", n3),
                ("MODIFIED", n2b),
            ]))
            .unwrap(),
    );
    wait_for("the route to n3's podCIDR", || {
        routes().contains("10.244.3.0/24")
    })
    .await;
    assert!(
        routes().contains("10.244.2.0/24"),
        "rotation keeps n2's route"
    );

    // 4. The watch is resumed from the last resourceVersion; n2 is deleted.
    let (req, send) = handle.next_request().await.unwrap();
    let q = req.uri().query().unwrap_or_default().to_string();
    assert!(
        q.contains("watch=true") && q.contains("resourceVersion=14"),
        "{q}"
    );
    send.send_response(
        Response::builder()
            .body(watch_body(&[(
                "DELETED",
                node("n2", "15", "10.244.2.0/24", "192.168.220.2", Some(&k2b)),
            )]))
            .unwrap(),
    );
    wait_for("n2's route to go", || !routes().contains("10.244.2.0/24")).await;
    assert!(routes().contains("10.244.3.0/24"));

    // 5. Shutdown: clean exit, state says unhealthy, TUN and routes stay for the next start.
    let _next_watch = handle.next_request().await;
    stop_tx.send(()).unwrap();
    mesh.await.unwrap().unwrap();
    assert!(!NodeState::load(&state_file).unwrap().mesh_healthy);
    assert!(routes().contains("10.244.3.0/24"));
}

/// The public key (base64) of the private key stored at `path`.
fn public_key_of(path: &std::path::Path) -> String {
    let k: PrivateKey = std::fs::read_to_string(path).unwrap().parse().unwrap();
    k.public_key().to_string()
}
