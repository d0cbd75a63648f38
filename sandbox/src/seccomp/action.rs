//! Seccomp filter return actions.

use serde::{Deserialize, Serialize};

/// What a filter returns for a syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "action", content = "errno")]
pub enum Action {
    /// Run the syscall.
    Allow,
    /// Run it and log it.
    Log,
    /// Fail with this errno.
    Errno(u16),
    /// Send `SIGSYS` to the thread.
    Trap,
    /// Kill the calling thread.
    KillThread,
    /// Kill the whole process.
    KillProcess,
}

impl Action {
    /// The `SECCOMP_RET_*` value.
    pub const fn ret(self) -> u32 {
        match self {
            Action::KillProcess => 0x8000_0000,
            Action::KillThread => 0x0000_0000,
            Action::Trap => 0x0003_0000,
            Action::Errno(e) => 0x0005_0000 | e as u32,
            Action::Log => 0x7ffc_0000,
            Action::Allow => 0x7fff_0000,
        }
    }

    /// The kernel's precedence: when several filters answer, the highest wins.
    pub const fn precedence(self) -> u8 {
        match self {
            Action::Allow => 0,
            Action::Log => 1,
            Action::Errno(_) => 2,
            Action::Trap => 3,
            Action::KillThread => 4,
            Action::KillProcess => 5,
        }
    }

    /// The more restrictive of two actions, as the kernel resolves stacked filters
    /// (on a tie the first one's errno is kept).
    pub fn strictest(self, other: Action) -> Action {
        if other.precedence() > self.precedence() {
            other
        } else {
            self
        }
    }

    /// Whether the syscall runs.
    pub const fn runs(self) -> bool {
        matches!(self, Action::Allow | Action::Log)
    }

    /// The action `audit` mode turns this into: everything that would deny is logged instead.
    pub const fn audited(self) -> Action {
        if self.runs() { self } else { Action::Log }
    }

    /// OCI / libseccomp name.
    pub const fn oci_name(self) -> &'static str {
        match self {
            Action::Allow => "SCMP_ACT_ALLOW",
            Action::Log => "SCMP_ACT_LOG",
            Action::Errno(_) => "SCMP_ACT_ERRNO",
            Action::Trap => "SCMP_ACT_TRAP",
            Action::KillThread => "SCMP_ACT_KILL_THREAD",
            Action::KillProcess => "SCMP_ACT_KILL_PROCESS",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictest_follows_kernel_precedence() {
        assert_eq!(Action::Allow.strictest(Action::Errno(1)), Action::Errno(1));
        assert_eq!(
            Action::Errno(1).strictest(Action::Errno(2)),
            Action::Errno(1)
        );
        assert_eq!(Action::Trap.strictest(Action::Log), Action::Trap);
        assert_eq!(
            Action::KillThread.strictest(Action::KillProcess),
            Action::KillProcess
        );
        assert_eq!(Action::Errno(13).ret(), 0x0005_000d);
        assert_eq!(Action::KillProcess.audited(), Action::Log);
    }
}
