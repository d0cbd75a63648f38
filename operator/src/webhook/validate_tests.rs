//! The validating webhook's messages, through whole AdmissionReviews.

use serde_json::{Value, json};

use super::review;

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(path),
    )
    .unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

fn review_of(kind: &str, operation: &str, object: Value) -> review::AdmissionRequest {
    let body = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u-2", "kind": {"group": "kitfleet.dev", "version": "v1alpha1", "kind": kind},
                    "name": object["metadata"]["name"], "operation": operation, "object": object}
    }))
    .unwrap();
    review::parse(&body).unwrap()
}

fn message(kind: &str, object: Value) -> String {
    let r = review::validate(&review_of(kind, "CREATE", object));
    assert!(!r.allowed);
    assert_eq!(r.uid, "u-2");
    let m = r.message.clone().unwrap();
    assert_eq!(r.to_review()["response"]["status"]["message"], m);
    m
}

#[test]
fn valid_examples_are_allowed_on_create_and_update() {
    for op in ["CREATE", "UPDATE"] {
        assert!(
            review::validate(&review_of("NodeImage", op, yaml("nodeimage-minimal.yaml"))).allowed
        );
        assert!(
            review::validate(&review_of(
                "SecurityPolicy",
                op,
                yaml("securitypolicy-nginx.yaml")
            ))
            .allowed
        );
    }
    // DELETE carries no object to judge.
    let mut r = review_of("NodeImage", "DELETE", json!({"metadata": {"name": "x"}}));
    r.object = None;
    assert!(review::validate(&r).allowed);
}

#[test]
fn a_bad_nodeimage_is_refused_with_every_field_path() {
    let mut ni = yaml("nodeimage-minimal.yaml");
    ni["spec"]["formats"] = json!(["kernel+initrd", "kernel+initrd"]);
    ni["spec"]["output"]["repository"] = json!("127.0.0.1:5000/kitfleet/nodes/minimal:v1");
    ni["spec"]["files"][0] = json!({"path": "etc/x", "source": "/etc/passwd"});
    let m = message("NodeImage", ni);
    assert!(m.starts_with("NodeImage minimal: "), "{m}");
    for path in [
        "spec.formats[1]: duplicate format",
        "spec.output.repository: ",
        "spec.files[0].source: ",
    ] {
        assert!(m.contains(path), "{path} in {m}");
    }
}

#[test]
fn a_bad_security_policy_is_refused_with_its_field_paths() {
    let mut p = yaml("securitypolicy-nginx.yaml");
    p["spec"]["landlock"]["filesystem"][0]["paths"][1] = json!("lib");
    p["spec"]["landlock"]["minAbi"] = json!(0);
    let m = message("SecurityPolicy", p);
    assert!(m.starts_with("SecurityPolicy nginx: "), "{m}");
    assert!(
        m.contains("spec.landlock.filesystem[0].paths[1]: \"lib\" must be an absolute path"),
        "{m}"
    );
    assert!(
        m.contains("spec.landlock.minAbi: must be at least 1"),
        "{m}"
    );
}

#[test]
fn a_policy_the_compiler_refuses_is_refused_with_the_compilers_field_path() {
    // `open` exists on x86_64 only: validation accepts the name, the compiler (every architecture) does not.
    let mut p = yaml("securitypolicy-nginx.yaml");
    p["spec"]["seccomp"]["rules"][1]["names"] = json!(["mount", "open"]);
    let m = message("SecurityPolicy", p);
    assert!(m.contains("spec.seccomp.rules[1].names[1]"), "{m}");
    assert!(m.contains("kitfleet-sandbox compiler"), "{m}");
}

#[test]
fn an_unreadable_object_is_refused_not_a_panic() {
    let mut p = yaml("securitypolicy-nginx.yaml");
    p["spec"]["mode"] = json!("sometimes");
    let m = message("SecurityPolicy", p);
    assert!(
        m.contains("cannot be read") && m.contains("sometimes"),
        "{m}"
    );
}
