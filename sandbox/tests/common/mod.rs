//! Shared helpers of the real-kernel tests.
#![allow(dead_code)]

use kitfleet_sandbox::compile::{Options, compile};
use kitfleet_sandbox::seccomp::Arch;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The launcher built by cargo for this test run.
pub const LAUNCHER: &str = env!("CARGO_BIN_EXE_kitfleet-sandbox");

/// True when the test may run; false (after a message) when it must skip. Under CI=true a
/// missing privilege is a failure, not a skip.
pub fn privileged(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let abi = kitfleet_sandbox::landlock::sys::abi().unwrap_or(0);
    if root && abi >= 6 {
        return true;
    }
    let msg = format!("{what}: needs root and Landlock ABI >= 6 (root: {root}, ABI {abi})");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}");
    }
    eprintln!("SKIP {msg}");
    false
}

/// A world-readable temp dir (the setuid test runs the workload as nobody).
pub fn open_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("kitfleet-sbx-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// The probe program, built once per test binary with `gcc -static` into a world-readable
/// directory under cargo's per-target temp dir (nothing left in /tmp).
pub fn probe() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("kitfleet-sandbox-{}", env!("CARGO_CRATE_NAME")));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = dir.join("probe");
        let tmp = dir.join("probe.tmp");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/probe.c");
        let st = Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&tmp)
            .arg(&src)
            .status()
            .expect("gcc runs");
        assert!(st.success(), "gcc -static failed");
        std::fs::rename(&tmp, &out).unwrap();
        out
    })
}

/// Compiles `yaml` (one or more SecurityPolicy documents) into `dir/policy.json`.
pub fn write_policy(dir: &Path, yaml: &str) -> PathBuf {
    let src = dir.join("policy.yaml");
    std::fs::write(&src, yaml).unwrap();
    let policies = kitfleet_sandbox::cli::read_manifests(&[src]).unwrap();
    let c = compile(
        &policies,
        &Options {
            arches: vec![Arch::X86_64],
            report_socket: None,
        },
    )
    .unwrap();
    let out = dir.join("policy.json");
    std::fs::write(&out, c.policy.to_json()).unwrap();
    std::fs::write(dir.join("seccomp-profile.json"), c.profile.to_json()).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    out
}

/// Runs `kitfleet-sandbox exec --policy P -- argv`.
pub fn launch(policy: &Path, argv: &[&str]) -> Output {
    Command::new(LAUNCHER)
        .arg("exec")
        .arg("--policy")
        .arg(policy)
        .arg("--")
        .args(argv)
        .output()
        .unwrap()
}

/// The probe's verdict: `Ok(value)` or `Err(errno)`; panics when the probe died or misbehaved.
pub fn verdict(out: &Output) -> Result<i64, i32> {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    if let Some(v) = line.strip_prefix("ok ") {
        return Ok(v.trim().parse().unwrap());
    }
    if let Some(e) = line.strip_prefix("errno ") {
        return Err(e.trim().parse().unwrap());
    }
    panic!("probe gave no verdict: {out:?}");
}

/// The launcher's report line from stderr.
pub fn report(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("kitfleet-sandbox: "))
        .expect("report line");
    serde_json::from_str(line).unwrap()
}
