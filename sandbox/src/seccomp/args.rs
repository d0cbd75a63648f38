//! Argument widths: which syscall arguments the kernel truncates to 32 (or 16) bits.
//!
//! The data is `narrow_args.txt` (its header names the source); a rule on a narrow argument
//! compares only the bits the kernel uses, so a caller cannot slip past a condition by setting
//! the upper half of the register (`socket(0x1_00000002, …)` is `socket(AF_INET, …)`).

use std::collections::HashMap;
use std::sync::OnceLock;

const TABLE: &str = include_str!("narrow_args.txt");

fn table() -> &'static HashMap<&'static str, [u8; 6]> {
    static T: OnceLock<HashMap<&'static str, [u8; 6]>> = OnceLock::new();
    T.get_or_init(|| {
        let mut out = HashMap::new();
        for line in TABLE
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let mut words = line.split_whitespace();
            let name = words.next().expect("a name per line");
            let mut bits = [64u8; 6];
            for w in words {
                let (i, b) = w.split_once(':').expect("index:bits");
                bits[i.parse::<usize>().expect("index")] = b.parse().expect("bits");
            }
            out.insert(name, bits);
        }
        out
    })
}

/// How many low bits of argument `index` of `syscall` the kernel uses: 16, 32 or 64.
pub fn arg_bits(syscall: &str, index: u8) -> u8 {
    table()
        .get(syscall)
        .and_then(|b| b.get(index as usize).copied())
        .unwrap_or(64)
}

/// The mask of an argument `bits` wide.
pub const fn mask(bits: u8) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// `v` as the kernel sees it in an argument `bits` wide, if `v` fits: zero-extended, or for
/// 32-bit arguments also sign-extended (how C callers pass a negative `int`, e.g. `AT_FDCWD`).
pub fn narrow(v: u64, bits: u8) -> Option<u64> {
    let m = mask(bits);
    let sign_extended = bits == 32 && v >= 0xffff_ffff_8000_0000;
    (v <= m || sign_extended).then_some(v & m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_knows_int_arguments() {
        assert_eq!(
            (0..3).map(|i| arg_bits("socket", i)).collect::<Vec<_>>(),
            [32, 32, 32]
        );
        assert_eq!(arg_bits("lseek", 0), 32, "unsigned int fd");
        assert_eq!(arg_bits("lseek", 1), 64, "off_t offset");
        assert_eq!(arg_bits("mkdirat", 2), 16, "umode_t");
        assert_eq!(arg_bits("clone", 0), 64, "unsigned long flags");
        assert_eq!(arg_bits("no_such_call", 0), 64);
        assert_eq!(narrow(2, 32), Some(2));
        assert_eq!(narrow(0xffff_ffff_ffff_ff9c, 32), Some(0xffff_ff9c));
        assert_eq!(narrow(0x1_0000_0002, 32), None);
        assert_eq!(narrow(0x1_0000, 16), None);
        assert_eq!(narrow(u64::MAX, 64), Some(u64::MAX));
    }

    #[test]
    fn every_name_in_the_table_is_a_syscall() {
        use super::super::Arch;
        for name in table().keys() {
            assert!(
                Arch::ALL.iter().any(|a| a.lookup(name).is_some()) || KNOWN_NEWER.contains(name),
                "{name}"
            );
        }
    }

    /// Calls of Linux 6.17 that the `syscalls` crate's table predates.
    const KNOWN_NEWER: &[&str] = &[];
}
