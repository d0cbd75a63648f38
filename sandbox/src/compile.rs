//! The policy compiler: SecurityPolicies → compiled policy file (launcher) + OCI seccomp profile
//! (kubelet `Localhost`). Pure: no I/O, same input → byte-identical output.

mod landlock;
mod seccomp;

use crate::oci::{self, OciProfile};
use crate::policy::CompiledPolicy;
use crate::seccomp::bpf::MAX_INSNS;
use crate::seccomp::{Action, Arch, SyscallRule};
use kitfleet_api::SecurityPolicy;
use kitfleet_api::security::PolicyMode;
use std::collections::BTreeMap;
use std::fmt;

/// Compiler options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Architectures to emit filters for; every syscall a rule names must exist on each.
    pub arches: Vec<Arch>,
    /// Written into the policy file as the report socket.
    pub report_socket: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            arches: Arch::ALL.to_vec(),
            report_socket: None,
        }
    }
}

/// One problem, naming the policy and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    /// `namespace/name`.
    pub policy: String,
    /// YAML path inside the policy (`spec.seccomp.rules[2].names[0]`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "policy {}: {}: {}",
            self.policy, self.field, self.message
        )
    }
}

/// Every problem found (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileErrors(pub Vec<CompileError>);

impl fmt::Display for CompileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CompileErrors {}

/// The compiler's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// For the launcher.
    pub policy: CompiledPolicy,
    /// For the kubelet's `Localhost` seccomp profile.
    pub profile: OciProfile,
    /// Where the profile is looser than the launcher's filter (it must never be stricter).
    pub notes: Vec<String>,
}

/// One policy's seccomp rules by syscall name, mode already applied.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedLayer {
    /// `namespace/name`.
    pub policy: String,
    /// Mode.
    pub mode: PolicyMode,
    /// Default action.
    pub default: Action,
    /// Rules by name (base included).
    pub rules: BTreeMap<String, SyscallRule>,
    /// `enforce-and-log`.
    pub log: bool,
}

struct Ctx<'a> {
    pub(crate) policy: String,
    errors: &'a mut Vec<CompileError>,
}

impl Ctx<'_> {
    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(CompileError {
            policy: self.policy.clone(),
            field: field.into(),
            message: message.into(),
        });
    }
}

/// `namespace/name` of a policy.
pub fn policy_name(p: &SecurityPolicy) -> String {
    let name = p.metadata.name.as_deref().unwrap_or("<unnamed>");
    match p.metadata.namespace.as_deref() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// Compiles the policies that match one pod, in order; they stack as layers.
pub fn compile(policies: &[SecurityPolicy], opts: &Options) -> Result<Compiled, CompileErrors> {
    let mut errors = Vec::new();
    let mut out = CompiledPolicy::new();
    out.report_socket = opts.report_socket.clone();
    let mut named = Vec::new();
    if opts.arches.is_empty() {
        errors.push(CompileError {
            policy: "-".into(),
            field: "arches".into(),
            message: "no architecture".into(),
        });
    }
    for p in policies {
        let mut cx = Ctx {
            policy: policy_name(p),
            errors: &mut errors,
        };
        out.policies.push(cx.policy.clone());
        let mode = p.spec.mode;
        if let Some(l) = &p.spec.landlock {
            out.landlock
                .push(landlock::landlock_layer(&mut cx, l, mode));
        }
        if let Some(s) = &p.spec.seccomp {
            named.push(seccomp::seccomp_layer(&mut cx, s, mode, &opts.arches));
        }
    }
    if errors.is_empty() {
        seccomp::launcher_can_finish(&named, &mut errors);
    }
    if !errors.is_empty() {
        return Err(CompileErrors(errors));
    }
    for arch in &opts.arches {
        let layers = named
            .iter()
            .map(|l| seccomp::bpf_layer(l, *arch))
            .collect::<Vec<_>>();
        for l in &layers {
            if l.program.len() > MAX_INSNS {
                errors.push(CompileError {
                    policy: l.policy.clone(),
                    field: "spec.seccomp.rules".into(),
                    message: format!(
                        "the {arch} filter needs {} instructions, more than the kernel's {MAX_INSNS}: fewer argument conditions",
                        l.program.len()
                    ),
                });
            }
        }
        if !layers.is_empty() {
            out.seccomp.insert(*arch, layers);
        }
    }
    if !errors.is_empty() {
        return Err(CompileErrors(errors));
    }
    let (profile, notes) = oci::profile(&named, &opts.arches);
    Ok(Compiled {
        policy: out,
        profile,
        notes,
    })
}

#[cfg(test)]
mod tests;
