//! The policy compiler: SecurityPolicies → compiled policy file (launcher) + OCI seccomp profile
//! (kubelet `Localhost`). Pure: no I/O, same input → byte-identical output.

use crate::base;
use crate::oci::{self, OciProfile};
use crate::policy::{CompiledPolicy, FsRule, LandlockLayer, NetPorts, SeccompLayer};
use crate::seccomp::bpf::MAX_INSNS;
use crate::seccomp::{Action, Arch, CmpOp, Cond, FilterSpec, SyscallRule, generate};
use kitfleet_api::SecurityPolicy;
use kitfleet_api::security::{
    ArgOp, LandlockPolicy, PolicyMode, SeccompAction, SeccompBase, SeccompPolicy,
};
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
    policy: String,
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
            out.landlock.push(landlock_layer(&mut cx, l, mode));
        }
        if let Some(s) = &p.spec.seccomp {
            named.push(seccomp_layer(&mut cx, s, mode, &opts.arches));
        }
    }
    if errors.is_empty() {
        launcher_can_finish(&named, &mut errors);
    }
    if !errors.is_empty() {
        return Err(CompileErrors(errors));
    }
    for arch in &opts.arches {
        let layers = named
            .iter()
            .map(|l| bpf_layer(l, *arch))
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

/// The launcher installs the filters in order, then execs: every filter must let `execve`
/// through, and every filter but the last must let the next `seccomp()` through.
fn launcher_can_finish(layers: &[NamedLayer], errors: &mut Vec<CompileError>) {
    for (i, l) in layers.iter().enumerate() {
        let needs: &[&str] = if i + 1 < layers.len() {
            &["execve", "seccomp"]
        } else {
            &["execve"]
        };
        for name in needs {
            let rule = l
                .rules
                .get(*name)
                .cloned()
                .unwrap_or_else(|| SyscallRule::always(l.default));
            if !(rule.clauses.is_empty() || rule.action == rule.otherwise) || !rule.action.runs() {
                let why = if *name == "execve" {
                    "the launcher cannot exec the workload".to_string()
                } else {
                    format!(
                        "the launcher cannot install the filter of {}",
                        layers[i + 1].policy
                    )
                };
                errors.push(CompileError {
                    policy: l.policy.clone(),
                    field: "spec.seccomp".into(),
                    message: format!("{name} must be allowed unconditionally: {why}"),
                });
            }
        }
    }
}

fn landlock_layer(cx: &mut Ctx<'_>, l: &LandlockPolicy, mode: PolicyMode) -> LandlockLayer {
    if l.min_abi == Some(0) {
        cx.err("spec.landlock.minAbi", "must be at least 1");
    }
    let mut filesystem = Vec::new();
    for (i, r) in l.filesystem.iter().enumerate() {
        let field = format!("spec.landlock.filesystem[{i}]");
        if r.paths.is_empty() {
            cx.err(format!("{field}.paths"), "at least one path is required");
        }
        for (j, path) in r.paths.iter().enumerate() {
            if !path.starts_with('/') || path.contains('\0') {
                cx.err(
                    format!("{field}.paths[{j}]"),
                    format!("{path:?} is not an absolute path"),
                );
            }
        }
        if r.access.is_empty() {
            cx.err(
                format!("{field}.access"),
                "at least one access right is required",
            );
        }
        let mut access = r.access.clone();
        access.sort();
        access.dedup();
        filesystem.push(FsRule {
            paths: r.paths.clone(),
            access,
            required: r.required,
            field,
        });
    }
    let network = l.network.as_ref().map(|n| NetPorts {
        bind_tcp: ports(cx, "spec.landlock.network.bindTcp", &n.bind_tcp),
        connect_tcp: ports(cx, "spec.landlock.network.connectTcp", &n.connect_tcp),
    });
    let mut scopes = l.scopes.clone();
    scopes.sort();
    scopes.dedup();
    LandlockLayer {
        policy: cx.policy.clone(),
        mode,
        min_abi: l.min_abi,
        filesystem,
        network,
        scopes,
    }
}

fn ports(cx: &mut Ctx<'_>, field: &str, list: &[u32]) -> Vec<u16> {
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        match u16::try_from(*p) {
            Ok(p) if p != 0 => out.push(p),
            _ => cx.err(
                format!("{field}[{i}]"),
                format!("port {p} is not in 1-65535"),
            ),
        }
    }
    out.sort();
    out.dedup();
    out
}

fn errno(cx: &mut Ctx<'_>, field: String, action: SeccompAction, errno: Option<u32>) -> Action {
    match (action, errno) {
        (SeccompAction::Errno, None) => Action::Errno(libc::EPERM as u16),
        (SeccompAction::Errno, Some(e)) if (1..=4095).contains(&e) => Action::Errno(e as u16),
        (SeccompAction::Errno, Some(e)) => {
            cx.err(field, format!("errno {e} is not in 1-4095"));
            Action::Errno(1)
        }
        (a, Some(_)) => {
            cx.err(
                field,
                format!("an errno contradicts action {}", action_name(a)),
            );
            Action::Errno(1)
        }
        (SeccompAction::Allow, None) => Action::Allow,
        (SeccompAction::Log, None) => Action::Log,
        (SeccompAction::Trap, None) => Action::Trap,
        (SeccompAction::KillThread, None) => Action::KillThread,
        (SeccompAction::KillProcess, None) => Action::KillProcess,
    }
}

fn action_name(a: SeccompAction) -> &'static str {
    match a {
        SeccompAction::Allow => "allow",
        SeccompAction::Errno => "errno",
        SeccompAction::KillProcess => "kill-process",
        SeccompAction::KillThread => "kill-thread",
        SeccompAction::Trap => "trap",
        SeccompAction::Log => "log",
    }
}

fn seccomp_layer(
    cx: &mut Ctx<'_>,
    s: &SeccompPolicy,
    mode: PolicyMode,
    arches: &[Arch],
) -> NamedLayer {
    let default = errno(
        cx,
        "spec.seccomp.defaultErrno".into(),
        s.default_action,
        s.default_errno,
    );
    let mut rules: BTreeMap<String, SyscallRule> = match s.base {
        Some(SeccompBase::RuntimeDefault) => base_by_name(arches),
        None => BTreeMap::new(),
    };
    let mut own: BTreeMap<String, (usize, SyscallRule)> = BTreeMap::new();
    for (i, r) in s.rules.iter().enumerate() {
        let field = format!("spec.seccomp.rules[{i}]");
        let action = errno(cx, format!("{field}.errno"), r.action, r.errno);
        let clause = conditions(cx, &field, r);
        if r.names.is_empty() {
            cx.err(
                format!("{field}.names"),
                "at least one syscall name is required",
            );
        }
        for (j, name) in r.names.iter().enumerate() {
            let missing: Vec<&str> = arches
                .iter()
                .filter(|a| a.lookup(name).is_none())
                .map(|a| a.name())
                .collect();
            if missing.len() == arches.len() {
                cx.err(
                    format!("{field}.names[{j}]"),
                    format!("unknown syscall {name:?}"),
                );
                continue;
            } else if !missing.is_empty() {
                let msg = format!(
                    "{name:?} is not a syscall on {} (compile for fewer architectures)",
                    missing.join(", ")
                );
                cx.err(format!("{field}.names[{j}]"), msg);
                continue;
            }
            match own.get_mut(name) {
                Some((k, prev)) if prev.action != action => {
                    let msg = format!(
                        "{name:?} is also in spec.seccomp.rules[{k}] with a different action"
                    );
                    cx.err(format!("{field}.names[{j}]"), msg);
                }
                // An unconditional rule covers any conditional one for the same syscall.
                Some((_, prev)) if prev.clauses.is_empty() || clause.is_empty() => {
                    prev.clauses.clear()
                }
                Some((_, prev)) => prev.clauses.push(clause.clone()),
                None => {
                    let clauses = if clause.is_empty() {
                        Vec::new()
                    } else {
                        vec![clause.clone()]
                    };
                    // Outside its conditions a call gets what the base gives it unconditionally, else the default.
                    let otherwise = match rules.get(name) {
                        Some(b) if b.clauses.is_empty() => b.action,
                        _ => default,
                    };
                    own.insert(
                        name.clone(),
                        (
                            i,
                            SyscallRule {
                                clauses,
                                action,
                                otherwise,
                            },
                        ),
                    );
                }
            }
        }
    }
    for r in rules.values_mut().filter(|r| !r.clauses.is_empty()) {
        // Base calls outside their conditions get the policy's default, like any unlisted call.
        r.otherwise = default;
    }
    rules.extend(own.into_iter().map(|(n, (_, r))| (n, r)));
    let mut layer = NamedLayer {
        policy: cx.policy.clone(),
        mode,
        default,
        rules,
        log: mode == PolicyMode::EnforceAndLog,
    };
    if mode == PolicyMode::Audit {
        layer.default = layer.default.audited();
        for r in layer.rules.values_mut() {
            r.action = r.action.audited();
            r.otherwise = r.otherwise.audited();
        }
    }
    layer
}

fn conditions(cx: &mut Ctx<'_>, field: &str, r: &kitfleet_api::security::SeccompRule) -> Vec<Cond> {
    let mut out = Vec::new();
    for (k, a) in r.args.iter().enumerate() {
        let f = format!("{field}.args[{k}]");
        if a.index > 5 {
            cx.err(
                format!("{f}.index"),
                format!("argument index {} is not in 0-5", a.index),
            );
        }
        let op = match a.op {
            ArgOp::Eq => CmpOp::Eq,
            ArgOp::Ne => CmpOp::Ne,
            ArgOp::Lt => CmpOp::Lt,
            ArgOp::Le => CmpOp::Le,
            ArgOp::Gt => CmpOp::Gt,
            ArgOp::Ge => CmpOp::Ge,
            ArgOp::MaskedEq => CmpOp::MaskedEq,
        };
        match (op, a.value_two) {
            (CmpOp::MaskedEq, None) => cx.err(format!("{f}.valueTwo"), "masked-eq needs valueTwo"),
            (CmpOp::MaskedEq, Some(v2)) if v2 & !a.value != 0 => cx.err(
                format!("{f}.valueTwo"),
                "valueTwo has bits outside the mask (value): the rule can never match",
            ),
            (CmpOp::MaskedEq, _) | (_, None) => {}
            (_, Some(_)) => cx.err(
                format!("{f}.valueTwo"),
                "valueTwo is only valid with masked-eq",
            ),
        }
        out.push(Cond {
            index: a.index.min(5),
            op,
            value: a.value,
            value_two: a.value_two.unwrap_or(0),
        });
    }
    out
}

fn base_by_name(arches: &[Arch]) -> BTreeMap<String, SyscallRule> {
    let mut out = BTreeMap::new();
    for arch in arches {
        let names: BTreeMap<u32, &str> = arch.syscalls().into_iter().collect();
        for (nr, rule) in base::runtime_default(*arch) {
            out.entry(names[&nr].to_string()).or_insert(rule);
        }
    }
    out
}

fn bpf_layer(l: &NamedLayer, arch: Arch) -> SeccompLayer {
    let syscalls = l
        .rules
        .iter()
        .filter_map(|(name, r)| arch.lookup(name).map(|nr| (nr, r.clone())))
        .collect();
    let spec = FilterSpec {
        arch,
        default: l.default,
        syscalls,
    };
    SeccompLayer {
        policy: l.policy.clone(),
        mode: l.mode,
        log: l.log,
        program: generate(&spec),
    }
}

#[cfg(test)]
mod tests;
