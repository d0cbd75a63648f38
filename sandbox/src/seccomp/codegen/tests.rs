use super::*;
use crate::seccomp::bpf::run;

/// xorshift64*: deterministic pseudo-random numbers for table-driven checks.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const OPS: [CmpOp; 7] = [
    CmpOp::Eq,
    CmpOp::Ne,
    CmpOp::Lt,
    CmpOp::Le,
    CmpOp::Gt,
    CmpOp::Ge,
    CmpOp::MaskedEq,
];
const ACTIONS: [Action; 6] = [
    Action::Allow,
    Action::Log,
    Action::Errno(1),
    Action::Trap,
    Action::KillThread,
    Action::KillProcess,
];

fn interesting(rng: &mut Rng) -> u64 {
    match rng.below(5) {
        0 => rng.below(4),
        1 => 0xffff_ffff + rng.below(3),
        2 => u64::MAX - rng.below(2),
        3 => (rng.below(4) << 32) | rng.below(4),
        _ => rng.next(),
    }
}

fn random_spec(rng: &mut Rng, arch: Arch) -> FilterSpec {
    let table = arch.syscalls();
    let mut syscalls = BTreeMap::new();
    for _ in 0..rng.below(300) {
        let (nr, _) = table[rng.below(table.len() as u64) as usize];
        let action = ACTIONS[rng.below(6) as usize];
        let rule = if rng.below(4) == 0 {
            let clauses = (0..1 + rng.below(3))
                .map(|_| {
                    (0..1 + rng.below(3))
                        .map(|_| {
                            // Narrow conditions keep their operands within the argument's width.
                            let bits = [64, 64, 32, 16][rng.below(4) as usize];
                            let m = crate::seccomp::args::mask(bits);
                            let value = interesting(rng) & m;
                            Cond {
                                index: rng.below(6) as u8,
                                op: OPS[rng.below(7) as usize],
                                value,
                                value_two: interesting(rng) & value,
                                bits,
                            }
                        })
                        .collect()
                })
                .collect();
            SyscallRule {
                clauses,
                action,
                otherwise: ACTIONS[rng.below(6) as usize],
            }
        } else {
            SyscallRule::always(action)
        };
        syscalls.insert(nr, rule);
    }
    FilterSpec {
        arch,
        default: ACTIONS[rng.below(6) as usize],
        syscalls,
    }
}

fn probe_args(rng: &mut Rng, rule: Option<&SyscallRule>) -> [u64; 6] {
    let mut args = [0u64; 6];
    for a in &mut args {
        *a = interesting(rng);
    }
    // Aim at the condition operands (and one off them) to cover every branch.
    if let Some(r) = rule {
        for c in r.clauses.iter().flatten() {
            let v = if c.op == CmpOp::MaskedEq {
                c.value_two
            } else {
                c.value
            };
            args[c.index as usize] = match rng.below(3) {
                0 => v,
                1 => v.wrapping_add(1),
                _ => v.wrapping_sub(1),
            };
            // Bits the kernel ignores must not change the outcome of a narrow condition.
            if c.bits < 64 && rng.below(2) == 0 {
                args[c.index as usize] |= rng.next() & !crate::seccomp::args::mask(c.bits);
            }
        }
    }
    args
}

#[test]
fn generated_programs_match_the_reference_semantics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..120 {
        let arch = Arch::ALL[round % 2];
        let spec = random_spec(&mut rng, arch);
        let prog = generate(&spec);
        assert!(prog.len() <= crate::seccomp::bpf::MAX_INSNS);
        // Every number up to the table's end, assigned or not, and a few beyond.
        let mut nrs: Vec<u32> = (0..=arch.max_nr()).collect();
        nrs.extend([
            arch.max_nr() + 1,
            5000,
            X32_SYSCALL_BIT,
            X32_SYSCALL_BIT + 1,
            0x7fff_ffff,
            0x8000_0000,
            u32::MAX,
        ]);
        for nr in nrs {
            for _ in 0..4 {
                let args = probe_args(&mut rng, spec.syscalls.get(&nr));
                let d = SeccompData {
                    nr,
                    arch: arch.audit_arch(),
                    ip: 0,
                    args,
                };
                assert_eq!(
                    run(&prog, &d),
                    Some(spec.decide(&d)),
                    "round {round} nr {nr} args {args:x?}"
                );
            }
        }
    }
}

#[test]
fn wrong_arch_and_x32_are_killed() {
    let spec = FilterSpec {
        arch: Arch::X86_64,
        default: Action::Allow,
        syscalls: BTreeMap::new(),
    };
    let prog = generate(&spec);
    let kill = Action::KillProcess.ret();
    let i386 = SeccompData {
        nr: 20,
        arch: 0x4000_0003,
        ..Default::default()
    };
    assert_eq!(run(&prog, &i386), Some(kill));
    let x32 = SeccompData {
        nr: X32_SYSCALL_BIT | 39,
        arch: Arch::X86_64.audit_arch(),
        ..Default::default()
    };
    assert_eq!(run(&prog, &x32), Some(kill));
    let ok = SeccompData {
        nr: 39,
        arch: Arch::X86_64.audit_arch(),
        ..Default::default()
    };
    assert_eq!(run(&prog, &ok), Some(Action::Allow.ret()));
}

#[test]
fn allow_list_collapses_into_few_ranges() {
    // Allow every x86_64 syscall but a handful: the search has a few dozen ranges, not ~460 leaves.
    let arch = Arch::X86_64;
    let denied = [
        "ptrace",
        "mount",
        "kexec_load",
        "bpf",
        "reboot",
        "init_module",
    ];
    let syscalls = arch
        .syscalls()
        .into_iter()
        .filter(|(_, n)| !denied.contains(n))
        .map(|(nr, _)| (nr, SyscallRule::always(Action::Allow)))
        .collect();
    let spec = FilterSpec {
        arch,
        default: Action::Errno(1),
        syscalls,
    };
    assert!(spec.ranges().len() < 20, "{:?}", spec.ranges());
    let prog = generate(&spec);
    assert!(prog.len() < 50, "{}", prog.len());
}

#[test]
fn sixty_four_bit_comparisons_use_both_halves() {
    let c = |op, value| Cond::wide(1, op, value, 0);
    let rule = SyscallRule {
        clauses: vec![vec![c(CmpOp::Gt, 0x1_0000_0000)]],
        action: Action::Errno(22),
        otherwise: Action::Allow,
    };
    let spec = FilterSpec {
        arch: Arch::X86_64,
        default: Action::Allow,
        syscalls: BTreeMap::from([(8, rule)]),
    };
    let prog = generate(&spec);
    let at = |off: u64| {
        let d = SeccompData {
            nr: 8,
            arch: Arch::X86_64.audit_arch(),
            ip: 0,
            args: [0, off, 0, 0, 0, 0],
        };
        run(&prog, &d).unwrap()
    };
    assert_eq!(at(0x1_0000_0001), Action::Errno(22).ret());
    assert_eq!(at(0x2_0000_0000), Action::Errno(22).ret());
    assert_eq!(at(0x1_0000_0000), Action::Allow.ret());
    assert_eq!(at(0xffff_ffff), Action::Allow.ret());
}

#[test]
fn runtime_default_base_is_a_few_dozen_ranges() {
    for arch in Arch::ALL {
        let spec = FilterSpec {
            arch,
            default: Action::Errno(1),
            syscalls: crate::base::runtime_default(arch),
        };
        let n = spec.ranges().len();
        eprintln!("{arch}: {n} ranges, {} instructions", generate(&spec).len());
        assert!(n < 100, "{arch}: {n} ranges");
    }
}
