//! Architectures the compiler emits filters for, and their syscall tables (crate `syscalls`).

use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// A syscall ABI the compiler knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// `AUDIT_ARCH_X86_64`.
    #[serde(rename = "x86_64")]
    X86_64,
    /// `AUDIT_ARCH_AARCH64`.
    Aarch64,
}

/// `__X32_SYSCALL_BIT`: x86_64 syscall numbers with this bit set use the x32 ABI.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

impl Arch {
    /// Every architecture, in the order they appear in compiled files.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The architecture this binary was built for, if the compiler knows it.
    pub fn native() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::Aarch64)
        } else {
            None
        }
    }

    /// `AUDIT_ARCH_*` value seen in `seccomp_data.arch`.
    pub const fn audit_arch(self) -> u32 {
        match self {
            // EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
            Arch::X86_64 => 0xc000_003e,
            // EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
            Arch::Aarch64 => 0xc000_00b7,
        }
    }

    /// The name libseccomp and the OCI runtime spec use.
    pub const fn oci_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "SCMP_ARCH_X86_64",
            Arch::Aarch64 => "SCMP_ARCH_AARCH64",
        }
    }

    /// Short name (`x86_64`, `aarch64`).
    pub const fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Looks a syscall up by name.
    pub fn lookup(self, name: &str) -> Option<u32> {
        match self {
            Arch::X86_64 => syscalls::x86_64::Sysno::from_str(name)
                .ok()
                .map(|s| s.id() as u32),
            Arch::Aarch64 => syscalls::aarch64::Sysno::from_str(name)
                .ok()
                .map(|s| s.id() as u32),
        }
    }

    /// Every syscall of the table as (number, name).
    pub fn syscalls(self) -> Vec<(u32, &'static str)> {
        match self {
            Arch::X86_64 => syscalls::x86_64::Sysno::iter()
                .map(|s| (s.id() as u32, s.name()))
                .collect(),
            Arch::Aarch64 => syscalls::aarch64::Sysno::iter()
                .map(|s| (s.id() as u32, s.name()))
                .collect(),
        }
    }

    /// The highest syscall number in the table.
    pub fn max_nr(self) -> u32 {
        match self {
            Arch::X86_64 => syscalls::x86_64::Sysno::last().id() as u32,
            Arch::Aarch64 => syscalls::aarch64::Sysno::last().id() as u32,
        }
    }

    /// Whether `nr` is a syscall of the table.
    pub fn is_assigned(self, nr: u32) -> bool {
        match self {
            Arch::X86_64 => syscalls::x86_64::Sysno::new(nr as usize).is_some(),
            Arch::Aarch64 => syscalls::aarch64::Sysno::new(nr as usize).is_some(),
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_know_the_numbers() {
        assert_eq!(Arch::X86_64.lookup("write"), Some(1));
        assert_eq!(Arch::Aarch64.lookup("write"), Some(64));
        assert_eq!(Arch::X86_64.lookup("landlock_restrict_self"), Some(446));
        // aarch64 has no legacy open(2).
        assert_eq!(Arch::Aarch64.lookup("open"), None);
        assert_eq!(Arch::X86_64.lookup("no_such_call"), None);
        assert!(Arch::X86_64.max_nr() >= 462);
        assert!(Arch::X86_64.is_assigned(0));
        assert!(!Arch::X86_64.is_assigned(400));
    }
}
