//! Fixtures for every pod shape: the patch is applied (RFC 6902, `json-patch`) and the resulting pod is checked.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kitfleet_api::SecurityPolicy;
use serde_json::{Value, json};

use super::mutate::*;
use super::review::{self, SetCache};

const NS: &str = "shop";
const OP_NS: &str = "kitfleet-system";

fn pod(v: Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

fn policy(name: &str, generation: i64, selector: Value) -> SecurityPolicy {
    serde_json::from_value(json!({
        "apiVersion": "kitfleet.dev/v1alpha1", "kind": "SecurityPolicy",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": generation},
        "spec": {"podSelector": selector, "seccomp": {"defaultAction": "allow", "rules": [{"names": ["ptrace"], "action": "kill-process"}]}},
    }))
    .unwrap()
}

fn web_policy() -> SecurityPolicy {
    policy("web", 3, json!({"matchLabels": {"app": "web"}}))
}

fn no_images() -> BTreeMap<String, ImageLookup> {
    BTreeMap::new()
}

/// Applies `ops` to `pod` (a minimal RFC 6902 `add`/`remove` on the paths the webhook writes).
fn apply(pod: &Pod, ops: &[Value]) -> Value {
    let mut doc = serde_json::to_value(pod).unwrap();
    for op in ops {
        let path = op["path"].as_str().unwrap();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (last, parents) = parts.split_last().unwrap();
        let mut target = &mut doc;
        for p in parents {
            target = match target {
                Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
                Value::Object(o) => o.get_mut(*p).unwrap_or_else(|| panic!("{path}: no {p}")),
                _ => panic!("{path}"),
            };
        }
        match (op["op"].as_str().unwrap(), target) {
            ("add", Value::Array(a)) if *last == "-" => a.push(op["value"].clone()),
            ("add", Value::Object(o)) => {
                o.insert(last.to_string(), op["value"].clone());
            }
            ("remove", Value::Object(o)) => {
                o.remove(*last)
                    .unwrap_or_else(|| panic!("{path}: nothing to remove"));
            }
            (o, t) => panic!("{o} {path} on {t}"),
        }
    }
    doc
}

fn wrapped(
    pod: &Pod,
    policies: &[SecurityPolicy],
    images: &BTreeMap<String, ImageLookup>,
) -> (PolicySet, Value) {
    match mutate(pod, NS, OP_NS, policies, images).unwrap() {
        Outcome::Mutated { set, patch } => {
            let out = apply(pod, &patch);
            // The result is still a pod.
            let _: Pod = serde_json::from_value(out.clone()).unwrap();
            (set, out)
        }
        other => panic!("not mutated: {other:?}"),
    }
}

fn launcher(argv: &[&str]) -> Value {
    let mut v = vec![LAUNCHER, "exec", "--policy", POLICY_FILE, "--"];
    v.extend_from_slice(argv);
    json!(v)
}

fn web_pod(containers: Value) -> Pod {
    pod(
        json!({"metadata": {"name": "web-0", "namespace": NS, "labels": {"app": "web"}}, "spec": {"containers": containers}}),
    )
}

#[test]
fn command_and_args_are_wrapped_and_the_volume_pins_the_set() {
    let p = web_pod(
        json!([{"name": "app", "image": "reg/app:1", "command": ["/bin/app"], "args": ["--port", "80"]}]),
    );
    let (set, out) = wrapped(&p, &[web_policy()], &no_images());
    let c = &out["spec"]["containers"][0];
    assert_eq!(c["command"], launcher(&["/bin/app", "--port", "80"]));
    assert!(c.get("args").is_none(), "args folded into command: {c}");
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "kitfleet-sandbox", "mountPath": "/.kitfleet", "readOnly": true}])
    );
    let v = &out["spec"]["volumes"][0];
    assert_eq!(v["name"], "kitfleet-sandbox");
    assert_eq!(v["csi"]["driver"], "sandbox.kitfleet.dev");
    assert_eq!(v["csi"]["readOnly"], true);
    assert_eq!(
        v["csi"]["volumeAttributes"]["sandbox.kitfleet.dev/policies"],
        "web@3"
    );
    assert_eq!(
        v["csi"]["volumeAttributes"]["sandbox.kitfleet.dev/set-hash"],
        set.hash
    );
    assert_eq!(
        out["spec"]["securityContext"]["seccompProfile"],
        json!({"type": "Localhost", "localhostProfile": format!("kitfleet/{}.json", set.hash)})
    );
    // The node agent's pinned vector (node-agent/src/csi/attrs.rs): both sides hash identically.
    use sha2::Digest;
    assert_eq!(
        set_hash(
            "shop",
            &[PolicyRef {
                name: "web".into(),
                uid: "0b0c".into(),
                generation: 2
            }]
        ),
        hex::encode(sha2::Sha256::digest(
            b"kitfleet.dev/policy-set v1\nnamespace shop\npolicy web 0b0c 2\n"
        ))
    );
    assert_eq!(
        set.hash,
        set_hash(
            NS,
            &[PolicyRef {
                name: "web".into(),
                uid: "uid-web".into(),
                generation: 3
            }]
        )
    );
}

#[test]
fn command_only_keeps_no_image_cmd() {
    let p = web_pod(json!([{"name": "app", "image": "reg/app:1", "command": ["/bin/app", "-v"]}]));
    let (_, out) = wrapped(&p, &[web_policy()], &no_images());
    assert_eq!(
        out["spec"]["containers"][0]["command"],
        launcher(&["/bin/app", "-v"])
    );
}

#[test]
fn args_only_take_the_image_entrypoint_not_its_cmd() {
    let p = web_pod(json!([{"name": "app", "image": "reg/app:1", "args": ["serve"]}]));
    assert_eq!(images_to_look_up(&p), vec!["reg/app:1".to_string()]);
    let images = BTreeMap::from([(
        "reg/app:1".to_string(),
        Ok(ImageArgv {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
        }),
    )]);
    let (_, out) = wrapped(&p, &[web_policy()], &images);
    assert_eq!(
        out["spec"]["containers"][0]["command"],
        launcher(&["/entry", "serve"])
    );
    assert!(out["spec"]["containers"][0].get("args").is_none());
}

#[test]
fn image_entrypoint_only_takes_entrypoint_and_cmd() {
    let p = web_pod(json!([{"name": "app", "image": "reg/app:1"}]));
    let images = BTreeMap::from([(
        "reg/app:1".to_string(),
        Ok(ImageArgv {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
        }),
    )]);
    let (_, out) = wrapped(&p, &[web_policy()], &images);
    assert_eq!(
        out["spec"]["containers"][0]["command"],
        launcher(&["/entry", "default"])
    );
}

#[test]
fn an_unreadable_image_fails_admission_naming_it() {
    let p = web_pod(
        json!([{"name": "a", "image": "reg/a:1", "command": ["/a"]}, {"name": "b", "image": "reg/b:2"}]),
    );
    assert_eq!(images_to_look_up(&p), vec!["reg/b:2".to_string()]);
    let images = BTreeMap::from([("reg/b:2".to_string(), Err("manifest unknown".to_string()))]);
    let e = mutate(&p, NS, OP_NS, &[web_policy()], &images).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("spec.containers[1].command: image \"reg/b:2\""),
        "{msg}"
    );
    assert!(
        msg.contains("manifest unknown") && msg.contains("set command"),
        "{msg}"
    );
    // Lookups disabled: the same pod is refused, saying what to do.
    let e = mutate(&p, NS, OP_NS, &[web_policy()], &no_images()).unwrap_err();
    assert!(e.to_string().contains("lookups are disabled"), "{e}");
    // An image with neither Entrypoint nor Cmd.
    let images = BTreeMap::from([("reg/b:2".to_string(), Ok(ImageArgv::default()))]);
    let e = mutate(&p, NS, OP_NS, &[web_policy()], &images).unwrap_err();
    assert!(e.to_string().contains("neither Entrypoint nor Cmd"), "{e}");
}

#[test]
fn init_and_ephemeral_containers_are_not_wrapped_but_keep_the_pod_profile() {
    let p = pod(json!({
        "metadata": {"name": "web-0", "namespace": NS, "labels": {"app": "web"}},
        "spec": {
            "securityContext": {"runAsUser": 1000},
            "initContainers": [
                {"name": "plain", "image": "reg/init:1", "command": ["/init"]},
                {"name": "own", "image": "reg/init:1", "command": ["/init"], "securityContext": {"seccompProfile": {"type": "Unconfined"}}},
            ],
            "containers": [{"name": "app", "image": "reg/app:1", "command": ["/app"], "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}],
            "ephemeralContainers": [{"name": "debug", "image": "reg/dbg:1", "command": ["/sh"]}],
        }
    }));
    let (set, out) = wrapped(&p, &[web_policy()], &no_images());
    let profile =
        json!({"type": "Localhost", "localhostProfile": format!("kitfleet/{}.json", set.hash)});
    let s = &out["spec"];
    assert_eq!(s["initContainers"][0]["command"], json!(["/init"]));
    assert!(s["initContainers"][0].get("volumeMounts").is_none());
    assert!(s["initContainers"][0].get("securityContext").is_none());
    assert_eq!(s["initContainers"][1]["command"], json!(["/init"]));
    assert_eq!(
        s["initContainers"][1]["securityContext"]["seccompProfile"], profile,
        "an own profile is overridden"
    );
    assert_eq!(s["ephemeralContainers"][0]["command"], json!(["/sh"]));
    assert_eq!(s["containers"][0]["command"], launcher(&["/app"]));
    assert_eq!(
        s["containers"][0]["securityContext"]["seccompProfile"],
        profile
    );
    assert_eq!(s["securityContext"]["seccompProfile"], profile);
    assert_eq!(
        s["securityContext"]["runAsUser"], 1000,
        "the pod's security context is kept"
    );
}

#[test]
fn several_matching_policies_stack_in_one_sorted_set() {
    let policies = [
        policy("zeta", 1, json!({})),
        web_policy(),
        policy(
            "alpha",
            7,
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]}),
        ),
        policy("other", 1, json!({"matchLabels": {"app": "db"}})),
    ];
    let p = pod(
        json!({"metadata": {"name": "web-0", "namespace": NS, "labels": {"app": "web"}},
        "spec": {"volumes": [{"name": "data", "emptyDir": {}}],
                  "containers": [
                      {"name": "a", "image": "reg/a:1", "command": ["/a"], "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                      {"name": "b", "image": "reg/b:1", "command": ["/b"]}]}}),
    );
    let (set, out) = wrapped(&p, &policies, &no_images());
    assert_eq!(set.policies_attr(), "alpha@7,web@3,zeta@1");
    assert_eq!(out["spec"]["volumes"].as_array().unwrap().len(), 2);
    assert_eq!(
        out["spec"]["volumes"][1]["csi"]["volumeAttributes"]["sandbox.kitfleet.dev/policies"],
        "alpha@7,web@3,zeta@1"
    );
    assert_eq!(
        out["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(out["spec"]["containers"][1]["command"], launcher(&["/b"]));
    // The order the policies come in does not change the set.
    let mut reversed = policies.to_vec();
    reversed.reverse();
    let (set2, _) = wrapped(&p, &reversed, &no_images());
    assert_eq!(set, set2);
}

#[test]
fn no_matching_policy_leaves_the_pod_alone() {
    let p = pod(
        json!({"metadata": {"name": "db-0", "namespace": NS, "labels": {"app": "db"}},
        "spec": {"containers": [{"name": "db", "image": "reg/db:1"}]}}),
    );
    assert_eq!(
        mutate(&p, NS, OP_NS, &[web_policy()], &no_images()).unwrap(),
        Outcome::Unmatched
    );
    // A policy of another namespace, or one being deleted, never matches.
    let mut elsewhere = policy("all", 1, json!({}));
    elsewhere.metadata.namespace = Some("other".into());
    let mut deleting = policy("all2", 1, json!({}));
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
    );
    assert_eq!(
        mutate(&p, NS, OP_NS, &[elsewhere, deleting], &no_images()).unwrap(),
        Outcome::Unmatched
    );
}

#[test]
fn exempt_namespaces_and_kitfleet_pods_are_never_wrapped() {
    let all = |ns: &str| {
        let mut p = policy("all", 1, json!({}));
        p.metadata.namespace = Some(ns.into());
        p
    };
    for ns in ["kube-system", OP_NS] {
        let p = pod(
            json!({"metadata": {"name": "x", "namespace": ns}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        );
        assert!(
            matches!(
                mutate(&p, ns, OP_NS, &[all(ns)], &no_images()).unwrap(),
                Outcome::Exempt(_)
            ),
            "{ns}"
        );
    }
    let p = pod(
        json!({"metadata": {"name": "agent", "namespace": NS, "labels": {"app.kubernetes.io/name": "kitfleet"}},
        "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    );
    assert!(matches!(
        mutate(&p, NS, OP_NS, &[all(NS)], &no_images()).unwrap(),
        Outcome::Exempt(_)
    ));
}

#[test]
fn reserved_names_are_refused_with_their_field() {
    let p = pod(
        json!({"metadata": {"name": "w", "namespace": NS, "labels": {"app": "web"}},
        "spec": {"volumes": [{"name": "kitfleet-sandbox", "emptyDir": {}}], "containers": [{"name": "c", "image": "i", "command": ["/c"]}]}}),
    );
    let e = mutate(&p, NS, OP_NS, &[web_policy()], &no_images()).unwrap_err();
    assert!(e.to_string().starts_with("spec.volumes[0].name:"), "{e}");
    let p = web_pod(
        json!([{"name": "c", "image": "i", "command": ["/c"], "volumeMounts": [{"name": "x", "mountPath": "/.kitfleet/"}]}]),
    );
    let e = mutate(&p, NS, OP_NS, &[web_policy()], &no_images()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("spec.containers[0].volumeMounts[0].mountPath:"),
        "{e}"
    );
}

#[test]
fn a_bad_selector_is_named() {
    let bad = policy(
        "bad",
        1,
        json!({"matchExpressions": [{"key": "app", "operator": "Sometimes", "values": ["x"]}]}),
    );
    let p = web_pod(json!([{"name": "c", "image": "i", "command": ["/c"]}]));
    let e = mutate(&p, NS, OP_NS, &[bad], &no_images()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("securitypolicy shop/bad: spec.podSelector:"),
        "{e}"
    );
}

fn review_of(kind: (&str, &str), namespace: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u-1", "kind": {"group": kind.0, "version": "v1", "kind": kind.1},
                    "resource": {"group": kind.0, "version": "v1", "resource": "pods"},
                    "namespace": namespace, "operation": "CREATE", "object": object}
    }))
    .unwrap()
}

#[test]
fn the_review_carries_a_base64_json_patch_or_a_refusal() {
    use base64::Engine as _;
    let p = web_pod(json!([{"name": "c", "image": "i", "command": ["/c"]}]));
    let body = review_of(("", "Pod"), NS, serde_json::to_value(&p).unwrap());
    let req = review::parse(&body).unwrap();
    let pod = review::pod_of(&req).unwrap().unwrap();
    let sets = SetCache::default();
    let (resp, _) = review::mutate_pod(&req, &pod, OP_NS, &[web_policy()], &no_images(), &sets);
    let r = resp.to_review();
    assert_eq!(r["response"]["uid"], "u-1");
    assert_eq!(r["response"]["allowed"], true);
    assert_eq!(r["response"]["patchType"], "JSONPatch");
    let patch: Vec<Value> = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(r["response"]["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        apply(&p, &patch)["spec"]["containers"][0]["command"],
        launcher(&["/c"])
    );
    // A set that does not compile together is refused (a syscall no architecture knows slipped past validation).
    let mut broken = web_policy();
    broken.spec.seccomp.as_mut().unwrap().rules[0].names = vec!["no_such_syscall".into()];
    broken.metadata.generation = Some(4); // a new generation: a new set hash (the cache is by hash)
    let (resp, _) = review::mutate_pod(&req, &pod, OP_NS, &[broken], &no_images(), &sets);
    assert!(!resp.allowed);
    let m = resp.message.unwrap();
    assert!(
        m.contains("do not compile together") && m.contains("spec.seccomp.rules[0].names[0]"),
        "{m}"
    );
    // Not a review.
    assert!(review::parse(b"{\"apiVersion\":\"v1\",\"kind\":\"Pod\"}").is_err());
}
