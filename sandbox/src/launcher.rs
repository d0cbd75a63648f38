//! `kitfleet-sandbox exec`: apply the compiled policy to this process, report, then execve the workload.
//!
//! Order: read the policy → open every rule path and build every ruleset (nothing enforced yet,
//! so a refusal leaves no half-applied state) → `no_new_privs` → Landlock → seccomp (the
//! policy's exact filter, installed last) → report `enforced` → `execvp` with the environment
//! unchanged. Every write the launcher makes under its filters is first checked against them.

use crate::landlock::{self, sys};
use crate::policy::{CompiledPolicy, SeccompLayer};
use crate::report::{Channel, Outcome, SeccompLayerReport, SeccompReport, write_checked};
use crate::seccomp::bpf::{SeccompData, run};
use crate::seccomp::{Action, Arch, install::install};
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;

/// Exit codes of the launcher when it does not exec the workload.
pub mod exit {
    /// Bad usage, or the policy file is unreadable or invalid.
    pub const USAGE: i32 = 125;
    /// The kernel's Landlock ABI is below a policy's `minAbi`.
    pub const ABI: i32 = 121;
    /// A rule marked `required` names a path that cannot be opened.
    pub const REQUIRED_PATH: i32 = 122;
    /// Enforcement failed (a Landlock or seccomp call failed, or no filter for this architecture).
    pub const ENFORCE: i32 = 123;
    /// The workload exists but cannot be executed.
    pub const CANNOT_EXEC: i32 = 126;
    /// The workload was not found.
    pub const NOT_FOUND: i32 = 127;
}

/// A reason not to run the workload, with its exit code.
#[derive(Debug)]
pub struct Refusal {
    /// Exit code.
    pub code: i32,
    /// One-line reason.
    pub reason: String,
    event: &'static str,
}

impl Refusal {
    fn new(code: i32, reason: impl Into<String>) -> Self {
        let event = if code == exit::ABI || code == exit::REQUIRED_PATH {
            "refused"
        } else {
            "error"
        };
        Refusal {
            code,
            reason: reason.into(),
            event,
        }
    }
}

impl From<landlock::Error> for Refusal {
    fn from(e: landlock::Error) -> Self {
        let code = match e {
            landlock::Error::Abi { .. } => exit::ABI,
            landlock::Error::RequiredPath { .. } => exit::REQUIRED_PATH,
            landlock::Error::Kernel { .. } => exit::ENFORCE,
        };
        Refusal::new(code, e.to_string())
    }
}

/// The seccomp layers for the architecture this binary runs on.
pub fn native_layers(policy: &CompiledPolicy) -> Result<&[SeccompLayer], Refusal> {
    if policy.seccomp.is_empty() {
        return Ok(&[]);
    }
    let arch =
        Arch::native().ok_or_else(|| Refusal::new(exit::ENFORCE, "unsupported architecture"))?;
    policy.seccomp.get(&arch).map(Vec::as_slice).ok_or_else(|| {
        Refusal::new(
            exit::ENFORCE,
            format!("the policy has seccomp filters but none for {arch}"),
        )
    })
}

/// Runs the launcher; returns only when the workload was not executed (the exit code).
pub fn exec(policy_path: &str, report_socket: Option<&str>, argv: &[OsString]) -> i32 {
    let policy = match CompiledPolicy::load(policy_path) {
        Ok(p) => p,
        Err(e) => {
            let r = Refusal::new(exit::USAGE, e.to_string());
            return fail(Channel::open(report_socket), Outcome::new(r.event), r, &[]);
        }
    };
    let channel = Channel::open(report_socket.or(policy.report_socket.as_deref()));
    let mut outcome = Outcome::new("enforced");
    outcome.policies = policy.policies.clone();
    outcome.program = argv.first().map(|a| a.to_string_lossy().into_owned());
    match apply(&policy, argv, &mut outcome, channel) {
        Ok(never) => match never {},
        Err((channel, r, installed)) => {
            let installed = native_layers(&policy)
                .map(|l| &l[..installed.min(l.len())])
                .unwrap_or_default();
            match channel {
                Some(c) => fail(c, outcome, r, installed),
                None => {
                    // The outcome was already sent: add a plain line, only if the filters in
                    // force let it through. Never eprintln!: it panics when the write fails.
                    let line = format!("kitfleet-sandbox: {}\n", r.reason);
                    let _ = write_checked(libc::STDERR_FILENO, line.as_bytes(), &|a| {
                        write_passes(installed, a)
                    });
                    r.code
                }
            }
        }
    }
}

enum Never {}

/// Why the launcher stopped: the channel if the outcome is not sent yet, the refusal, and how
/// many seccomp filters are already installed.
type Failed = (Option<Channel>, Refusal, usize);

/// Whether every filter in `layers` lets `write(args…)` through (`ALLOW` or `LOG`), evaluated
/// with the same BPF semantics the kernel applies.
pub fn write_passes(layers: &[SeccompLayer], args: &[u64; 6]) -> bool {
    let Some(arch) = Arch::native() else {
        return layers.is_empty();
    };
    let d = SeccompData {
        nr: libc::SYS_write as u32,
        arch: arch.audit_arch(),
        ip: 0,
        args: *args,
    };
    layers.iter().all(|l| {
        let ret = run(&l.program, &d).map(|r| r & 0xffff_0000);
        ret == Some(Action::Allow.ret()) || ret == Some(Action::Log.ret())
    })
}

fn apply(
    policy: &CompiledPolicy,
    argv: &[OsString],
    outcome: &mut Outcome,
    channel: Channel,
) -> Result<Never, Failed> {
    let argv_c = match cstrings(argv) {
        Ok(a) => a,
        Err(r) => return Err((Some(channel), r, 0)),
    };
    let layers = match native_layers(policy) {
        Ok(l) => l,
        Err(r) => return Err((Some(channel), r, 0)),
    };
    let abi = match sys::abi() {
        Ok(a) => a,
        Err(e) => {
            return Err((
                Some(channel),
                Refusal::new(exit::ENFORCE, format!("landlock ABI probe: {e}")),
                0,
            ));
        }
    };
    outcome.landlock_abi = Some(abi);
    let prepared = match landlock::prepare(&policy.landlock, abi) {
        Ok(p) => p,
        Err(e) => return Err((Some(channel), e.into(), 0)),
    };
    outcome.landlock = prepared.reports.clone();
    if let Err(e) = sys::set_no_new_privs() {
        return Err((
            Some(channel),
            Refusal::new(exit::ENFORCE, format!("prctl(PR_SET_NO_NEW_PRIVS): {e}")),
            0,
        ));
    }
    if let Err(e) = prepared.enforce() {
        return Err((Some(channel), e.into(), 0));
    }
    if !layers.is_empty() {
        outcome.seccomp = Some(SeccompReport {
            arch: Arch::native()
                .map(|a| a.name().to_string())
                .unwrap_or_default(),
            layers: layers
                .iter()
                .map(|l| SeccompLayerReport {
                    policy: l.policy.clone(),
                    mode: l.mode.to_string(),
                    log: l.log,
                    instructions: l.program.len(),
                })
                .collect(),
        });
    }
    // The report says "enforced" only once every filter is installed. The launcher then writes
    // it under the filters, so it first checks (with the filters' own BPF) that they let that
    // write through; if they would not, the report goes out before the filters as "enforcing".
    let all = |a: &[u64; 6]| write_passes(layers, a);
    outcome.event = "enforced";
    let mut report = Some(channel.encode(outcome));
    if !report.as_ref().is_some_and(|r| r.first_write_passes(&all)) {
        outcome.event = "enforcing";
        let channel = report.take().expect("encoded above").into_channel();
        channel.encode(outcome).write(&|_| true);
    }
    for (i, l) in layers.iter().enumerate() {
        if let Err(e) = install(&l.program, l.log) {
            let r = Refusal::new(
                exit::ENFORCE,
                format!("policy {}: seccomp filter: {e}", l.policy),
            );
            return Err((report.map(|r| r.into_channel()), r, i));
        }
    }
    if let Some(r) = report {
        r.write(&all);
    }
    let mut ptrs: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: `ptrs` is a NULL-terminated array of pointers into `argv_c`, alive across the call.
    unsafe { libc::execvp(ptrs[0], ptrs.as_ptr()) };
    let e = std::io::Error::last_os_error();
    let code = if e.raw_os_error() == Some(libc::ENOENT) {
        exit::NOT_FOUND
    } else {
        exit::CANNOT_EXEC
    };
    Err((
        None,
        Refusal::new(code, format!("exec {}: {e}", argv[0].to_string_lossy())),
        layers.len(),
    ))
}

fn cstrings(argv: &[OsString]) -> Result<Vec<CString>, Refusal> {
    if argv.is_empty() {
        return Err(Refusal::new(
            exit::USAGE,
            "no workload: usage: kitfleet-sandbox exec --policy FILE -- ARGV...",
        ));
    }
    argv.iter()
        .map(|a| {
            CString::new(a.as_bytes())
                .map_err(|_| Refusal::new(exit::USAGE, "argv contains a NUL byte"))
        })
        .collect()
}

fn fail(channel: Channel, mut outcome: Outcome, r: Refusal, installed: &[SeccompLayer]) -> i32 {
    outcome.event = r.event;
    outcome.reason = Some(r.reason);
    outcome.exit_code = Some(r.code);
    let to_socket = matches!(channel, Channel::Socket(_));
    let passes = |a: &[u64; 6]| write_passes(installed, a);
    channel.encode(&outcome).write(&passes);
    if to_socket {
        // The reason also goes to stderr, where `kubectl logs` shows it.
        let reason = outcome.reason.as_deref().unwrap_or_default();
        let line = format!("kitfleet-sandbox: error: {reason}\n");
        let _ = write_checked(libc::STDERR_FILENO, line.as_bytes(), &passes);
    }
    r.code
}
