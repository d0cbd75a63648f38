//! Fuzz checks for `kitfleet-sandbox`: the policy compiler from SecurityPolicy manifests, and its
//! seccomp code generator against its own reference semantics (differential).

use kitfleet_sandbox::cli::parse_manifests;
use kitfleet_sandbox::compile::{Options, compile};
use kitfleet_sandbox::launcher::native_layers;
use kitfleet_sandbox::oci::OciProfile;
use kitfleet_sandbox::policy::CompiledPolicy;
use kitfleet_sandbox::seccomp::bpf::{self, SeccompData};
use kitfleet_sandbox::seccomp::{Action, Arch, CmpOp, Cond, FilterSpec, SyscallRule, generate};

/// A fuzz target: its name and its check.
pub type Target = (&'static str, fn(&[u8]));

/// Every target of this file, for the corpus replay.
pub const TARGETS: &[Target] = &[
    ("policy_compile", policy_compile),
    ("seccomp_codegen", seccomp_codegen),
];

/// SecurityPolicy manifests (multi-document YAML, as `kitfleet-sandbox compile` reads them) →
/// compiled policy + OCI profile. What compiles must compile the same again, its files must read
/// back (the launcher's `CompiledPolicy::from_json`), and every BPF program must run to a verdict.
pub fn policy_compile(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policies) = parse_manifests("fuzz.yaml", text) else {
        return;
    };
    let opts = Options::default();
    let Ok(c) = compile(&policies, &opts) else {
        return;
    };
    assert_eq!(
        compile(&policies, &opts).ok().as_ref(),
        Some(&c),
        "compile is not deterministic"
    );
    let json = c.policy.to_json();
    let back = CompiledPolicy::from_json("policy.json", json.as_bytes())
        .unwrap_or_else(|e| panic!("the launcher refuses the compiler's policy file: {e}"));
    assert_eq!(back, c.policy, "policy.json round trip");
    let _ = native_layers(&back);
    let profile: OciProfile =
        serde_json::from_str(&c.profile.to_json()).expect("profile JSON reads back");
    assert_eq!(profile, c.profile, "profile round trip");
    let probes = probes_from(data);
    for (arch, layers) in &c.policy.seccomp {
        for l in layers {
            for p in &probes {
                let d = SeccompData {
                    arch: arch.audit_arch(),
                    ..*p
                };
                assert!(
                    bpf::run(&l.program, &d).is_some(),
                    "{arch} program of {} is malformed for {d:?}",
                    l.policy
                );
            }
        }
    }
}

fn probes_from(data: &[u8]) -> Vec<SeccompData> {
    let mut out: Vec<SeccompData> = (0..64u32)
        .map(|nr| SeccompData {
            nr: nr * 7,
            ..Default::default()
        })
        .collect();
    for w in data.chunks(8).take(64) {
        let mut b = [0u8; 8];
        b[..w.len()].copy_from_slice(w);
        let v = u64::from_le_bytes(b);
        out.push(SeccompData {
            nr: (v % 512) as u32,
            args: [v, !v, v >> 32, v << 32, 0, u64::MAX],
            ..Default::default()
        });
    }
    out
}

/// A byte cursor that yields zeros once the input is exhausted.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |v, i| v | u64::from(self.u8()) << (8 * i))
    }
    fn action(&mut self) -> Action {
        match self.u8() % 6 {
            0 => Action::Allow,
            1 => Action::Log,
            2 => Action::Errno(self.u16()),
            3 => Action::Trap,
            4 => Action::KillThread,
            _ => Action::KillProcess,
        }
    }
    fn cond(&mut self) -> Cond {
        let index = self.u8() % 6;
        let op = [
            CmpOp::Eq,
            CmpOp::Ne,
            CmpOp::Lt,
            CmpOp::Le,
            CmpOp::Gt,
            CmpOp::Ge,
            CmpOp::MaskedEq,
        ][usize::from(self.u8() % 7)];
        let bits = [64u8, 32, 16][usize::from(self.u8() % 3)];
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        Cond {
            index,
            op,
            value: self.u64() & mask,
            value_two: self.u64() & mask,
            bits,
        }
    }
}

/// Decodes a seccomp filter spec (architecture, default action, rules with OR-of-AND argument
/// conditions) from the input, generates its BPF program and runs it on probes at every rule's
/// boundaries: the program's verdict must be `FilterSpec::decide`'s, the reference semantics.
pub fn seccomp_codegen(data: &[u8]) {
    let mut b = Bytes(data);
    let arch = if b.u8() & 1 == 0 {
        Arch::X86_64
    } else {
        Arch::Aarch64
    };
    let mut spec = FilterSpec {
        arch,
        default: b.action(),
        syscalls: Default::default(),
    };
    let rules = b.u8() % 16;
    for _ in 0..rules {
        let nr = u32::from(b.u16() % 600);
        let action = b.action();
        let otherwise = b.action();
        let clauses = (0..b.u8() % 4)
            .map(|_| (0..1 + b.u8() % 3).map(|_| b.cond()).collect())
            .collect();
        spec.syscalls.insert(
            nr,
            SyscallRule {
                clauses,
                action,
                otherwise,
            },
        );
    }
    let prog = generate(&spec);
    let mut probes = vec![
        SeccompData {
            nr: 0,
            arch: 0,
            ..Default::default()
        },
        SeccompData {
            nr: 0x4000_0001,
            arch: arch.audit_arch(),
            ..Default::default()
        },
        SeccompData {
            nr: u32::MAX,
            arch: arch.audit_arch(),
            ..Default::default()
        },
        SeccompData {
            nr: 601,
            arch: arch.audit_arch(),
            ..Default::default()
        },
    ];
    for (nr, rule) in &spec.syscalls {
        for n in [nr.wrapping_sub(1), *nr, nr + 1] {
            probes.push(SeccompData {
                nr: n,
                arch: arch.audit_arch(),
                ..Default::default()
            });
        }
        for c in rule.clauses.iter().flatten() {
            for v in [
                c.value,
                c.value.wrapping_add(1),
                c.value.wrapping_sub(1),
                c.value_two,
                c.value | 1 << 40,
                c.value ^ 1 << 20,
            ] {
                let mut args = [0u64; 6];
                args[usize::from(c.index)] = v;
                probes.push(SeccompData {
                    nr: *nr,
                    arch: arch.audit_arch(),
                    ip: 0,
                    args,
                });
                // Every condition of the clause at its operand at once: a clause that can hold.
                let mut all = [b.u64(); 6];
                for k in rule.clauses.iter().flatten() {
                    all[usize::from(k.index)] = if k.op == CmpOp::MaskedEq {
                        k.value_two
                    } else {
                        k.value
                    };
                }
                probes.push(SeccompData {
                    nr: *nr,
                    arch: arch.audit_arch(),
                    ip: 0,
                    args: all,
                });
            }
        }
    }
    for d in &probes {
        assert_eq!(
            bpf::run(&prog, d),
            Some(spec.decide(d)),
            "program and reference disagree on {d:?} for {spec:?}"
        );
    }
}
