//! Seccomp BPF generation.
//!
//! Layout of every program:
//! 1. `A = arch; if A != AUDIT_ARCH → KILL_PROCESS` (stops i386 `int 0x80` calls from a 64-bit process).
//! 2. `A = nr`, then a binary search over *ranges* of syscall numbers that share one outcome
//!    (x32 numbers on x86_64 are one such range, answered with `KILL_PROCESS`). A denied call
//!    therefore costs ⌈log2(ranges)⌉ comparisons, fewer than a search over single numbers.
//! 3. Leaves return an action, or, for a syscall with argument conditions, test its clauses
//!    (OR of ANDs over 64-bit arguments compared as two 32-bit halves) and return.

use super::action::Action;
use super::arch::{Arch, X32_SYSCALL_BIT};
use super::bpf::{
    Asm, JMP_JEQ_K, JMP_JGE_K, JMP_JGT_K, Label, OFF_ARCH, OFF_ARGS, OFF_NR, SeccompData,
    SockFilter,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Comparison of one 64-bit syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CmpOp {
    /// `arg == value`
    Eq,
    /// `arg != value`
    Ne,
    /// `arg < value` (unsigned)
    Lt,
    /// `arg <= value`
    Le,
    /// `arg > value`
    Gt,
    /// `arg >= value`
    Ge,
    /// `arg & value == value_two`
    MaskedEq,
}

/// One argument condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cond {
    /// Argument index, 0–5.
    pub index: u8,
    /// Comparison.
    pub op: CmpOp,
    /// Operand (the mask for `MaskedEq`), already within `bits`.
    pub value: u64,
    /// Expected masked value for `MaskedEq`; unused otherwise.
    pub value_two: u64,
    /// How many low bits of the argument the kernel uses (64, or 32/16 for `int`/`umode_t`
    /// arguments, see [`super::args`]); only those are compared.
    pub bits: u8,
}

impl Cond {
    /// A condition on a full 64-bit argument.
    pub const fn wide(index: u8, op: CmpOp, value: u64, value_two: u64) -> Self {
        Cond {
            index,
            op,
            value,
            value_two,
            bits: 64,
        }
    }

    /// Evaluates the condition (reference semantics for tests and merging).
    pub fn matches(&self, args: &[u64; 6]) -> bool {
        let a = args[self.index as usize] & super::args::mask(self.bits);
        match self.op {
            CmpOp::Eq => a == self.value,
            CmpOp::Ne => a != self.value,
            CmpOp::Lt => a < self.value,
            CmpOp::Le => a <= self.value,
            CmpOp::Gt => a > self.value,
            CmpOp::Ge => a >= self.value,
            CmpOp::MaskedEq => a & self.value == self.value_two,
        }
    }
}

/// What a filter does with one syscall: `action` if any clause (an AND of conditions) holds,
/// else `otherwise`. No clauses means `action` unconditionally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyscallRule {
    /// OR of ANDs.
    pub clauses: Vec<Vec<Cond>>,
    /// Action when a clause holds.
    pub action: Action,
    /// Action when none holds.
    pub otherwise: Action,
}

impl SyscallRule {
    /// An unconditional rule.
    pub fn always(action: Action) -> Self {
        SyscallRule {
            clauses: Vec::new(),
            action,
            otherwise: action,
        }
    }

    /// Reference semantics.
    pub fn decide(&self, args: &[u64; 6]) -> Action {
        if self.clauses.is_empty()
            || self
                .clauses
                .iter()
                .any(|c| c.iter().all(|k| k.matches(args)))
        {
            self.action
        } else {
            self.otherwise
        }
    }
}

/// The decision table of one filter for one architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterSpec {
    /// Target ABI.
    pub arch: Arch,
    /// Action for syscalls without a rule.
    pub default: Action,
    /// Rules by syscall number.
    pub syscalls: BTreeMap<u32, SyscallRule>,
}

/// Leaf of the number search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaf {
    Ret(u32),
    Rule(u32),
}

impl FilterSpec {
    /// Reference semantics of the program [`generate`] emits (the return value), exact for
    /// every syscall number.
    pub fn decide(&self, d: &SeccompData) -> u32 {
        if d.arch != self.arch.audit_arch() {
            return Action::KillProcess.ret();
        }
        if self.arch == Arch::X86_64 && (X32_SYSCALL_BIT..0x8000_0000).contains(&d.nr) {
            return Action::KillProcess.ret();
        }
        match self.syscalls.get(&d.nr) {
            Some(r) => r.decide(&d.args).ret(),
            None => self.default.ret(),
        }
    }

    fn leaf_of(&self, nr: u32) -> Leaf {
        match self.syscalls.get(&nr) {
            Some(r) if r.clauses.is_empty() || r.action == r.otherwise => Leaf::Ret(r.action.ret()),
            Some(_) => Leaf::Rule(nr),
            None => Leaf::Ret(self.default.ret()),
        }
    }

    /// The syscall-number axis cut into ranges `[start, next start)` with one leaf each.
    /// Numbers the table leaves unassigned get the default action like any unlisted call: a
    /// kernel newer than the table may implement them (x86_64's 335–423 gap holds `uretprobe`
    /// and `uprobe` on 6.11+).
    fn ranges(&self) -> Vec<(u32, Leaf)> {
        let mut out: Vec<(u32, Leaf)> = Vec::new();
        let top = self
            .arch
            .max_nr()
            .max(self.syscalls.keys().last().copied().unwrap_or(0));
        fn push(out: &mut Vec<(u32, Leaf)>, start: u32, leaf: Leaf) {
            match out.last() {
                Some(&(_, last)) if last == leaf && !matches!(leaf, Leaf::Rule(_)) => {}
                _ => out.push((start, leaf)),
            }
        }
        let default = Leaf::Ret(self.default.ret());
        for nr in 0..=top {
            push(&mut out, nr, self.leaf_of(nr));
        }
        let kill = Leaf::Ret(Action::KillProcess.ret());
        push(&mut out, top + 1, default);
        if self.arch == Arch::X86_64 {
            push(&mut out, X32_SYSCALL_BIT, kill);
            push(&mut out, 0x8000_0000, default);
        }
        out
    }
}

/// Generates the BPF program for `spec`.
pub fn generate(spec: &FilterSpec) -> Vec<SockFilter> {
    let mut asm = Asm::new();
    let bad_arch = asm.label();
    let ok_arch = asm.label();
    asm.ld(OFF_ARCH);
    asm.jcc(JMP_JEQ_K, spec.arch.audit_arch(), ok_arch, bad_arch);
    asm.bind(ok_arch);
    asm.ld(OFF_NR);
    let ranges = spec.ranges();
    tree(&mut asm, spec, &ranges);
    asm.bind(bad_arch);
    asm.ret(Action::KillProcess.ret());
    asm.finish()
}

fn tree(asm: &mut Asm, spec: &FilterSpec, ranges: &[(u32, Leaf)]) {
    if let [(_, leaf)] = ranges {
        match *leaf {
            Leaf::Ret(k) => asm.ret(k),
            Leaf::Rule(nr) => rule(asm, &spec.syscalls[&nr]),
        }
        return;
    }
    let mid = ranges.len() / 2;
    let (lo, hi) = (asm.label(), asm.label());
    asm.jcc(JMP_JGE_K, ranges[mid].0, hi, lo);
    asm.bind(lo);
    tree(asm, spec, &ranges[..mid]);
    asm.bind(hi);
    tree(asm, spec, &ranges[mid..]);
}

fn rule(asm: &mut Asm, r: &SyscallRule) {
    for clause in &r.clauses {
        let next = asm.label();
        for c in clause {
            let pass = asm.label();
            cond(asm, c, pass, next);
            asm.bind(pass);
        }
        asm.ret(r.action.ret());
        asm.bind(next);
    }
    asm.ret(r.otherwise.ret());
}

/// Emits a test of `c` that jumps to `pass` or `fail`.
fn cond(asm: &mut Asm, c: &Cond, pass: Label, fail: Label) {
    if c.bits < 64 {
        return narrow_cond(asm, c, pass, fail);
    }
    let lo_off = OFF_ARGS + 8 * c.index as u32;
    let hi_off = lo_off + 4;
    let (vhi, vlo) = ((c.value >> 32) as u32, c.value as u32);
    let next = asm.label();
    match c.op {
        CmpOp::Eq | CmpOp::Ne => {
            let (t, f) = if c.op == CmpOp::Eq {
                (pass, fail)
            } else {
                (fail, pass)
            };
            asm.ld(hi_off);
            asm.jcc(JMP_JEQ_K, vhi, next, f);
            asm.bind(next);
            asm.ld(lo_off);
            asm.jcc(JMP_JEQ_K, vlo, t, f);
        }
        CmpOp::Gt | CmpOp::Ge | CmpOp::Lt | CmpOp::Le => {
            // Greater-than family; Lt/Le are the negations of Ge/Gt.
            let (t, f) = match c.op {
                CmpOp::Gt | CmpOp::Ge => (pass, fail),
                _ => (fail, pass),
            };
            let lo_code = if matches!(c.op, CmpOp::Ge | CmpOp::Lt) {
                JMP_JGE_K
            } else {
                JMP_JGT_K
            };
            let eq = asm.label();
            asm.ld(hi_off);
            asm.jcc(JMP_JGT_K, vhi, t, eq);
            asm.bind(eq);
            asm.jcc(JMP_JEQ_K, vhi, next, f);
            asm.bind(next);
            asm.ld(lo_off);
            asm.jcc(lo_code, vlo, t, f);
        }
        CmpOp::MaskedEq => {
            let (mhi, mlo) = vhi_vlo(c.value);
            let (ehi, elo) = vhi_vlo(c.value_two);
            asm.ld(hi_off);
            asm.and(mhi);
            asm.jcc(JMP_JEQ_K, ehi, next, fail);
            asm.bind(next);
            asm.ld(lo_off);
            asm.and(mlo);
            asm.jcc(JMP_JEQ_K, elo, pass, fail);
        }
    }
}

/// A condition on an argument the kernel truncates: only the low word (masked to `bits`).
fn narrow_cond(asm: &mut Asm, c: &Cond, pass: Label, fail: Label) {
    let m = super::args::mask(c.bits) as u32;
    asm.ld(OFF_ARGS + 8 * c.index as u32);
    let v = c.value as u32 & m;
    let (code, k, t, f) = match c.op {
        CmpOp::Eq => (JMP_JEQ_K, v, pass, fail),
        CmpOp::Ne => (JMP_JEQ_K, v, fail, pass),
        CmpOp::Gt => (JMP_JGT_K, v, pass, fail),
        CmpOp::Ge => (JMP_JGE_K, v, pass, fail),
        CmpOp::Lt => (JMP_JGE_K, v, fail, pass),
        CmpOp::Le => (JMP_JGT_K, v, fail, pass),
        CmpOp::MaskedEq => {
            asm.and(v);
            (JMP_JEQ_K, c.value_two as u32 & v, pass, fail)
        }
    };
    if m != u32::MAX && c.op != CmpOp::MaskedEq {
        asm.and(m);
    }
    asm.jcc(code, k, t, f);
}

fn vhi_vlo(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

#[cfg(test)]
mod tests;
