//! Classic BPF as seccomp uses it: instructions, a tiny assembler with forward labels that widens
//! out-of-range conditional jumps, and an interpreter used by the tests to check generated programs.

use serde::{Deserialize, Serialize};

/// `BPF_LD | BPF_W | BPF_ABS`: load a 32-bit word of `seccomp_data` into A.
pub const LD_W_ABS: u16 = 0x20;
/// `BPF_ALU | BPF_AND | BPF_K`.
pub const ALU_AND_K: u16 = 0x54;
/// `BPF_JMP | BPF_JA`.
pub const JMP_JA: u16 = 0x05;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
pub const JMP_JEQ_K: u16 = 0x15;
/// `BPF_JMP | BPF_JGT | BPF_K`.
pub const JMP_JGT_K: u16 = 0x25;
/// `BPF_JMP | BPF_JGE | BPF_K`.
pub const JMP_JGE_K: u16 = 0x35;
/// `BPF_RET | BPF_K`.
pub const RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
pub const OFF_NR: u32 = 0;
/// Offset of `arch`.
pub const OFF_ARCH: u32 = 4;
/// Offset of `args[0]`; argument `i` starts at `OFF_ARGS + 8 * i` (low word first on little-endian).
pub const OFF_ARGS: u32 = 16;

/// One `struct sock_filter`. Serialised as `[code, jt, jf, k]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u16, u8, u8, u32)", into = "(u16, u8, u8, u32)")]
#[repr(C)]
pub struct SockFilter {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant operand.
    pub k: u32,
}

impl From<(u16, u8, u8, u32)> for SockFilter {
    fn from((code, jt, jf, k): (u16, u8, u8, u32)) -> Self {
        SockFilter { code, jt, jf, k }
    }
}

impl From<SockFilter> for (u16, u8, u8, u32) {
    fn from(f: SockFilter) -> Self {
        (f.code, f.jt, f.jf, f.k)
    }
}

impl SockFilter {
    /// A non-jump statement.
    pub const fn stmt(code: u16, k: u32) -> Self {
        SockFilter {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }
}

/// The kernel's limit on instructions per filter (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// A forward jump target inside an [`Asm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

#[derive(Debug, Clone, Copy)]
enum Item {
    Stmt(SockFilter),
    Jcc {
        code: u16,
        k: u32,
        jt: Label,
        jf: Label,
    },
    Ja(Label),
    Bind(Label),
}

/// An assembler for forward-only programs. Conditional jumps take labels; jumps farther than
/// 255 instructions are widened into `jcc 0,1; ja T; ja F` when the program is finished.
#[derive(Debug, Default)]
pub struct Asm {
    items: Vec<Item>,
    labels: usize,
}

impl Asm {
    /// A new, empty program.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh label, bound later with [`Asm::bind`].
    pub fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    /// Binds `l` to the next instruction.
    pub fn bind(&mut self, l: Label) {
        self.items.push(Item::Bind(l));
    }

    /// `A = seccomp_data[off]`.
    pub fn ld(&mut self, off: u32) {
        self.items.push(Item::Stmt(SockFilter::stmt(LD_W_ABS, off)));
    }

    /// `A &= k`.
    pub fn and(&mut self, k: u32) {
        self.items.push(Item::Stmt(SockFilter::stmt(ALU_AND_K, k)));
    }

    /// `return k`.
    pub fn ret(&mut self, k: u32) {
        self.items.push(Item::Stmt(SockFilter::stmt(RET_K, k)));
    }

    /// Conditional jump (`code` is one of the `JMP_*_K` opcodes).
    pub fn jcc(&mut self, code: u16, k: u32, jt: Label, jf: Label) {
        self.items.push(Item::Jcc { code, k, jt, jf });
    }

    /// Unconditional jump.
    pub fn ja(&mut self, l: Label) {
        self.items.push(Item::Ja(l));
    }

    /// Resolves labels and returns the program. Panics only on a programming error in the code
    /// generator (an unbound label or a backward jump), never on policy input.
    pub fn finish(self) -> Vec<SockFilter> {
        let mut wide = vec![false; self.items.len()];
        loop {
            let (pos, at) = self.layout(&wide);
            let mut changed = false;
            for (i, item) in self.items.iter().enumerate() {
                if let Item::Jcc { jt, jf, .. } = item
                    && !wide[i]
                {
                    let far = |l: &Label| at[l.0].expect("bound label") - (pos[i] + 1) > 255;
                    if far(jt) || far(jf) {
                        wide[i] = true;
                        changed = true;
                    }
                }
            }
            if !changed {
                return self.emit(&wide, &pos, &at);
            }
        }
    }

    fn size(item: &Item, wide: bool) -> usize {
        match item {
            Item::Bind(_) => 0,
            Item::Jcc { .. } if wide => 3,
            _ => 1,
        }
    }

    fn layout(&self, wide: &[bool]) -> (Vec<usize>, Vec<Option<usize>>) {
        let mut pos = Vec::with_capacity(self.items.len());
        let mut at = vec![None; self.labels];
        let mut p = 0;
        for (i, item) in self.items.iter().enumerate() {
            pos.push(p);
            if let Item::Bind(l) = item {
                at[l.0] = Some(p);
            }
            p += Self::size(item, wide[i]);
        }
        (pos, at)
    }

    fn emit(&self, wide: &[bool], pos: &[usize], at: &[Option<usize>]) -> Vec<SockFilter> {
        let mut out = Vec::new();
        let off = |l: &Label, from: usize| -> usize {
            let to = at[l.0].expect("bound label");
            assert!(to > from, "backward jump in generated BPF");
            to - from - 1
        };
        for (i, item) in self.items.iter().enumerate() {
            match *item {
                Item::Stmt(s) => out.push(s),
                Item::Bind(_) => {}
                Item::Ja(l) => out.push(SockFilter::stmt(JMP_JA, off(&l, pos[i]) as u32)),
                Item::Jcc { code, k, jt, jf } if wide[i] => {
                    out.push(SockFilter {
                        code,
                        jt: 0,
                        jf: 1,
                        k,
                    });
                    out.push(SockFilter::stmt(JMP_JA, off(&jt, pos[i] + 1) as u32));
                    out.push(SockFilter::stmt(JMP_JA, off(&jf, pos[i] + 2) as u32));
                }
                Item::Jcc { code, k, jt, jf } => out.push(SockFilter {
                    code,
                    jt: off(&jt, pos[i]) as u8,
                    jf: off(&jf, pos[i]) as u8,
                    k,
                }),
            }
        }
        out
    }
}

/// The input of a seccomp filter (`struct seccomp_data`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeccompData {
    /// Syscall number.
    pub nr: u32,
    /// `AUDIT_ARCH_*` of the calling convention.
    pub arch: u32,
    /// Instruction pointer.
    pub ip: u64,
    /// The six arguments.
    pub args: [u64; 6],
}

impl SeccompData {
    fn word(&self, off: u32) -> Option<u32> {
        match off {
            0 => Some(self.nr),
            4 => Some(self.arch),
            8 => Some(self.ip as u32),
            12 => Some((self.ip >> 32) as u32),
            16..=60 if off.is_multiple_of(4) => {
                let a = self.args[((off - 16) / 8) as usize];
                Some(if off.is_multiple_of(8) {
                    a as u32
                } else {
                    (a >> 32) as u32
                })
            }
            _ => None,
        }
    }
}

/// Runs `prog` on `data` the way the kernel does, for the opcodes this crate emits.
/// Returns `None` for a malformed program (unknown opcode, jump or load out of range).
pub fn run(prog: &[SockFilter], data: &SeccompData) -> Option<u32> {
    let mut a: u32 = 0;
    let mut pc = 0usize;
    loop {
        let ins = prog.get(pc)?;
        pc += 1;
        match ins.code {
            LD_W_ABS => a = data.word(ins.k)?,
            ALU_AND_K => a &= ins.k,
            RET_K => return Some(ins.k),
            JMP_JA => pc += ins.k as usize,
            JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K => {
                let taken = match ins.code {
                    JMP_JEQ_K => a == ins.k,
                    JMP_JGT_K => a > ins.k,
                    _ => a >= ins.k,
                };
                pc += if taken { ins.jt } else { ins.jf } as usize;
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_jumps_are_widened_and_still_land() {
        let mut asm = Asm::new();
        let far = asm.label();
        let near = asm.label();
        asm.ld(OFF_NR);
        asm.jcc(JMP_JEQ_K, 7, far, near);
        asm.bind(near);
        for _ in 0..300 {
            asm.ld(OFF_ARCH);
        }
        asm.ret(1);
        asm.bind(far);
        asm.ret(2);
        let prog = asm.finish();
        assert_eq!(prog.len(), 1 + 3 + 300 + 2);
        let hit = SeccompData {
            nr: 7,
            ..Default::default()
        };
        let miss = SeccompData {
            nr: 8,
            ..Default::default()
        };
        assert_eq!(run(&prog, &hit), Some(2));
        assert_eq!(run(&prog, &miss), Some(1));
    }

    #[test]
    fn serialises_as_tuples() {
        let f = SockFilter {
            code: 0x15,
            jt: 1,
            jf: 2,
            k: 3,
        };
        assert_eq!(serde_json::to_string(&f).unwrap(), "[21,1,2,3]");
        assert_eq!(serde_json::from_str::<SockFilter>("[21,1,2,3]").unwrap(), f);
    }

    #[test]
    fn interpreter_rejects_malformed_programs() {
        let data = SeccompData::default();
        assert_eq!(run(&[SockFilter::stmt(0xff, 0)], &data), None);
        assert_eq!(run(&[SockFilter::stmt(JMP_JA, 5)], &data), None);
        assert_eq!(run(&[SockFilter::stmt(LD_W_ABS, 64)], &data), None);
    }
}
