//! The checked-in CRDs are what crdgen generates; the examples satisfy the generated schema and its CEL rules; and the
//! CEL rules reject what they are written to reject, evaluated offline as the apiserver would.

use kube::core::cel::Validator;
use serde_json::{Value, json};

fn crd_schema(file: &str) -> Value {
    let yaml = kitfleet_api::crds::all()
        .into_iter()
        .find(|(f, _)| *f == file)
        .expect("known CRD")
        .1;
    let crd: Value = serde_saphyr::from_str(&yaml).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn example(name: &str) -> Value {
    let path = format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Errors of the JSON-schema check (types, enums, patterns, lengths, required fields).
fn schema_errors(schema: &Value, object: &Value) -> Vec<String> {
    let validator = jsonschema::validator_for(schema).expect("the generated schema compiles");
    validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect()
}

/// Errors of the CEL rules (`x-kubernetes-validations`), with their field paths.
fn cel_errors(schema: &Value, object: &Value) -> Vec<String> {
    match Validator::new().validate(schema, object, None) {
        Ok(()) => vec![],
        Err(errs) => errs
            .iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

#[test]
fn checked_in_crds_match_crdgen() {
    for (file, yaml) in kitfleet_api::crds::all() {
        let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == yaml,
            "{path} is stale: run `cargo run -p kitfleet-api --bin crdgen`"
        );
    }
}

#[test]
fn examples_satisfy_the_generated_schema_and_cel_rules() {
    for (file, crd) in [
        ("nodeimage-minimal.yaml", "nodeimages.kitfleet.dev.yaml"),
        (
            "securitypolicy-nginx.yaml",
            "securitypolicies.kitfleet.dev.yaml",
        ),
    ] {
        let schema = crd_schema(crd);
        let obj = example(file);
        assert_eq!(schema_errors(&schema, &obj), Vec::<String>::new(), "{file}");
        assert_eq!(cel_errors(&schema, &obj), Vec::<String>::new(), "{file}");
    }
}

#[test]
fn examples_pass_validate() {
    let text = std::fs::read_to_string(format!(
        "{}/../examples/nodeimage-minimal.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let ni = kitfleet_api::NodeImage::from_yaml(&text).unwrap();
    kitfleet_api::validate::nodeimage(&ni.spec).unwrap();
    let text = std::fs::read_to_string(format!(
        "{}/../examples/securitypolicy-nginx.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let sp: kitfleet_api::SecurityPolicy = kitfleet_api::parse::resource_from_yaml(&text).unwrap();
    kitfleet_api::validate::security_policy(&sp.spec).unwrap();
}

/// Applies `edit` to an example and returns the CEL errors.
fn cel_after(file: &str, crd: &str, edit: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut obj = example(file);
    edit(&mut obj);
    assert_eq!(
        schema_errors(&crd_schema(crd), &obj),
        Vec::<String>::new(),
        "the edit must keep the schema satisfied"
    );
    cel_errors(&crd_schema(crd), &obj)
}

fn nodeimage_cel(edit: impl FnOnce(&mut Value)) -> Vec<String> {
    cel_after(
        "nodeimage-minimal.yaml",
        "nodeimages.kitfleet.dev.yaml",
        edit,
    )
}

fn policy_cel(edit: impl FnOnce(&mut Value)) -> Vec<String> {
    cel_after(
        "securitypolicy-nginx.yaml",
        "securitypolicies.kitfleet.dev.yaml",
        edit,
    )
}

#[test]
fn cel_rejects_max_unavailable_zero_and_above_100_percent() {
    for (v, ok) in [
        (json!(0), false),
        (json!(-1), false),
        (json!("0%"), false),
        (json!("101%"), false),
        (json!("x"), false),
        (json!(3), true),
        (json!("100%"), true),
    ] {
        let errs = nodeimage_cel(|o| o["spec"]["rollout"]["maxUnavailable"] = v.clone());
        if ok {
            assert!(errs.is_empty(), "{v}: {errs:?}");
        } else {
            assert_eq!(
                errs,
                vec![
                    "spec.rollout.maxUnavailable: must be an integer > 0 or a percentage in (0%, 100%]"
                ],
                "{v}"
            );
        }
    }
}

#[test]
fn cel_rejects_a_window_whose_start_equals_its_end() {
    let errs = nodeimage_cel(|o| o["spec"]["rollout"]["window"]["end"] = json!("22:00"));
    assert_eq!(errs, vec!["spec.rollout.window: start and end must differ"]);
}

#[test]
fn cel_rejects_duplicate_formats_and_days() {
    let errs = nodeimage_cel(|o| o["spec"]["formats"] = json!(["tar", "tar"]));
    assert_eq!(errs, vec!["spec.formats: formats must be unique"]);
    let errs = nodeimage_cel(|o| o["spec"]["rollout"]["window"]["days"] = json!(["Sat", "Sat"]));
    assert_eq!(errs, vec!["spec.rollout.window.days: days must be unique"]);
}

#[test]
fn cel_rejects_non_positive_durations() {
    let errs = nodeimage_cel(|o| o["spec"]["rollout"]["drain"]["timeout"] = json!("0s"));
    assert_eq!(errs, vec!["spec.rollout.drain.timeout: must be positive"]);
}

#[test]
fn cel_rejects_ports_outside_1_to_65535() {
    let errs =
        policy_cel(|o| o["spec"]["landlock"]["network"]["bindTcp"] = json!([0, 8080, 70000]));
    assert_eq!(
        errs,
        vec!["spec.landlock.network.bindTcp: ports must be 1-65535"]
    );
}

#[test]
fn cel_rejects_bad_seccomp_argument_conditions() {
    let errs = policy_cel(|o| o["spec"]["seccomp"]["rules"][2]["args"][0]["index"] = json!(6));
    assert_eq!(
        errs,
        vec!["spec.seccomp.rules[2].args[0].index: argument index must be 0-5"]
    );
    let errs =
        policy_cel(|o| o["spec"]["seccomp"]["rules"][2]["args"][0]["op"] = json!("masked-eq"));
    assert_eq!(
        errs,
        vec![
            "spec.seccomp.rules[2].args[0]: valueTwo is required by masked-eq and only valid with it"
        ]
    );
    let errs = policy_cel(|o| o["spec"]["seccomp"]["rules"][0]["errno"] = json!(1));
    assert_eq!(
        errs,
        vec!["spec.seccomp.rules[0]: errno is only valid with action errno"]
    );
}

#[test]
fn the_schema_rejects_unknown_access_rights_and_actions() {
    let schema = crd_schema("securitypolicies.kitfleet.dev.yaml");
    let mut obj = example("securitypolicy-nginx.yaml");
    obj["spec"]["landlock"]["filesystem"][0]["access"][0] = json!("wirte-file");
    let errs = schema_errors(&schema, &obj);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("/spec/landlock/filesystem/0/access/0: "),
        "{errs:?}"
    );
}

#[test]
fn the_schema_rejects_an_unknown_format_and_a_bad_window_time() {
    let schema = crd_schema("nodeimages.kitfleet.dev.yaml");
    let mut obj = example("nodeimage-minimal.yaml");
    obj["spec"]["formats"] = json!(["vhd"]);
    obj["spec"]["rollout"]["window"]["start"] = json!("25:00");
    let errs = schema_errors(&schema, &obj);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs.iter().any(|e| e.starts_with("/spec/formats/0: ")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("/spec/rollout/window/start: ")),
        "{errs:?}"
    );
}
