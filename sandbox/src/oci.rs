//! The OCI seccomp profile (the JSON the kubelet's `Localhost` profile points at): the stacked
//! policies merged into one filter, plus the syscalls the launcher itself needs before it execs.
//!
//! OCI profiles hold one filter, so stacked layers are merged: per syscall the strictest outcome
//! wins, exactly where the profile format can express it. Where it cannot (two layers with
//! argument conditions whose fallbacks differ, or a conditional rule whose fallback is not the
//! profile's default), the profile takes the least restrictive outcome and says so in a note:
//! the profile may be looser than the launcher's filter, never stricter.

use crate::compile::NamedLayer;
use crate::seccomp::{Action, Arch, CmpOp, Cond, SyscallRule};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Syscalls the launcher makes between the runtime's filter and its own `execve`: the static
/// binary's start-up, reading the policy, Landlock, the report socket, seccomp and exec; plus what
/// runc's Go init still does after it loads the profile (dropping to the container's user and
/// capabilities, `chdir` to the working directory, closing inherited descriptors through
/// `/proc/self/fd`, the Go runtime's threads and signals). Found with strace, and with podman/runc
/// under a `SCMP_ACT_LOG` profile.
pub const LAUNCHER_NEEDS: &[&str] = &[
    "arch_prctl",
    "brk",
    "capget",
    "capset",
    "chdir",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "connect",
    "epoll_ctl",
    "epoll_pwait",
    "execve",
    "exit",
    "exit_group",
    "faccessat2",
    "fchdir",
    "fcntl",
    "fstat",
    "fstatfs",
    "futex",
    "getcwd",
    "getdents64",
    "getpid",
    "getrandom",
    "gettid",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "madvise",
    "mmap",
    "mprotect",
    "munmap",
    "nanosleep",
    "newfstatat",
    "openat",
    "openat2",
    "poll",
    "ppoll",
    "prctl",
    "prlimit64",
    "read",
    "readlink",
    "readlinkat",
    "rseq",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sched_getaffinity",
    "sched_yield",
    "seccomp",
    "sendto",
    "set_robust_list",
    "set_tid_address",
    "setgid",
    "setgroups",
    "setsockopt",
    "setuid",
    "sigaltstack",
    "socket",
    "statfs",
    "statx",
    "tgkill",
    "write",
    "writev",
];

/// A seccomp profile in the OCI / Docker JSON format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciProfile {
    /// Action for unlisted syscalls.
    pub default_action: String,
    /// Errno for an `SCMP_ACT_ERRNO` default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// `SCMP_ARCH_*`; other ABIs (i386, x32) are killed by the runtime's filter.
    pub architectures: Vec<String>,
    /// `SECCOMP_FILTER_FLAG_*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// Rules.
    pub syscalls: Vec<OciSyscall>,
}

/// One rule of the profile.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciSyscall {
    /// Syscall names.
    pub names: Vec<String>,
    /// `SCMP_ACT_*`.
    pub action: String,
    /// Errno for `SCMP_ACT_ERRNO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    /// Conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<OciArg>,
}

/// One argument condition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciArg {
    /// Argument index.
    pub index: u32,
    /// Operand (mask for `SCMP_CMP_MASKED_EQ`).
    pub value: u64,
    /// Expected value for `SCMP_CMP_MASKED_EQ`.
    pub value_two: u64,
    /// `SCMP_CMP_*`.
    pub op: String,
}

impl OciProfile {
    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("profile serialises");
        s.push('\n');
        s
    }
}

fn least(a: Action, b: Action) -> Action {
    if b.precedence() < a.precedence() {
        b
    } else {
        a
    }
}

/// Merges two layers' rules for one syscall; `false` when the result had to be loosened.
pub fn merge(a: &SyscallRule, b: &SyscallRule) -> (SyscallRule, bool) {
    let uncond = |r: &SyscallRule| r.clauses.is_empty() || r.action == r.otherwise;
    match (uncond(a), uncond(b)) {
        (true, true) => (SyscallRule::always(a.action.strictest(b.action)), true),
        (true, false) | (false, true) => {
            let (u, c) = if uncond(a) {
                (a.action, b)
            } else {
                (b.action, a)
            };
            let r = SyscallRule {
                clauses: c.clauses.clone(),
                action: u.strictest(c.action),
                otherwise: u.strictest(c.otherwise),
            };
            (r, true)
        }
        (false, false) if a.clauses == b.clauses => {
            let r = SyscallRule {
                clauses: a.clauses.clone(),
                action: a.action.strictest(b.action),
                otherwise: a.otherwise.strictest(b.otherwise),
            };
            (r, true)
        }
        (false, false) => {
            let both = a.action.strictest(b.action);
            let outs = [
                a.action.strictest(b.otherwise),
                a.otherwise.strictest(b.action),
                a.otherwise.strictest(b.otherwise),
            ];
            if outs.iter().all(|o| *o == outs[2]) {
                let clauses = a
                    .clauses
                    .iter()
                    .flat_map(|x| {
                        b.clauses
                            .iter()
                            .map(move |y| x.iter().chain(y).copied().collect())
                    })
                    .collect();
                (
                    SyscallRule {
                        clauses,
                        action: both,
                        otherwise: outs[2],
                    },
                    true,
                )
            } else {
                (
                    SyscallRule::always(outs.iter().fold(both, |m, o| least(m, *o))),
                    false,
                )
            }
        }
    }
}

fn op_name(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "SCMP_CMP_EQ",
        CmpOp::Ne => "SCMP_CMP_NE",
        CmpOp::Lt => "SCMP_CMP_LT",
        CmpOp::Le => "SCMP_CMP_LE",
        CmpOp::Gt => "SCMP_CMP_GT",
        CmpOp::Ge => "SCMP_CMP_GE",
        CmpOp::MaskedEq => "SCMP_CMP_MASKED_EQ",
    }
}

/// The profile's form of `c`, when it has one. libseccomp compares all 64 bits of an argument,
/// so a condition on a narrow (`int`) argument is written as a masked comparison of its low
/// bits: exact for `eq` and `masked-eq`, inexpressible for the others.
fn oci_arg(c: &Cond) -> Option<OciArg> {
    let (op, value, value_two) = match (c.bits, c.op) {
        (64, op) => (op, c.value, c.value_two),
        (bits, CmpOp::Eq) => (CmpOp::MaskedEq, crate::seccomp::args::mask(bits), c.value),
        (_, CmpOp::MaskedEq) => (CmpOp::MaskedEq, c.value, c.value_two),
        _ => return None,
    };
    Some(OciArg {
        index: c.index as u32,
        value,
        value_two,
        op: op_name(op).into(),
    })
}

fn errno_ret(a: Action) -> Option<u32> {
    if let Action::Errno(e) = a {
        Some(e as u32)
    } else {
        None
    }
}

/// Builds the profile for the stacked `layers` and the notes on where it is looser than the filters.
pub fn profile(layers: &[NamedLayer], arches: &[Arch]) -> (OciProfile, Vec<String>) {
    let mut notes = Vec::new();
    let architectures = arches.iter().map(|a| a.oci_name().to_string()).collect();
    let flags = if layers.iter().any(|l| l.log) {
        vec!["SECCOMP_FILTER_FLAG_LOG".into()]
    } else {
        Vec::new()
    };
    if layers.is_empty() {
        let p = OciProfile {
            default_action: Action::Allow.oci_name().into(),
            default_errno_ret: None,
            architectures,
            flags,
            syscalls: Vec::new(),
        };
        return (p, notes);
    }
    let default = layers
        .iter()
        .fold(Action::Allow, |m, l| m.strictest(l.default));
    let mut names: BTreeSet<&str> = layers
        .iter()
        .flat_map(|l| l.rules.keys().map(String::as_str))
        .collect();
    names.extend(LAUNCHER_NEEDS);
    let mut groups: BTreeMap<(String, Option<u32>, Vec<OciArg>), Vec<String>> = BTreeMap::new();
    for name in names {
        let mut merged = SyscallRule::always(Action::Allow);
        for l in layers {
            let r = l
                .rules
                .get(name)
                .cloned()
                .unwrap_or_else(|| SyscallRule::always(l.default));
            let (m, exact) = merge(&merged, &r);
            if !exact {
                notes.push(format!(
                    "{name}: the argument conditions of the stacked policies cannot be merged into one OCI rule; \
                     the profile answers {} (the launcher's filters stay exact)",
                    m.action.oci_name()
                ));
            }
            merged = m;
        }
        if LAUNCHER_NEEDS.contains(&name) && !(merged.clauses.is_empty() && merged.action.runs()) {
            notes.push(format!(
                "{name}: the launcher (or runc's init) needs it before the launcher's own filters are in force; \
                 the profile allows it (the launcher's filters stay exact)"
            ));
            merged = SyscallRule::always(Action::Allow);
        }
        let args: Option<Vec<Vec<OciArg>>> = merged
            .clauses
            .iter()
            .map(|c| c.iter().map(oci_arg).collect())
            .collect();
        let mut add = |action: Action, args: Vec<OciArg>| {
            let key = (action.oci_name().to_string(), errno_ret(action), args);
            groups.entry(key).or_default().push(name.to_string());
        };
        if merged.clauses.is_empty() || merged.action == merged.otherwise {
            if merged.action != default {
                add(merged.action, Vec::new());
            }
        } else if let (true, Some(args)) = (merged.otherwise == default, &args) {
            for clause in args {
                add(merged.action, clause.clone());
            }
        } else if args.is_none() {
            let loose = least(merged.action, merged.otherwise);
            notes.push(format!(
                "{name}: a condition other than eq/masked-eq on a 32-bit argument cannot be written in an OCI \
                 profile (libseccomp compares all 64 bits); the profile answers {} unconditionally (the \
                 launcher's filters stay exact)",
                loose.oci_name()
            ));
            if loose != default {
                add(loose, Vec::new());
            }
        } else {
            let loose = least(merged.action, merged.otherwise);
            notes.push(format!(
                "{name}: conditional rule whose fallback ({}) is not the profile default; the profile answers {} \
                 unconditionally (the launcher's filters stay exact)",
                merged.otherwise.oci_name(),
                loose.oci_name()
            ));
            if loose != default {
                add(loose, Vec::new());
            }
        }
    }
    let syscalls = groups
        .into_iter()
        .map(|((action, errno_ret, args), names)| OciSyscall {
            names,
            action,
            errno_ret,
            args,
        })
        .collect();
    let p = OciProfile {
        default_action: default.oci_name().into(),
        default_errno_ret: errno_ret(default),
        architectures,
        flags,
        syscalls,
    };
    (p, notes)
}
