//! Regression tests for the security review's findings (issue 12, item 5), each reproduced with
//! the tiny "malicious" probe on the real kernel. Need root and Landlock; fail under CI=true
//! when either is missing.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

const EACCES: i32 = 13;
const EPERM: i32 = 1;
const EAFNOSUPPORT: i32 = 97;

fn policy(dir: &Path, seccomp: &str, landlock: &str) -> std::path::PathBuf {
    let yaml = format!(
        "apiVersion: kitfleet.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: review, namespace: ns}}\nspec:\n{landlock}{seccomp}"
    );
    write_policy(dir, &yaml)
}

fn run(policy: &Path, args: &[&str]) -> std::process::Output {
    let argv: Vec<&str> = std::iter::once(probe().to_str().unwrap())
        .chain(args.iter().copied())
        .collect();
    launch(policy, &argv)
}

#[test]
fn an_int_argument_with_upper_bits_set_still_matches_its_rule() {
    if !privileged("int arguments") {
        return;
    }
    let conf = open_dir();
    let p = policy(
        conf.path(),
        "  seccomp:\n    defaultAction: allow\n    rules:\n      - {names: [socket], action: errno, errno: 97, args: [{index: 0, op: eq, value: 2}]}\n",
        "",
    );
    let direct = Command::new(probe())
        .args(["syscall", "41", "0x100000002", "1", "0"])
        .output()
        .unwrap();
    assert!(
        verdict(&direct).is_ok(),
        "control: the kernel makes an AF_INET socket"
    );
    assert_eq!(
        verdict(&run(&p, &["syscall", "41", "2", "1", "0"])),
        Err(EAFNOSUPPORT)
    );
    assert_eq!(
        verdict(&run(&p, &["syscall", "41", "0x100000002", "1", "0"])),
        Err(EAFNOSUPPORT),
        "socket(0x1_00000002, ...) is socket(AF_INET, ...) to the kernel"
    );
    assert!(
        verdict(&run(&p, &["syscall", "41", "1", "1", "0"])).is_ok(),
        "AF_UNIX"
    );
}

#[test]
fn numbers_the_table_does_not_name_get_the_default_action() {
    if !privileged("unassigned numbers") {
        return;
    }
    let conf = open_dir();
    let p = policy(
        conf.path(),
        "  seccomp:\n    defaultAction: errno\n    base: runtime/default\n",
        "",
    );
    // 337-423 follow uprobe (336, allowed by the base) and name no syscall in the table.
    for nr in ["337", "400", "423"] {
        let out = run(&p, &["syscall", nr]);
        assert_eq!(
            verdict(&out),
            Err(EPERM),
            "syscall {nr} under default-deny: {out:?}"
        );
    }
    assert!(
        verdict(&run(&p, &["syscall", "39"])).is_ok(),
        "getpid is in the base"
    );
}

#[test]
fn rule_paths_that_are_symlinks_grant_nothing() {
    if !privileged("symlinked rule paths") {
        return;
    }
    let (rw, secret, conf) = (open_dir(), open_dir(), open_dir());
    let link = rw.path().join("data");
    std::os::unix::fs::symlink(secret.path(), &link).unwrap();
    let tools = probe().parent().unwrap().display().to_string();
    let landlock = |required: bool| {
        format!(
            "  landlock:\n    filesystem:\n      - {{paths: [/usr, {tools}], access: [execute, read-file, read-dir]}}\n      - {{paths: [{}, {}/sub], access: [write-file, make-reg], required: {required}}}\n",
            link.display(),
            link.display()
        )
    };
    std::fs::create_dir(secret.path().join("sub")).unwrap();
    let p = policy(conf.path(), "", &landlock(false));
    let target = secret.path().join("planted").display().to_string();
    let out = run(&p, &["write", &target]);
    assert_eq!(
        verdict(&out),
        Err(EACCES),
        "the link's target must not become writable: {out:?}"
    );
    let sub = secret.path().join("sub/planted").display().to_string();
    assert_eq!(
        verdict(&run(&p, &["write", &sub])),
        Err(EACCES),
        "nor through a linked parent"
    );
    let r = report(&out);
    for i in [2, 3] {
        let rule = &r["landlock"][0]["rules"][i];
        assert_eq!(rule["status"], "dropped", "{r}");
        assert!(rule["reason"].as_str().unwrap().contains("symlink"), "{r}");
    }
    assert!(!secret.path().join("planted").exists());
    let p = policy(conf.path(), "", &landlock(true));
    let out = run(&p, &["write", &target]);
    assert_eq!(
        out.status.code(),
        Some(122),
        "a required symlinked path refuses: {out:?}"
    );
}

#[test]
fn the_report_says_enforced_only_after_the_filters_are_installed() {
    if !privileged("report after install") {
        return;
    }
    let conf = open_dir();
    let p = policy(conf.path(), "  seccomp:\n    defaultAction: allow\n", "");
    // A program the kernel refuses makes the installation fail: it allows write(2), so the
    // report could go out under it, but a load from offset 1000 (beyond seccomp_data) on
    // another path is invalid.
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["seccomp"]["x86_64"][0]["program"] = serde_json::json!([
        [0x20, 0, 0, 0],
        [0x15, 0, 1, libc::SYS_write],
        [6, 0, 0, 0x7fff_0000u32],
        [0x20, 0, 0, 1000],
        [6, 0, 0, 0x7fff_0000u32]
    ]);
    std::fs::write(&p, v.to_string()).unwrap();
    let out = run(&p, &["euid"]);
    assert_eq!(out.status.code(), Some(123), "{out:?}");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("\"event\":\"enforced\""), "{text}");
    let r = report(&out);
    assert_eq!(r["event"], "error", "{r}");
    assert!(
        r["reason"].as_str().unwrap().contains("seccomp filter"),
        "{r}"
    );
}

#[test]
fn compile_creates_its_output_directory() {
    let conf = open_dir();
    let src = conf.path().join("p.yaml");
    std::fs::write(
        &src,
        "apiVersion: kitfleet.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  seccomp: {defaultAction: allow}\n",
    )
    .unwrap();
    let out_dir = conf.path().join("new/out");
    let out = Command::new(LAUNCHER)
        .arg("compile")
        .arg("-o")
        .arg(&out_dir)
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out_dir.join("policy.json").is_file() && out_dir.join("seccomp-profile.json").is_file()
    );
}
