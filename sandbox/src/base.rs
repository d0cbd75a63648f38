//! `base: runtime/default`: Kitfleet's own runtime-default allow list, in the spirit of the
//! container runtimes' default profiles: every syscall of the table except those that administer
//! the kernel, reach into other processes or namespaces, or are obsolete; `clone` without
//! namespace flags; `clone3` answers `ENOSYS` so libcs fall back to `clone`.

use crate::seccomp::{Action, Arch, CmpOp, Cond, SyscallRule};
use std::collections::BTreeMap;

/// Syscalls the runtime-default base does not allow.
pub const DENIED: &[&str] = &[
    "_sysctl",
    "acct",
    "add_key",
    "afs_syscall",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "epoll_ctl_old",
    "epoll_wait_old",
    "fanotify_init",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "getpmsg",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "migrate_pages",
    "modify_ldt",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "open_tree_attr",
    "perf_event_open",
    "pivot_root",
    "process_madvise",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "putpmsg",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "security",
    "set_mempolicy",
    "set_mempolicy_home_node",
    "setdomainname",
    "sethostname",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "sysfs",
    "tuxcall",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
    "vserver",
];

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET`.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7e02_0000;

/// The base's rules for `arch`, by syscall number.
pub fn runtime_default(arch: Arch) -> BTreeMap<u32, SyscallRule> {
    let mut out: BTreeMap<u32, SyscallRule> = arch
        .syscalls()
        .into_iter()
        .filter(|(_, name)| !DENIED.contains(name))
        .map(|(nr, _)| (nr, SyscallRule::always(Action::Allow)))
        .collect();
    if let Some(nr) = arch.lookup("clone") {
        // Flags are argument 0 of clone on both x86_64 and aarch64.
        // `unsigned long flags`: a full-width argument.
        let no_ns = Cond::wide(0, CmpOp::MaskedEq, CLONE_NAMESPACE_FLAGS, 0);
        out.insert(
            nr,
            SyscallRule {
                clauses: vec![vec![no_ns]],
                action: Action::Allow,
                otherwise: Action::Errno(1),
            },
        );
    }
    if let Some(nr) = arch.lookup("clone3") {
        out.insert(nr, SyscallRule::always(Action::Errno(libc::ENOSYS as u16)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_three_hundred_calls_and_no_admin_ones() {
        for arch in Arch::ALL {
            let base = runtime_default(arch);
            let allowed = base.values().filter(|r| r.action == Action::Allow).count();
            assert!((250..=400).contains(&allowed), "{arch}: {allowed}");
            for name in ["mount", "ptrace", "bpf", "kexec_load", "unshare", "setns"] {
                if let Some(nr) = arch.lookup(name) {
                    assert!(!base.contains_key(&nr), "{arch}: {name}");
                }
            }
        }
    }
}
