//! Fuzz checks for `kitfleet-api` (crds/): LinuxKit YAML → model, and `validate()` for NodeImage and
//! SecurityPolicy. Each takes arbitrary bytes; a panic (or a failed assertion) is a finding.
//!
//! Properties beyond "no panic": what parses also survives our own serialisation (the operator hands
//! the build Job `NodeImage::to_yaml()`, which the builder reads back with `NodeImage::from_yaml`),
//! and validation gives the same answer for the re-read object.

use kitfleet_api::linuxkit::Config;
use kitfleet_api::{NodeImage, SecurityPolicy, validate};

/// A fuzz target: its name and its check.
pub type Target = (&'static str, fn(&[u8]));

/// Every target of this file, for the corpus replay.
pub const TARGETS: &[Target] = &[
    ("linuxkit_yaml", linuxkit_yaml),
    ("nodeimage_validate", nodeimage_validate),
    ("securitypolicy_validate", securitypolicy_validate),
];

/// LinuxKit YAML (`linuxkit build` input) → `linuxkit::Config` → validation → YAML → the same Config.
pub fn linuxkit_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::from_yaml(text) else {
        return;
    };
    let verdict = validate::linuxkit(&cfg).map_err(|e| e.to_string());
    let _ = cfg.references();
    let yaml = cfg.to_yaml();
    let back = Config::from_yaml(&yaml)
        .unwrap_or_else(|e| panic!("our own LinuxKit YAML does not parse: {e}\n{yaml}"));
    assert_eq!(
        back, cfg,
        "LinuxKit YAML round trip changed the config:\n{yaml}"
    );
    assert_eq!(
        validate::linuxkit(&back).map_err(|e| e.to_string()),
        verdict
    );
}

/// A NodeImage manifest → `NodeImage::from_yaml` → `validate::nodeimage` → `to_yaml` (what the
/// build Job receives) → the same spec, with the same verdict. (Metadata is not compared: the
/// build Job's manifest carries only the name, and the apiserver owns the rest.)
pub fn nodeimage_validate(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(ni) = NodeImage::from_yaml(text) else {
        return;
    };
    let verdict = validate::nodeimage(&ni.spec).map_err(|e| e.to_string());
    // As the operator writes it for the build Job (operator/src/build/job.rs).
    let name = ni.metadata.name.clone().unwrap_or_else(|| "fuzz".into());
    let yaml = NodeImage::new(&name, ni.spec.clone()).to_yaml();
    let back = NodeImage::from_yaml(&yaml)
        .unwrap_or_else(|e| panic!("our own NodeImage YAML does not parse: {e}\n{yaml}"));
    assert_eq!(
        back.spec, ni.spec,
        "NodeImage YAML round trip changed the spec:\n{yaml}"
    );
    assert_eq!(
        validate::nodeimage(&back.spec).map_err(|e| e.to_string()),
        verdict
    );
}

/// A SecurityPolicy manifest → strict parse → `validate::security_policy` → JSON (what the
/// apiserver stores and the webhook and node agent read) → the same policy, with the same verdict.
pub fn securitypolicy_validate(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sp) = kitfleet_api::parse::resource_from_yaml::<SecurityPolicy>(text) else {
        return;
    };
    let verdict = validate::security_policy(&sp.spec).map_err(|e| e.to_string());
    let json = serde_json::to_value(&sp).expect("a SecurityPolicy serialises");
    let back: SecurityPolicy = serde_json::from_value(json.clone())
        .unwrap_or_else(|e| panic!("our own SecurityPolicy JSON does not parse: {e}\n{json}"));
    assert_eq!(
        back.spec, sp.spec,
        "SecurityPolicy JSON round trip changed the spec: {json}"
    );
    assert_eq!(
        validate::security_policy(&back.spec).map_err(|e| e.to_string()),
        verdict
    );
}
