//! `cargo bench -p kitfleet-sandbox`: launcher overhead and per-syscall filter cost, side by side
//! in one run. Needs root (Landlock, seccomp), gcc-less; links Debian's libseccomp (libseccomp-dev).
//!
//! Every filter implements the same policy: the runtime-default allow list (~300 x86_64 calls),
//! `getpgid` allowed only with argument 0 == 0, everything else EPERM.

use kitfleet_sandbox::base;
use kitfleet_sandbox::seccomp::{
    Action, Arch, CmpOp, Cond, FilterSpec, SyscallRule, generate, install::install,
};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::process::{Command, Stdio};
use std::time::Instant;

const DENIED: [&str; 5] = ["ptrace", "mount", "bpf", "keyctl", "unshare"];
/// Calls per timed run; short runs are rarely preempted.
const ITERS: u32 = 2_000;
/// Timed runs per syscall and filter.
const RUNS: u32 = 300;

/// The allow list as (number, condition on arg 0 == 0?) pairs.
fn allow_list() -> Vec<(u32, bool)> {
    let arch = Arch::X86_64;
    let mut out: Vec<(u32, bool)> = base::runtime_default(arch)
        .into_iter()
        .filter(|(_, r)| r.action == Action::Allow && r.clauses.is_empty())
        .map(|(nr, _)| (nr, false))
        .collect();
    let getpgid = arch.lookup("getpgid").unwrap();
    out.retain(|(nr, _)| *nr != getpgid);
    out.push((getpgid, true));
    out.sort();
    out
}

fn kitfleet_filter() -> Vec<kitfleet_sandbox::seccomp::bpf::SockFilter> {
    let eq0 = Cond::wide(0, CmpOp::Eq, 0, 0);
    let syscalls: BTreeMap<u32, SyscallRule> = allow_list()
        .into_iter()
        .map(|(nr, cond)| {
            let rule = if cond {
                SyscallRule {
                    clauses: vec![vec![eq0]],
                    action: Action::Allow,
                    otherwise: Action::Errno(1),
                }
            } else {
                SyscallRule::always(Action::Allow)
            };
            (nr, rule)
        })
        .collect();
    generate(&FilterSpec {
        arch: Arch::X86_64,
        default: Action::Errno(1),
        syscalls,
    })
}

fn seccompiler_filter() -> seccompiler::BpfProgram {
    use seccompiler::{
        SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    };
    let rules = allow_list()
        .into_iter()
        .map(|(nr, cond)| {
            let rules = if cond {
                let c =
                    SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, 0).unwrap();
                vec![SeccompRule::new(vec![c]).unwrap()]
            } else {
                vec![]
            };
            (nr as i64, rules)
        })
        .collect();
    let f = SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Errno(1),
        seccompiler::SeccompAction::Allow,
        seccompiler::TargetArch::x86_64,
    )
    .unwrap();
    f.try_into().unwrap()
}

#[repr(C)]
struct ScmpArgCmp {
    arg: libc::c_uint,
    op: libc::c_int,
    datum_a: u64,
    datum_b: u64,
}

#[link(name = "seccomp")]
unsafe extern "C" {
    fn seccomp_init(def_action: u32) -> *mut libc::c_void;
    fn seccomp_attr_set(ctx: *mut libc::c_void, attr: libc::c_int, value: u32) -> libc::c_int;
    fn seccomp_rule_add_array(
        ctx: *mut libc::c_void,
        action: u32,
        syscall: libc::c_int,
        arg_cnt: libc::c_uint,
        args: *const ScmpArgCmp,
    ) -> libc::c_int;
    fn seccomp_load(ctx: *const libc::c_void) -> libc::c_int;
}

/// libseccomp 2.5 with `SCMP_FLTATR_CTL_OPTIMIZE = 2` (binary tree).
fn load_libseccomp() -> Result<(), String> {
    const ALLOW: u32 = 0x7fff_0000;
    const EPERM: u32 = 0x0005_0001;
    const OPTIMIZE: libc::c_int = 8;
    const CMP_EQ: libc::c_int = 4;
    // SAFETY: plain libseccomp API use on a context we own; pointers are valid for each call.
    unsafe {
        let ctx = seccomp_init(EPERM);
        if ctx.is_null() || seccomp_attr_set(ctx, OPTIMIZE, 2) != 0 {
            return Err("seccomp_init/attr".into());
        }
        for (nr, cond) in allow_list() {
            let c = ScmpArgCmp {
                arg: 0,
                op: CMP_EQ,
                datum_a: 0,
                datum_b: 0,
            };
            let (n, p) = if cond {
                (1, &c as *const ScmpArgCmp)
            } else {
                (0, std::ptr::null())
            };
            if seccomp_rule_add_array(ctx, ALLOW, nr as libc::c_int, n, p) != 0 {
                return Err(format!("seccomp_rule_add {nr}"));
            }
        }
        if seccomp_load(ctx) != 0 {
            return Err("seccomp_load".into());
        }
    }
    Ok(())
}

fn per_call_ns(nr: i64, arg0: i64) -> f64 {
    let mut best = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        for _ in 0..ITERS {
            // SAFETY: raw syscalls chosen to be harmless with these arguments (they fail or are no-ops).
            unsafe { libc::syscall(nr, arg0, 0, 0, 0, 0, 0) };
        }
        best.push(t.elapsed().as_nanos() as f64 / ITERS as f64);
    }
    // The minimum: on a shared machine interference only ever adds time.
    best.into_iter().fold(f64::INFINITY, f64::min)
}

/// Measures in a forked child with filter `which` installed: (denied mean, allowed with args, allowed plain).
fn measure(which: &str) -> Result<[f64; 3], String> {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the bench is single-threaded; the child only runs the measurement and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: the child owns the write end.
        let mut w = unsafe { std::fs::File::from_raw_fd(fds[1]) };
        let arch = Arch::X86_64;
        let r = kitfleet_sandbox::landlock::sys::set_no_new_privs()
            .map_err(|e| e.to_string())
            .and_then(|()| match which {
                "none" => Ok(()),
                "kitfleet" => install(&kitfleet_filter(), false).map_err(|e| e.to_string()),
                "seccompiler" => {
                    seccompiler::apply_filter(&seccompiler_filter()).map_err(|e| e.to_string())
                }
                _ => load_libseccomp(),
            });
        let line = match r {
            Err(e) => format!("error {e}\n"),
            Ok(()) => {
                let denied: f64 = DENIED
                    .iter()
                    .map(|n| per_call_ns(arch.lookup(n).unwrap() as i64, -1))
                    .sum::<f64>()
                    / DENIED.len() as f64;
                let with_args = per_call_ns(arch.lookup("getpgid").unwrap() as i64, 0);
                let plain = per_call_ns(arch.lookup("getppid").unwrap() as i64, 0);
                format!("{denied} {with_args} {plain}\n")
            }
        };
        let _ = w.write_all(line.as_bytes());
        // SAFETY: leave the forked child at once.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: the parent owns the read end; closing its copy of the write end.
    let mut r = unsafe {
        libc::close(fds[1]);
        std::fs::File::from_raw_fd(fds[0])
    };
    let mut s = String::new();
    r.read_to_string(&mut s).unwrap();
    // SAFETY: reaping our child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    let v: Vec<f64> = s
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() == 3 {
        Ok([v[0], v[1], v[2]])
    } else {
        Err(s)
    }
}

/// Wall time and the child's CPU time (user + system, from `RUSAGE_CHILDREN`), in µs.
fn spawn_us(cmd: &mut Command) -> (f64, f64) {
    let cpu = || {
        // SAFETY: getrusage fills the struct we pass.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid out-pointer.
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
        let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
        us(ru.ru_utime) + us(ru.ru_stime)
    };
    let (c0, s) = (cpu(), Instant::now());
    let st = cmd.status().unwrap();
    let wall = s.elapsed().as_secs_f64() * 1e6;
    assert!(st.success(), "{cmd:?} failed");
    (wall, cpu() - c0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn launcher_bin() -> (String, &'static str) {
    if let Ok(p) = std::env::var("KITFLEET_SANDBOX_BIN") {
        return (p, "KITFLEET_SANDBOX_BIN");
    }
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = manifest.join("../target/x86_64-unknown-linux-gnu/release/kitfleet-sandbox");
    if st.exists() {
        return (st.display().to_string(), "static release build");
    }
    (
        env!("CARGO_BIN_EXE_kitfleet-sandbox").to_string(),
        "dynamic bench build",
    )
}

fn overhead() -> ([f64; 3], [f64; 3], String) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "apiVersion: kitfleet.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {{name: bench, namespace: ns}}\nspec:\n  landlock:\n    filesystem:\n      - {{paths: [/usr, /lib, /bin, /etc], access: [execute, read-file, read-dir]}}\n      - {{paths: [{}], access: [read-file, write-file, make-reg]}}\n    scopes: [signal]\n  seccomp:\n    base: runtime/default\n",
        dir.path().display()
    );
    let src = dir.path().join("p.yaml");
    std::fs::write(&src, yaml).unwrap();
    let policies = kitfleet_sandbox::cli::read_manifests(&[src]).unwrap();
    let opts = kitfleet_sandbox::compile::Options {
        arches: vec![Arch::X86_64],
        report_socket: None,
    };
    let c = kitfleet_sandbox::compile::compile(&policies, &opts).unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, c.policy.to_json()).unwrap();
    let (bin, which) = launcher_bin();
    let runs = 400;
    let mut plain = Command::new("/bin/true");
    let mut launched = Command::new(&bin);
    launched
        .arg("exec")
        .arg("--policy")
        .arg(&policy)
        .args(["--", "/bin/true"])
        .stderr(Stdio::null());
    for _ in 0..20 {
        spawn_us(&mut plain);
        spawn_us(&mut launched);
    }
    // Interleaved run by run, so the load of a shared machine hits both series alike.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        a.push(spawn_us(&mut plain));
        b.push(spawn_us(&mut launched));
    }
    let stats = |v: &[(f64, f64)]| {
        let wall: Vec<f64> = v.iter().map(|x| x.0).collect();
        let cpu: Vec<f64> = v.iter().map(|x| x.1).collect();
        let p10 = {
            let mut w = wall.clone();
            w.sort_by(|x, y| x.partial_cmp(y).unwrap());
            w[w.len() / 10]
        };
        [median(wall), p10, median(cpu)]
    };
    (stats(&a), stats(&b), format!("{bin} ({which})"))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (plain, launched, bin) = overhead();
    println!("launcher: {bin}");
    println!(
        "| exec of /bin/true, 400 interleaved runs | wall median µs | wall p10 µs | CPU median µs |"
    );
    println!("|---|---:|---:|---:|");
    let row =
        |name: &str, v: [f64; 3]| println!("| {name} | {:.0} | {:.0} | {:.0} |", v[0], v[1], v[2]);
    row("/bin/true", plain);
    row("kitfleet-sandbox exec --policy P -- /bin/true", launched);
    row(
        "overhead (floor ≤ 2000 µs, goal ≤ 1000 µs)",
        [0, 1, 2].map(|i| launched[i] - plain[i]),
    );
    println!();
    let n = allow_list().len();
    println!(
        "per-call cost, ns (allow list of {n} x86_64 syscalls; fastest of 3 rounds × {RUNS} runs of {ITERS} calls)"
    );
    println!(
        "| filter | instructions | denied (mean of {}) | allowed, arg condition (getpgid(0)) | allowed (getppid) |",
        DENIED.len()
    );
    println!("|---|---:|---:|---:|---:|");
    let filters = [
        ("none", 0),
        ("kitfleet", kitfleet_filter().len()),
        ("seccompiler", seccompiler_filter().len()),
        ("libseccomp", 0),
    ];
    // Three rounds, filters interleaved; each cell keeps its minimum.
    let mut results: BTreeMap<&str, [f64; 3]> = BTreeMap::new();
    for _ in 0..3 {
        for (name, _) in filters {
            match measure(name) {
                Ok(v) => {
                    let cell = results.entry(name).or_insert([f64::INFINITY; 3]);
                    for i in 0..3 {
                        cell[i] = cell[i].min(v[i]);
                    }
                }
                Err(e) => println!("| {name} | failed: {} |", e.trim()),
            }
        }
    }
    for (name, insns) in filters {
        if let Some(v) = results.get(name) {
            let insns = if insns == 0 {
                "-".to_string()
            } else {
                insns.to_string()
            };
            println!(
                "| {name} | {insns} | {:.1} | {:.1} | {:.1} |",
                v[0], v[1], v[2]
            );
        }
    }
    if let (Some(k), Some(l), Some(s)) = (
        results.get("kitfleet"),
        results.get("libseccomp"),
        results.get("seccompiler"),
    ) {
        println!();
        println!(
            "denied path: kitfleet / libseccomp tree = {:.2}× (floor ≤ 1.2×, goal ≤ 1.0×); kitfleet / seccompiler = {:.2}×",
            k[0] / l[0],
            k[0] / s[0]
        );
        println!(
            "allowed with arg condition: kitfleet / libseccomp = {:.2}×",
            k[1] / l[1]
        );
    }
}
