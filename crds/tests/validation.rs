//! Bad input is rejected with every problem named by its field path. One test per kind of mistake.

use kitfleet_api::{FieldError, NodeImage, SecurityPolicy, parse::resource_from_yaml, validate};

const NODEIMAGE: &str = r#"
apiVersion: kitfleet.dev/v1alpha1
kind: NodeImage
metadata: {name: t}
spec:
  kernel: {image: "linuxkit/kernel:6.12.59", cmdline: "console=ttyS0"}
  init: ["linuxkit/init:b5506cc74a6812dc40982cacfd2f4328f8a4b12a"]
  onboot:
    - {name: sysctl, image: "linuxkit/sysctl:43ac1d39da329c3567fcb9689e5ca99de6d169b6"}
  services:
    - {name: getty, image: "linuxkit/getty:a86d74c8f89be8956330c3b115b0b1f2e09ef6e0"}
  formats: [raw-efi]
  output: {repository: "registry.example.com/fleet/node"}
  rollout:
    maxUnavailable: 2
    window: {start: "22:00", end: "04:00", timeZone: "Europe/Berlin"}
"#;

const POLICY: &str = r#"
apiVersion: kitfleet.dev/v1alpha1
kind: SecurityPolicy
metadata: {name: p, namespace: default}
spec:
  landlock:
    filesystem:
      - {paths: ["/usr"], access: [read-file, execute]}
    network: {bindTcp: [8080], connectTcp: [443]}
  seccomp:
    defaultAction: allow
    rules:
      - {names: [ptrace], action: kill-process}
"#;

/// The NodeImage above with `from` replaced by `to`; validates after parsing.
fn nodeimage_errors(from: &str, to: &str) -> Vec<FieldError> {
    assert!(NODEIMAGE.contains(from), "{from}");
    let ni = NodeImage::from_yaml(&NODEIMAGE.replace(from, to)).unwrap_or_else(|e| panic!("{e}"));
    validate::nodeimage(&ni.spec).expect_err("rejected").0
}

fn policy_errors(from: &str, to: &str) -> Vec<FieldError> {
    assert!(POLICY.contains(from), "{from}");
    let sp: SecurityPolicy =
        resource_from_yaml(&POLICY.replace(from, to)).unwrap_or_else(|e| panic!("{e}"));
    validate::security_policy(&sp.spec).expect_err("rejected").0
}

fn one(errs: Vec<FieldError>) -> (String, String) {
    assert_eq!(errs.len(), 1, "{errs:?}");
    (errs[0].path.clone(), errs[0].message.clone())
}

#[test]
fn the_baselines_are_valid() {
    validate::nodeimage(&NodeImage::from_yaml(NODEIMAGE).unwrap().spec).unwrap();
    let sp: SecurityPolicy = resource_from_yaml(POLICY).unwrap();
    validate::security_policy(&sp.spec).unwrap();
}

#[test]
fn unknown_field() {
    let err = NodeImage::from_yaml(&NODEIMAGE.replace("cmdline:", "cmdlin:")).unwrap_err();
    let f = err.fields().expect("field errors");
    assert_eq!(
        f.0,
        vec![FieldError::new("spec.kernel.cmdlin", "unknown field")]
    );
    let err = NodeImage::from_yaml(
        &NODEIMAGE.replace("{name: getty,", "{name: getty, capabilites: [all],"),
    )
    .unwrap_err();
    assert_eq!(
        err.fields().unwrap().0,
        vec![FieldError::new(
            "spec.services[0].capabilites",
            "unknown field"
        )]
    );
}

#[test]
fn wrong_type_inside_the_linuxkit_fields() {
    let err =
        NodeImage::from_yaml(&NODEIMAGE.replace("{name: getty,", "{name: getty, readonly: maybe,"))
            .unwrap_err();
    let f = &err.fields().expect("field errors").0;
    assert_eq!(f.len(), 1, "{err}");
    assert_eq!(f[0].path, "spec.services[0].readonly");
    assert!(
        f[0].message.contains("expected a boolean"),
        "{}",
        f[0].message
    );
}

#[test]
fn wrong_kind() {
    let err = NodeImage::from_yaml(&NODEIMAGE.replace("kind: NodeImage", "kind: Pod")).unwrap_err();
    assert_eq!(err.to_string(), "kind: \"Pod\" is not \"NodeImage\"");
}

#[test]
fn image_reference_without_tag_or_digest() {
    let (path, msg) = one(nodeimage_errors(
        "linuxkit/sysctl:43ac1d39da329c3567fcb9689e5ca99de6d169b6",
        "linuxkit/sysctl",
    ));
    assert_eq!(path, "spec.onboot[0].image");
    assert_eq!(msg, "\"linuxkit/sysctl\" has no tag or digest");
}

#[test]
fn malformed_image_reference() {
    let (path, msg) = one(nodeimage_errors(
        "linuxkit/kernel:6.12.59",
        "Linuxkit/Kernel:6.12.59",
    ));
    assert_eq!(path, "spec.kernel.image");
    assert!(msg.contains("is not a valid image reference"), "{msg}");
}

#[test]
fn duplicate_service_names() {
    let errs = nodeimage_errors(
        "{name: getty, image: \"linuxkit/getty:a86d74c8f89be8956330c3b115b0b1f2e09ef6e0\"}",
        "{name: getty, image: \"linuxkit/getty:1\"}\n    - {name: getty, image: \"linuxkit/getty:2\"}",
    );
    assert_eq!(
        one(errs),
        (
            "spec.services[1].name".into(),
            "duplicate name \"getty\" (also services[0])".into()
        )
    );
}

#[test]
fn duplicate_volume_names() {
    let errs = nodeimage_errors(
        "  formats:",
        "  volumes: [{name: data}, {name: data}]\n  formats:",
    );
    assert_eq!(
        one(errs),
        (
            "spec.volumes[1].name".into(),
            "duplicate volume name \"data\"".into()
        )
    );
}

#[test]
fn percent_above_100() {
    let errs = nodeimage_errors("maxUnavailable: 2", "maxUnavailable: 150%");
    assert_eq!(
        one(errs),
        (
            "spec.rollout.maxUnavailable".into(),
            "150% must be between 1% and 100%".into()
        )
    );
}

#[test]
fn max_unavailable_zero() {
    let errs = nodeimage_errors("maxUnavailable: 2", "maxUnavailable: 0");
    assert_eq!(
        one(errs),
        (
            "spec.rollout.maxUnavailable".into(),
            "0 must be greater than 0".into()
        )
    );
}

#[test]
fn window_start_equals_end() {
    let errs = nodeimage_errors("end: \"04:00\"", "end: \"22:00\"");
    assert_eq!(
        one(errs),
        (
            "spec.rollout.window".into(),
            "start and end are both 22:00 (an empty window never opens)".into()
        )
    );
}

#[test]
fn unknown_time_zone() {
    let errs = nodeimage_errors("Europe/Berlin", "Europe/Atlantis");
    assert_eq!(
        one(errs),
        (
            "spec.rollout.window.timeZone".into(),
            "\"Europe/Atlantis\" is not an IANA time zone".into()
        )
    );
}

#[test]
fn output_repository_with_a_tag() {
    let errs = nodeimage_errors(
        "registry.example.com/fleet/node",
        "registry.example.com/fleet/node:v1",
    );
    let (path, msg) = one(errs);
    assert_eq!(path, "spec.output.repository");
    assert!(msg.contains("without tag or digest"), "{msg}");
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let text = NODEIMAGE
        .replace(
            "linuxkit/sysctl:43ac1d39da329c3567fcb9689e5ca99de6d169b6",
            "linuxkit/sysctl",
        )
        .replace("maxUnavailable: 2", "maxUnavailable: 101%")
        .replace("Europe/Berlin", "Mars/Olympus");
    let errs = validate::nodeimage(&NodeImage::from_yaml(&text).unwrap().spec).unwrap_err();
    let paths: Vec<_> = errs.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.onboot[0].image",
            "spec.rollout.maxUnavailable",
            "spec.rollout.window.timeZone"
        ]
    );
}

#[test]
fn invalid_ports() {
    let errs = policy_errors("bindTcp: [8080]", "bindTcp: [8080, 0, 65536]");
    let got: Vec<_> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        got,
        [
            "spec.landlock.network.bindTcp[1]: port 0 is outside 1-65535",
            "spec.landlock.network.bindTcp[2]: port 65536 is outside 1-65535",
        ]
    );
}

#[test]
fn invalid_access_right() {
    let err = resource_from_yaml::<SecurityPolicy>(
        &POLICY.replace("read-file, execute", "read-file, exec"),
    )
    .unwrap_err();
    let f = err.fields().expect("a field error");
    assert_eq!(f.0.len(), 1);
    assert_eq!(f.0[0].path, "spec.landlock.filesystem[0].access[1]");
    assert!(
        f.0[0].message.contains("unknown variant `exec`"),
        "{}",
        f.0[0].message
    );
}

#[test]
fn relative_landlock_path() {
    let errs = policy_errors("paths: [\"/usr\"]", "paths: [\"usr\"]");
    assert_eq!(
        one(errs),
        (
            "spec.landlock.filesystem[0].paths[0]".into(),
            "\"usr\" must be an absolute path".into()
        )
    );
}

#[test]
fn unknown_syscall() {
    let errs = policy_errors("names: [ptrace]", "names: [ptrace, ptrac]");
    assert_eq!(
        one(errs),
        (
            "spec.seccomp.rules[0].names[1]".into(),
            "unknown system call \"ptrac\" (not on x86_64 or aarch64)".into()
        )
    );
}

#[test]
fn contradictory_seccomp_rules() {
    let errs = policy_errors(
        "action: kill-process}",
        "action: kill-process}\n      - {names: [ptrace], action: allow}",
    );
    let (path, msg) = one(errs);
    assert_eq!(path, "spec.seccomp.rules[1].names[0]");
    assert!(
        msg.contains("also in rules[0] with another action"),
        "{msg}"
    );
}

#[test]
fn errno_with_a_non_errno_action() {
    let errs = policy_errors("action: kill-process}", "action: kill-process, errno: 1}");
    assert_eq!(
        one(errs),
        (
            "spec.seccomp.rules[0].errno".into(),
            "is only valid with action: errno".into()
        )
    );
}

#[test]
fn masked_eq_without_value_two() {
    let errs = policy_errors(
        "action: kill-process}",
        "action: kill-process, args: [{index: 1, op: masked-eq, value: 4}]}",
    );
    assert_eq!(
        one(errs),
        (
            "spec.seccomp.rules[0].args[0].valueTwo".into(),
            "is required by op masked-eq".into()
        )
    );
}

#[test]
fn a_local_source_file_in_a_nodeimage() {
    let errs = nodeimage_errors(
        "  formats:",
        "  files: [{path: etc/motd, source: ./motd}]\n  formats:",
    );
    let (path, msg) = one(errs);
    assert_eq!(path, "spec.files[0].source");
    assert!(msg.contains("use `contents`"), "{msg}");
}

#[test]
fn hardening_exceptions_need_a_known_setting_and_a_reason() {
    let errs = nodeimage_errors(
        "  formats:",
        "  hardening:\n    kspp: enforce\n    exceptions:\n      - {setting: CONFIG_BUG, reason: \"vendor kernel\"}\n      - {setting: kernel.no_such_knob, reason: x}\n      - {setting: init_on_free, reason: \"  \"}\n      - {setting: CONFIG_BUG, reason: again}\n  formats:",
    );
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert_eq!(errs[0].path, "spec.hardening.exceptions[1].setting");
    assert!(errs[0].message.contains("kernel.no_such_knob"), "{errs:?}");
    assert_eq!(errs[1].path, "spec.hardening.exceptions[2].reason");
    assert_eq!(errs[2].path, "spec.hardening.exceptions[3].setting");
    assert!(errs[2].message.contains("duplicate"), "{errs:?}");
}

#[test]
fn hardening_apply_or_enforce_with_kexec_needs_the_kexec_exception() {
    let with = |hardening: &str| {
        NODEIMAGE
            .replace(
                "    maxUnavailable: 2",
                "    maxUnavailable: 2\n    method: kexec",
            )
            .replace(
                "  formats:",
                &format!("  hardening: {hardening}\n  formats:"),
            )
    };
    for mode in ["apply", "enforce"] {
        let ni = NodeImage::from_yaml(&with(&format!("{{kspp: {mode}}}"))).unwrap();
        let (path, msg) = one(validate::nodeimage(&ni.spec).expect_err("rejected").0);
        assert_eq!(path, "spec.hardening.kspp");
        assert!(
            msg.contains("spec.rollout.method: kexec")
                && msg.contains("kernel.kexec_load_disabled"),
            "{msg}"
        );
    }
    let excepted = with(
        "{kspp: apply, exceptions: [{setting: kernel.kexec_load_disabled, reason: \"rolled out by kexec\"}]}",
    );
    validate::nodeimage(&NodeImage::from_yaml(&excepted).unwrap().spec).unwrap();
    // `off` quoted: YAML 1.1 (and kubectl) read a bare `off` as false.
    for mode in ["\"off\"", "audit"] {
        let ni = NodeImage::from_yaml(&with(&format!("{{kspp: {mode}}}"))).unwrap();
        validate::nodeimage(&ni.spec).unwrap();
    }
}

#[test]
fn hardening_defaults_to_audit_and_rejects_unknown_modes() {
    use kitfleet_api::nodeimage::KsppMode;
    let ni = NodeImage::from_yaml(&NODEIMAGE.replace("  formats:", "  hardening: {}\n  formats:"))
        .unwrap();
    let h = ni.spec.hardening.expect("hardening");
    assert_eq!(h.kspp, KsppMode::Audit);
    assert!(h.is_default());
    let err = NodeImage::from_yaml(
        &NODEIMAGE.replace("  formats:", "  hardening: {kspp: strict}\n  formats:"),
    )
    .unwrap_err();
    let f = err.fields().expect("field errors");
    assert_eq!(f.0[0].path, "spec.hardening.kspp", "{f:?}");
}
