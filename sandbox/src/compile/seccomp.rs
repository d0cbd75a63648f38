//! SecurityPolicy `spec.seccomp` → rules by syscall name (a [`NamedLayer`]) → one BPF program per architecture.

use super::{CompileError, Ctx, NamedLayer};
use crate::base;
use crate::policy::SeccompLayer;
use crate::seccomp::{Action, Arch, CmpOp, Cond, FilterSpec, SyscallRule, args, generate};
use kitfleet_api::security::{ArgOp, PolicyMode, SeccompAction, SeccompBase, SeccompPolicy};
use std::collections::BTreeMap;

/// The launcher installs the filters in order, then execs: every filter must let `execve`
/// through, and every filter but the last must let the next `seccomp()` through.
pub(super) fn launcher_can_finish(layers: &[NamedLayer], errors: &mut Vec<CompileError>) {
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

pub(super) fn seccomp_layer(
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
            let clause = narrowed(cx, &field, name, &clause);
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
        out.push(Cond::wide(
            a.index.min(5),
            op,
            a.value,
            a.value_two.unwrap_or(0),
        ));
    }
    out
}

/// `clause` as it applies to `name`: conditions on arguments the kernel truncates (an `int`, a
/// `umode_t`) compare only the bits the kernel uses, so the upper half of the register cannot
/// steer a call past a rule. A value that does not fit the argument is an error.
fn narrowed(cx: &mut Ctx<'_>, field: &str, name: &str, clause: &[Cond]) -> Vec<Cond> {
    let mut out = Vec::with_capacity(clause.len());
    for (k, c) in clause.iter().enumerate() {
        let bits = args::arg_bits(name, c.index);
        if bits == 64 {
            out.push(*c);
            continue;
        }
        let kind = if bits == 32 {
            "a 32-bit int"
        } else {
            "a 16-bit umode_t"
        };
        let mut fit = |key: &str, v: u64| {
            args::narrow(v, bits).unwrap_or_else(|| {
                cx.err(
                    format!("{field}.args[{k}].{key}"),
                    format!(
                        "argument {} of {name} is {kind} (the kernel uses only the low {bits} bits): {v:#x} does not fit",
                        c.index
                    ),
                );
                0
            })
        };
        let value = fit("value", c.value);
        let value_two = if c.op == CmpOp::MaskedEq {
            fit("valueTwo", c.value_two)
        } else {
            0
        };
        out.push(Cond {
            value,
            value_two,
            bits,
            ..*c
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

pub(super) fn bpf_layer(l: &NamedLayer, arch: Arch) -> SeccompLayer {
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
