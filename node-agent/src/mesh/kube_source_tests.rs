//! Mock-apiserver scenarios (the controller-rs pattern): `tower_test::mock::pair` behind a
//! `kube::Client`; each scenario step asserts one request and answers it with canned objects.

use super::*;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::json;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn mock() -> (Client, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, "default"), handle)
}

fn node(name: &str, rv: &str, cidr: &str, key: Option<&str>) -> serde_json::Value {
    let mut n = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "resourceVersion": rv},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}
    });
    if let Some(k) = key {
        n["metadata"]["annotations"] = json!({ super::super::nodes::ANNOTATION_PUBLIC_KEY: k });
    }
    n
}

fn respond(
    send: tower_test::mock::SendResponse<Response<Body>>,
    status: StatusCode,
    body: Vec<u8>,
) {
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(body))
            .unwrap(),
    );
}

/// One scripted apiserver exchange.
enum Step {
    /// Expect the initial LIST of Nodes; answer with these items at resourceVersion `rv`.
    List {
        items: Vec<serde_json::Value>,
        rv: &'static str,
    },
    /// Expect a WATCH from `from_rv`; stream these (type, object) events, then end the response.
    Watch {
        from_rv: &'static str,
        events: Vec<(&'static str, serde_json::Value)>,
    },
    /// Expect a server-side-apply PATCH of `node` carrying `annotations`; answer `status`.
    Patch {
        node: &'static str,
        annotations: serde_json::Value,
        status: StatusCode,
    },
}

async fn serve(mut handle: Handle, steps: Vec<Step>) {
    for step in steps {
        let (req, send) = handle
            .next_request()
            .await
            .expect("the client stopped calling");
        let query = req.uri().query().unwrap_or_default().to_string();
        match step {
            Step::List { items, rv } => {
                assert_eq!(
                    (req.method(), req.uri().path()),
                    (&Method::GET, "/api/v1/nodes")
                );
                assert!(
                    !query.contains("watch=true"),
                    "expected a LIST, got {query}"
                );
                let list = json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": rv}, "items": items});
                respond(send, StatusCode::OK, serde_json::to_vec(&list).unwrap());
            }
            Step::Watch { from_rv, events } => {
                assert_eq!(
                    (req.method(), req.uri().path()),
                    (&Method::GET, "/api/v1/nodes")
                );
                assert!(
                    query.contains("watch=true"),
                    "expected a WATCH, got {query}"
                );
                assert!(
                    query.contains(&format!("resourceVersion={from_rv}")),
                    "{query}"
                );
                let mut body = Vec::new();
                for (ty, obj) in events {
                    body.extend(serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap());
                    body.push(b'\n');
                }
                respond(send, StatusCode::OK, body);
            }
            Step::Patch {
                node,
                annotations,
                status,
            } => {
                assert_eq!(req.method(), Method::PATCH);
                assert_eq!(req.uri().path(), format!("/api/v1/nodes/{node}"));
                assert!(
                    query.contains("fieldManager=kitfleet-node-agent")
                        && query.contains("force=true"),
                    "{query}"
                );
                assert_eq!(
                    req.headers()["content-type"],
                    "application/apply-patch+yaml"
                );
                let body: serde_json::Value =
                    serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap())
                        .unwrap();
                assert_eq!(body["metadata"]["annotations"], annotations);
                assert_eq!(body["kind"], "Node");
                let reply = if status.is_success() {
                    node_with(node, &annotations)
                } else {
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "nodes is forbidden", "reason": "Forbidden", "code": status.as_u16()})
                };
                respond(send, status, serde_json::to_vec(&reply).unwrap());
            }
        }
    }
}

fn node_with(name: &str, annotations: &serde_json::Value) -> serde_json::Value {
    let mut n = node(name, "9", "10.244.0.0/24", None);
    n["metadata"]["annotations"] = annotations.clone();
    n
}

fn names(nodes: &[Node]) -> Vec<String> {
    nodes.iter().map(|n| n.name_any()).collect()
}

#[tokio::test]
async fn initial_list_then_watch_events_give_full_views() {
    let (client, handle) = mock();
    let server = tokio::spawn(serve(
        handle,
        vec![
            Step::List {
                items: vec![
                    node("a", "1", "10.244.0.0/24", None),
                    node("b", "2", "10.244.1.0/24", None),
                ],
                rv: "5",
            },
            Step::Watch {
                from_rv: "5",
                events: vec![
                    ("MODIFIED", node("b", "6", "10.244.1.0/24", Some("S2V5"))),
                    ("ADDED", node("c", "7", "10.244.2.0/24", None)),
                    ("DELETED", node("a", "8", "10.244.0.0/24", None)),
                ],
            },
        ],
    ));
    let mut src = KubeSource::new(client);
    assert_eq!(names(&src.next().await.unwrap()), ["a", "b"]);
    let v = src.next().await.unwrap();
    assert_eq!(names(&v), ["a", "b"]);
    let b = v.iter().find(|n| n.name_any() == "b").unwrap();
    assert_eq!(
        b.annotations()[super::super::nodes::ANNOTATION_PUBLIC_KEY],
        "S2V5",
        "annotation-only change seen"
    );
    assert_eq!(names(&src.next().await.unwrap()), ["a", "b", "c"]);
    assert_eq!(names(&src.next().await.unwrap()), ["b", "c"]);
    server.await.unwrap();
}

#[tokio::test]
async fn publish_is_a_server_side_apply_of_the_annotations() {
    let (client, handle) = mock();
    let ann = json!({"agent.kitfleet.dev/wg-endpoint": "192.0.2.1:51820", "agent.kitfleet.dev/wg-public-key": "S2V5"});
    let server = tokio::spawn(serve(
        handle,
        vec![Step::Patch {
            node: "a",
            annotations: ann.clone(),
            status: StatusCode::OK,
        }],
    ));
    let mut src = KubeSource::new(client);
    let map: BTreeMap<String, String> = serde_json::from_value(ann).unwrap();
    src.publish("a", &map).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn publish_surfaces_apiserver_refusal() {
    let (client, handle) = mock();
    let ann = json!({"agent.kitfleet.dev/wg-public-key": "S2V5"});
    let server = tokio::spawn(serve(
        handle,
        vec![Step::Patch {
            node: "a",
            annotations: ann.clone(),
            status: StatusCode::FORBIDDEN,
        }],
    ));
    let mut src = KubeSource::new(client);
    let map: BTreeMap<String, String> = serde_json::from_value(ann).unwrap();
    let e = src.publish("a", &map).await.unwrap_err().to_string();
    assert!(e.contains("forbidden"), "{e}");
    server.await.unwrap();
}
