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

/// One entry of `testdata/cel-cases.yaml`: an edit of an example and the CEL errors it must produce. The same file
/// drives the server-side check in `e2e/tests/apiserver.rs`.
#[derive(serde::Deserialize)]
struct CelCase {
    name: String,
    example: String,
    set: std::collections::BTreeMap<String, Value>,
    errors: Vec<String>,
}

fn cel_cases() -> Vec<CelCase> {
    let path = format!("{}/testdata/cel-cases.yaml", env!("CARGO_MANIFEST_DIR"));
    serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Writes `value` at JSON pointer `pointer` (the parent must exist).
fn set(obj: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    match obj
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{parent} is missing"))
    {
        Value::Array(a) => a[key.parse::<usize>().unwrap()] = value,
        Value::Object(o) => {
            o.insert(key.to_string(), value);
        }
        other => panic!("{parent} is {other}"),
    }
}

fn crd_of(example: &str) -> &'static str {
    if example.starts_with("nodeimage") {
        "nodeimages.kitfleet.dev.yaml"
    } else {
        "securitypolicies.kitfleet.dev.yaml"
    }
}

#[test]
fn cel_rules_answer_every_shared_case() {
    let cases = cel_cases();
    assert!(cases.len() >= 15, "{} cases", cases.len());
    for case in cases {
        let mut obj = example(&case.example);
        for (pointer, value) in &case.set {
            set(&mut obj, pointer, value.clone());
        }
        let schema = crd_schema(crd_of(&case.example));
        assert_eq!(
            schema_errors(&schema, &obj),
            Vec::<String>::new(),
            "{}: the edit must keep the schema satisfied",
            case.name
        );
        assert_eq!(cel_errors(&schema, &obj), case.errors, "{}", case.name);
    }
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
