//! Real-kernel tests of the launcher: Landlock (ABI 7 here) and seccomp enforced on tiny
//! "malicious" programs. Need root and Landlock; fail under CI=true when either is missing.

mod common;

use common::*;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const EACCES: i32 = 13;
const EPERM: i32 = 1;
const EXDEV: i32 = 18;
const SIGSYS: i32 = 31;

struct Sandbox {
    _dirs: Vec<tempfile::TempDir>,
    rw: PathBuf,
    forbidden: PathBuf,
    policy: PathBuf,
    connect_ok: u16,
    bind_ok: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Read/exec of /usr, /lib, /bin and the probe's dir; read/write of one temp dir (no `refer`).
fn sandbox(extra_spec: &str, connect_ok: u16) -> Sandbox {
    let (rw, forbidden, conf) = (open_dir(), open_dir(), open_dir());
    let tools = probe().parent().unwrap().display().to_string();
    let bind_ok = free_port();
    let yaml = format!(
        r#"apiVersion: kitfleet.dev/v1alpha1
kind: SecurityPolicy
metadata: {{name: test, namespace: sandbox}}
spec:
{extra_spec}
  landlock:
    filesystem:
      - paths: [/usr, /lib, /bin, {tools}]
        access: [execute, read-file, read-dir]
      - paths: [{rw}]
        access: [read-file, read-dir, write-file, make-reg, make-dir, remove-file, remove-dir, truncate]
    network: {{bindTcp: [{bind_ok}], connectTcp: [{connect_ok}]}}
    scopes: [signal, abstract-unix-socket]
  seccomp:
    defaultAction: errno
    base: runtime/default
    rules:
      - {{names: [getpgid], action: errno, errno: 42, args: [{{index: 0, op: eq, value: 1}}]}}
      - {{names: [lseek], action: errno, errno: 75, args: [{{index: 1, op: gt, value: 4294967296}}]}}
      - {{names: [getppid], action: kill-process}}
      - {{names: [getsid], action: trap}}
"#,
        rw = rw.path().display(),
    );
    let policy = write_policy(conf.path(), &yaml);
    Sandbox {
        rw: rw.path().to_path_buf(),
        forbidden: forbidden.path().to_path_buf(),
        policy,
        connect_ok,
        bind_ok,
        _dirs: vec![rw, forbidden, conf],
    }
}

impl Sandbox {
    fn run(&self, args: &[&str]) -> std::process::Output {
        let probe = probe().to_str().unwrap();
        let argv: Vec<&str> = std::iter::once(probe).chain(args.iter().copied()).collect();
        launch(&self.policy, &argv)
    }
    fn probe(&self, args: &[&str]) -> Result<i64, i32> {
        verdict(&self.run(args))
    }
    fn rw(&self, name: &str) -> String {
        self.rw.join(name).display().to_string()
    }
    fn forbidden(&self, name: &str) -> String {
        self.forbidden.join(name).display().to_string()
    }
}

fn direct(args: &[&str]) -> Result<i64, i32> {
    verdict(&Command::new(probe()).args(args).output().unwrap())
}

#[test]
fn filesystem_rules_allow_the_temp_dir_and_deny_the_rest() {
    if !privileged("filesystem") {
        return;
    }
    let s = sandbox("", 1);
    std::fs::write(s.forbidden.join("existing"), "secret").unwrap();
    std::fs::create_dir(s.rw.join("d1")).unwrap();
    std::fs::create_dir(s.rw.join("d2")).unwrap();
    std::fs::write(s.rw.join("d1/f"), "x").unwrap();
    // Allowed.
    assert_eq!(s.probe(&["write", &s.rw("a")]), Ok(1));
    assert_eq!(s.probe(&["read", &s.rw("a")]), Ok(1));
    assert_eq!(s.probe(&["truncate", &s.rw("a")]), Ok(0));
    assert_eq!(s.probe(&["rename", &s.rw("a"), &s.rw("b")]), Ok(0));
    assert_eq!(s.probe(&["link", &s.rw("d1/f"), &s.rw("d1/g")]), Ok(0));
    assert_eq!(s.probe(&["unlink", &s.rw("b")]), Ok(0));
    let t = s.run(&["exec", "/bin/true"]);
    assert!(t.status.success(), "exec of an allowed binary: {t:?}");
    // Denied: create, write, truncate, unlink, rename into or out of a forbidden dir, read it.
    assert_eq!(s.probe(&["write", &s.forbidden("new")]), Err(EACCES));
    assert_eq!(s.probe(&["write", &s.forbidden("existing")]), Err(EACCES));
    assert_eq!(
        s.probe(&["truncate", &s.forbidden("existing")]),
        Err(EACCES)
    );
    assert_eq!(s.probe(&["unlink", &s.forbidden("existing")]), Err(EACCES));
    assert_eq!(s.probe(&["read", &s.forbidden("existing")]), Err(EACCES));
    assert_eq!(s.probe(&["mkdir", &s.forbidden("dir")]), Err(EACCES));
    assert_eq!(
        s.probe(&["rename", &s.rw("d1/g"), &s.forbidden("g")]),
        Err(EACCES)
    );
    assert_eq!(
        s.probe(&["rename", &s.forbidden("existing"), &s.rw("stolen")]),
        Err(EACCES)
    );
    // Across directories without the refer right, even inside the writable tree.
    assert_eq!(
        s.probe(&["rename", &s.rw("d1/f"), &s.rw("d2/f")]),
        Err(EXDEV)
    );
    assert_eq!(s.probe(&["link", &s.rw("d1/f"), &s.rw("d2/l")]), Err(EXDEV));
    // Exec of a binary outside the allowed paths.
    std::fs::copy(probe(), s.forbidden.join("probe")).unwrap();
    assert_eq!(
        s.probe(&["exec", &s.forbidden("probe"), "euid"]),
        Err(EACCES)
    );
    // Nothing leaked through.
    assert_eq!(
        std::fs::read_to_string(s.forbidden.join("existing")).unwrap(),
        "secret"
    );
    assert!(!s.forbidden.join("new").exists() && !s.forbidden.join("g").exists());
    assert!(s.rw.join("d1/f").exists() && !s.rw.join("d2/f").exists());
}

#[test]
fn tcp_bind_and_connect_are_limited_to_the_listed_ports() {
    if !privileged("tcp") {
        return;
    }
    let ok = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let s = sandbox("", ok.local_addr().unwrap().port());
    let other_port = other.local_addr().unwrap().port().to_string();
    assert_eq!(
        direct(&["connect", &other_port]),
        Ok(0),
        "control: reachable outside the sandbox"
    );
    assert_eq!(s.probe(&["connect", &s.connect_ok.to_string()]), Ok(0));
    assert_eq!(s.probe(&["connect", &other_port]), Err(EACCES));
    assert_eq!(s.probe(&["bind", &s.bind_ok.to_string()]), Ok(0));
    assert_eq!(s.probe(&["bind", &free_port().to_string()]), Err(EACCES));
}

#[test]
fn signals_and_abstract_sockets_outside_the_sandbox_are_scoped_out() {
    if !privileged("scopes") {
        return;
    }
    use std::os::linux::net::SocketAddrExt;
    let s = sandbox("", 1);
    let mut outside = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = outside.id().to_string();
    assert_eq!(direct(&["kill", &pid]), Ok(0), "control");
    assert_eq!(s.probe(&["kill", &pid]), Err(EPERM));
    outside.kill().unwrap();
    outside.wait().unwrap();
    let name = format!("kitfleet-sbx-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _l = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    assert_eq!(direct(&["abstract", &name]), Ok(0), "control");
    assert_eq!(s.probe(&["abstract", &name]), Err(EPERM));
}

#[test]
fn seccomp_actions_and_argument_conditions() {
    if !privileged("seccomp") {
        return;
    }
    let s = sandbox("", 1);
    assert!(
        s.probe(&["syscall", "121", "0"]).is_ok(),
        "getpgid(0) allowed"
    );
    assert_eq!(
        s.probe(&["syscall", "121", "1"]),
        Err(42),
        "getpgid(1): errno rule with a condition"
    );
    assert_eq!(s.probe(&["lseek", "5"]), Ok(5));
    assert_eq!(
        s.probe(&["lseek", "4294967296"]),
        Ok(4294967296),
        "equal is not greater"
    );
    assert_eq!(
        s.probe(&["lseek", "8589934592"]),
        Err(75),
        "64-bit argument compared on both halves"
    );
    assert!(
        direct(&["syscall", "101", "0"]).is_ok(),
        "control: ptrace(TRACEME)"
    );
    assert_eq!(
        s.probe(&["syscall", "101", "0"]),
        Err(EPERM),
        "ptrace falls to the errno default"
    );
    let killed = s.run(&["syscall", "110"]);
    assert_eq!(
        killed.status.signal(),
        Some(SIGSYS),
        "getppid: kill-process {killed:?}"
    );
    let trapped = s.run(&["syscall", "124", "0"]);
    assert_eq!(
        trapped.status.signal(),
        Some(SIGSYS),
        "getsid: trap {trapped:?}"
    );
}

#[test]
fn i386_int80_from_a_64_bit_process_is_killed() {
    if !privileged("int80") {
        return;
    }
    let s = sandbox("", 1);
    let pid = direct(&["int80"]).expect("control: int 0x80 works on this kernel");
    assert!(pid > 0);
    let out = s.run(&["int80"]);
    assert_eq!(out.status.signal(), Some(SIGSYS), "{out:?}");
    assert!(out.stdout.is_empty());
}

#[test]
fn setuid_binaries_gain_nothing() {
    if !privileged("setuid") {
        return;
    }
    let s = sandbox("", 1);
    let suid = probe().parent().unwrap().join("suid-probe");
    std::fs::copy(probe(), &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let nobody = |cmd: &mut Command| -> Result<i64, i32> {
        verdict(&cmd.uid(65534).gid(65534).output().unwrap())
    };
    assert_eq!(
        nobody(Command::new(&suid).arg("euid")),
        Ok(0),
        "control: setuid root works outside"
    );
    let mut sandboxed = Command::new(LAUNCHER);
    sandboxed
        .arg("exec")
        .arg("--policy")
        .arg(&s.policy)
        .arg("--")
        .arg(&suid)
        .arg("euid");
    assert_eq!(nobody(&mut sandboxed), Ok(65534));
    std::fs::remove_file(suid).unwrap();
}

#[test]
fn a_policy_requiring_abi_8_refuses_to_run_the_workload() {
    if !privileged("abi") {
        return;
    }
    let s = sandbox("  mode: enforce", 1);
    // What the compiler writes for `minAbi: 8` (the kernel here offers 7).
    let mut p: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&s.policy).unwrap()).unwrap();
    p["landlock"][0]["minAbi"] = 8.into();
    std::fs::write(&s.policy, p.to_string()).unwrap();
    let marker = s.rw("marker");
    let out = s.run(&["write", &marker]);
    assert_eq!(out.status.code(), Some(121), "{out:?}");
    assert!(!Path::new(&marker).exists(), "the workload must not run");
    let r = report(&out);
    assert_eq!(r["event"], "refused");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("minAbi is 8 but this kernel offers Landlock ABI 7"),
        "{r}"
    );
    let check = Command::new(LAUNCHER)
        .args(["check", "--policy"])
        .arg(&s.policy)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(121));
    assert!(String::from_utf8_lossy(&check.stdout).contains("REFUSED"));
}

#[test]
fn missing_paths_are_dropped_unless_required() {
    if !privileged("paths") {
        return;
    }
    let conf = open_dir();
    let tools = probe().parent().unwrap().display().to_string();
    let yaml = |required: bool| {
        format!(
            "apiVersion: kitfleet.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n  landlock:\n    filesystem:\n      - {{paths: [/usr, /lib, {tools}], access: [execute, read-file, read-dir]}}\n      - {{paths: [/no/such/dir], access: [read-file], required: {required}}}\n"
        )
    };
    let policy = write_policy(conf.path(), &yaml(false));
    let out = launch(&policy, &[probe().to_str().unwrap(), "euid"]);
    assert_eq!(verdict(&out), Ok(0));
    let r = report(&out);
    let rule = &r["landlock"][0]["rules"][3];
    assert_eq!(rule["path"], "/no/such/dir");
    assert_eq!(rule["status"], "dropped");
    assert_eq!(rule["field"], "spec.landlock.filesystem[1]");
    let policy = write_policy(conf.path(), &yaml(true));
    let out = launch(&policy, &[probe().to_str().unwrap(), "euid"]);
    assert_eq!(out.status.code(), Some(122), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(
        report(&out)["reason"]
            .as_str()
            .unwrap()
            .contains("required path /no/such/dir")
    );
}

#[test]
fn audit_mode_applies_no_landlock_and_logs_instead_of_denying() {
    if !privileged("audit") {
        return;
    }
    let s = sandbox("  mode: audit", 1);
    let out = s.run(&["write", &s.forbidden("f")]);
    assert_eq!(verdict(&out), Ok(1));
    let r = report(&out);
    assert_eq!(r["landlock"][0]["applied"], false);
    assert!(
        r["landlock"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("audit mode")
    );
    assert!(
        s.probe(&["syscall", "110"]).is_ok(),
        "getppid's kill rule only logs"
    );
    assert!(
        s.probe(&["syscall", "101", "0"]).is_ok(),
        "ptrace's errno default only logs"
    );
}

#[test]
fn enforce_and_log_denies_and_asks_for_logs() {
    if !privileged("enforce-and-log") {
        return;
    }
    let s = sandbox("  mode: enforce-and-log", 1);
    let out = s.run(&["write", &s.forbidden("f")]);
    assert_eq!(verdict(&out), Err(EACCES));
    let r = report(&out);
    assert_eq!(r["landlock"][0]["logNewExec"], true);
    assert_eq!(r["seccomp"]["layers"][0]["log"], true);
    assert_eq!(s.probe(&["syscall", "101", "0"]), Err(EPERM));
}

#[test]
fn stacked_policies_intersect() {
    if !privileged("stacking") {
        return;
    }
    let (a, b, conf) = (open_dir(), open_dir(), open_dir());
    let tools = probe().parent().unwrap().display().to_string();
    let doc = |name: &str, dirs: &str, errno_rule: &str| {
        format!(
            "apiVersion: kitfleet.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  landlock:\n    filesystem:\n      - {{paths: [/usr, /lib, {tools}], access: [execute, read-file, read-dir]}}\n      - {{paths: [{dirs}], access: [write-file, make-reg]}}\n  seccomp:\n    defaultAction: allow\n    rules: [{{names: [{errno_rule}], action: errno, errno: 7}}]\n"
        )
    };
    let (pa, pb) = (
        a.path().display().to_string(),
        b.path().display().to_string(),
    );
    let yaml = format!(
        "{}---\n{}",
        doc("one", &format!("{pa}, {pb}"), "getpgid"),
        doc("two", &pa, "getsid")
    );
    let policy = write_policy(conf.path(), &yaml);
    let run = |args: &[&str]| {
        let argv: Vec<&str> = std::iter::once(probe().to_str().unwrap())
            .chain(args.iter().copied())
            .collect();
        verdict(&launch(&policy, &argv))
    };
    assert_eq!(
        run(&["write", &a.path().join("f").display().to_string()]),
        Ok(1)
    );
    assert_eq!(
        run(&["write", &b.path().join("f").display().to_string()]),
        Err(EACCES),
        "policy two denies b"
    );
    assert_eq!(run(&["syscall", "121", "0"]), Err(7), "policy one's rule");
    assert_eq!(run(&["syscall", "124", "0"]), Err(7), "policy two's rule");
}

#[test]
fn report_goes_to_the_configured_socket() {
    if !privileged("report") {
        return;
    }
    use std::io::BufRead;
    let s = sandbox("", 1);
    let dir = open_dir();
    let sock = dir.path().join("report.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let out = Command::new(LAUNCHER)
        .args(["exec", "--policy"])
        .arg(&s.policy)
        .arg("--report-socket")
        .arg(&sock)
        .arg("--")
        .arg(probe())
        .arg("euid")
        .output()
        .unwrap();
    assert_eq!(verdict(&out), Ok(0));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("kitfleet-sandbox:"),
        "nothing on stderr: {out:?}"
    );
    let (conn, _) = listener.accept().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(conn).read_line(&mut line).unwrap();
    let r: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(r["event"], "enforced");
    assert_eq!(
        r["landlockAbi"],
        kitfleet_sandbox::landlock::sys::abi().unwrap()
    );
    assert_eq!(r["policies"][0], "sandbox/test");
    assert_eq!(r["seccomp"]["arch"], "x86_64");
}

#[test]
fn exec_failures_have_their_exit_codes() {
    if !privileged("exit codes") {
        return;
    }
    let s = sandbox("", 1);
    let out = launch(&s.policy, &["/no/such/program"]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let out = launch(Path::new("/no/such/policy.json"), &["/bin/true"]);
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(report(&out)["event"], "error");
}

#[test]
fn an_unreachable_report_socket_falls_back_to_stderr() {
    if !privileged("report fallback") {
        return;
    }
    let s = sandbox("", 1);
    let out = Command::new(LAUNCHER)
        .args(["exec", "--policy"])
        .arg(&s.policy)
        .args(["--report-socket", "/no/such/report.sock", "--"])
        .arg(probe())
        .arg("euid")
        .output()
        .unwrap();
    assert_eq!(verdict(&out), Ok(0), "reporting never blocks the workload");
    let r = report(&out);
    assert_eq!(r["event"], "enforced");
    assert!(
        r["reportError"]
            .as_str()
            .unwrap()
            .starts_with("report socket /no/such/report.sock"),
        "{r}"
    );
}

#[test]
fn check_lists_every_rule() {
    if !privileged("check") {
        return;
    }
    let s = sandbox("", 1);
    let out = Command::new(LAUNCHER)
        .args(["check", "--policy"])
        .arg(&s.policy)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("layer sandbox/test (enforce, best effort):"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "spec.landlock.filesystem[1] {}: enforced [",
            s.rw.display()
        )),
        "{text}"
    );
    assert!(text.contains("tcp ports: enforced"), "{text}");
    assert!(
        text.contains("seccomp sandbox/test: ") && text.contains(": loads"),
        "{text}"
    );
    assert!(text.ends_with("result: the workload would run\n"), "{text}");
}

#[test]
fn a_filter_that_denies_write_still_gets_the_exec_exit_code() {
    if !privileged("exit codes under a filter") {
        return;
    }
    let conf = open_dir();
    let yaml = "apiVersion: kitfleet.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: mute, namespace: ns}\nspec:\n  seccomp:\n    defaultAction: allow\n    rules: [{names: [write], action: errno}]\n";
    let policy = write_policy(conf.path(), yaml);
    let out = launch(&policy, &["/no/such/program"]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let text = String::from_utf8_lossy(&out.stderr);
    // The filter would stop the report's write, so it goes out just before the filter.
    assert!(
        text.contains("\"event\":\"enforcing\"") && !text.contains("panicked"),
        "{text}"
    );
}
