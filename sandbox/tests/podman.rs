//! The emitted OCI profile in a real runtime: Debian's podman (runc, cgroupfs), a busybox-static
//! image made with `podman import`, the static launcher and the policy bind-mounted read-only at
//! `/.kitfleet`, `--security-opt seccomp=<emitted profile>`.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const POLICY: &str = r#"apiVersion: kitfleet.dev/v1alpha1
kind: SecurityPolicy
metadata: {name: web, namespace: shop}
spec:
  landlock:
    filesystem:
      - {paths: [/bin, /.kitfleet], access: [execute, read-file, read-dir]}
      - {paths: [/tmp], access: [read-file, read-dir, write-file, make-reg, truncate, remove-file]}
  seccomp:
    defaultAction: errno
    base: runtime/default
    rules:
      - {names: [mkdir, mkdirat], action: errno, errno: 38}
"#;

/// No base list: the profile is the policy's own short list plus what the launcher and runc's
/// init need, so runc starting at all proves `LAUNCHER_NEEDS` is enough.
const STRICT: &str = r#"apiVersion: kitfleet.dev/v1alpha1
kind: SecurityPolicy
metadata: {name: strict, namespace: shop}
spec:
  landlock:
    filesystem:
      - {paths: [/bin, /.kitfleet], access: [execute, read-file, read-dir]}
      - {paths: [/tmp], access: [read-file, read-dir, write-file, make-reg, make-dir]}
  seccomp:
    defaultAction: errno
    rules:
      - names: [execve, arch_prctl, brk, exit_group, getrandom, getuid, mprotect, prctl, prlimit64, readlink, rseq,
                set_robust_list, set_tid_address, getpid, getppid, rt_sigaction, openat, close, dup2, fcntl, newfstatat,
                uname, write, read, mmap, munmap, wait4, clone, vfork]
        action: allow
"#;

/// Builds the statically linked launcher (RECIPES.md: crt-static needs an explicit --target),
/// unless KITFLEET_SANDBOX_STATIC names one.
fn static_launcher() -> PathBuf {
    if let Ok(p) = std::env::var("KITFLEET_SANDBOX_STATIC") {
        return PathBuf::from(p);
    }
    let target = "x86_64-unknown-linux-gnu";
    let st = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "kitfleet-sandbox",
            "--bin",
            "kitfleet-sandbox",
            "--target",
            target,
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .status()
        .expect("cargo runs");
    assert!(st.success(), "static build failed");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target_dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or(manifest.join("../target"));
    let bin = target_dir.join(target).join("release/kitfleet-sandbox");
    let file = Command::new("file").arg(&bin).output().unwrap();
    assert!(
        String::from_utf8_lossy(&file.stdout).contains("static"),
        "{file:?}"
    );
    bin
}

struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("kitfleet-podman-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("tmp")).unwrap();
        std::fs::write(
            d.join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n[network]\nnetwork_backend = \"cni\"\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n",
        )
        .unwrap();
        std::fs::write(
            d.join("storage.conf"),
            format!("[storage]\ndriver = \"vfs\"\nrunroot = \"{0}/runroot\"\ngraphroot = \"{0}/root\"\n", d.display()),
        )
        .unwrap();
        Podman { dir }
    }

    fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("TMPDIR", d.join("tmp"));
        c
    }

    fn import_busybox(&self) {
        let rootfs = self.dir.path().join("rootfs");
        for sub in ["bin", "tmp", "etc", ".kitfleet"] {
            std::fs::create_dir_all(rootfs.join(sub)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "echo", "cat", "mkdir", "ls"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .output()
            .unwrap();
        assert!(tar.status.success());
        let mut import = self
            .cmd()
            .args(["import", "-", "localhost/kitfleet-bb:1"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(import.stdin.as_mut().unwrap(), &tar.stdout).unwrap();
        assert!(import.wait().unwrap().success(), "podman import");
    }

    fn run(&self, profile: &Path, kit: &Path, argv: &[&str]) -> Output {
        self.cmd()
            .args(["run", "--rm", "--network", "none", "--security-opt"])
            .arg(format!("seccomp={}", profile.display()))
            .arg("-v")
            .arg(format!("{}:/.kitfleet:ro", kit.display()))
            .arg("localhost/kitfleet-bb:1")
            .args(argv)
            .output()
            .unwrap()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "-af"]).output();
        let _ = self.cmd().args(["rmi", "-af"]).output();
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_emitted_profile_runs_the_launcher_under_podman_and_runc() {
    if !privileged("podman") {
        return;
    }
    if !(have("podman") && have("runc")) {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "podman and runc are required under CI"
        );
        eprintln!("SKIP podman: podman or runc missing");
        return;
    }
    let launcher = static_launcher();
    let pm = Podman::new();
    pm.import_busybox();
    let kit = pm.dir.path().join("kit");
    std::fs::create_dir(&kit).unwrap();
    write_policy(&kit, POLICY);
    std::fs::copy(&launcher, kit.join("kitfleet-sandbox")).unwrap();
    let profile = pm.dir.path().join("seccomp-profile.json");
    std::fs::rename(kit.join("seccomp-profile.json"), &profile).unwrap();

    let script = "echo allowed > /tmp/a && cat /tmp/a; echo x > /etc/denied; echo write=$?; mkdir /tmp/d; echo mkdir=$?";
    let out = pm.run(
        &profile,
        &kit,
        &[
            "/.kitfleet/kitfleet-sandbox",
            "exec",
            "--policy",
            "/.kitfleet/policy.json",
            "--",
            "/bin/sh",
            "-c",
            script,
        ],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("allowed\n"), "{stdout}");
    assert!(stdout.contains("write=1"), "{stdout}");
    assert!(
        stderr.contains("can't create /etc/denied: Permission denied"),
        "{stderr}"
    );
    assert!(
        stdout.contains("mkdir=1") && stderr.contains("Function not implemented"),
        "{stdout} {stderr}"
    );
    let report = report(&out);
    assert_eq!(report["event"], "enforced");
    assert_eq!(report["pid"], 1);
    assert_eq!(report["landlock"][0]["applied"], true);

    // Without the launcher (what `kubectl exec` gets) the Localhost profile alone still applies.
    let out = pm.run(
        &profile,
        &kit,
        &[
            "/bin/sh",
            "-c",
            "mkdir /tmp/d; echo mkdir=$?; echo x > /etc/ok; echo write=$?",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("mkdir=1") && stdout.contains("write=0"),
        "{out:?}"
    );

    // A strict policy without the base list.
    let kit2 = pm.dir.path().join("kit2");
    std::fs::create_dir(&kit2).unwrap();
    write_policy(&kit2, STRICT);
    std::fs::copy(&launcher, kit2.join("kitfleet-sandbox")).unwrap();
    let strict = kit2.join("seccomp-profile.json");
    let exec = [
        "/.kitfleet/kitfleet-sandbox",
        "exec",
        "--policy",
        "/.kitfleet/policy.json",
        "--",
    ];
    let argv = |tail: &[&'static str]| exec.iter().chain(tail).copied().collect::<Vec<_>>();
    let out = pm.run(
        &strict,
        &kit2,
        &argv(&["/bin/sh", "-c", "echo strict > /tmp/a && cat /tmp/a"]),
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == "strict\n",
        "{out:?}"
    );
    let out = pm.run(&strict, &kit2, &argv(&["/bin/mkdir", "/tmp/d"]));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{out:?}"
    );
}
