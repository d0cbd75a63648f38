//! KSPP's recommendations as data: kernel build settings, boot parameters and sysctls. Shared by
//! validation (exception names), the builder (check and `apply`) and the node agent (per-node
//! report), so it lives in the API crate.
//!
//! Sources (facts only; the reasons are our own words):
//! - the Linux kernel's `kernel/configs/hardening.config` and `arch/x86/configs/hardening.config`
//!   (maintained by KSPP), as in torvalds/linux at commits `006eac3fe20f` and `215199e3d9f3`
//!   (the v6.6–v6.10 era: it has `RANDOM_KMALLOC_CACHES` and `LIST_HARDENED`, not yet
//!   `SLAB_BUCKETS`) — entries marked [`Source::HardeningConfig`];
//! - the KSPP wiki page "Recommended Settings" (<https://kspp.github.io/Recommended_Settings>,
//!   KSPP/kspp.github.io commit `058b262fdf51`) — entries marked [`Source::Wiki`].
//!
//! Left out on purpose: wiki entries for symbols the kernel has since removed (`DEBUG_RODATA`,
//! `REFCOUNT_FULL`, `DEVKMEM`, `PAGE_POISONING_ZERO`, `RANDOM_TRUST_*`,
//! `HARDENED_USERCOPY_FALLBACK`, `SECURITY_SELINUX_DISABLE`, `AMD_IOMMU_V2` — gone since v6.7),
//! compiler-specific ones (`GCC_PLUGIN_*`, `CFI_CLANG`, `UBSAN_LOCAL_BOUNDS`, `RANDSTRUCT_FULL`),
//! build-policy ones (`WERROR`), `STATIC_USERMODEHELPER` (needs a matching userspace) and
//! "`MODULES` is not set" (the wiki's own fallback, signed modules, is checked instead).
//! Expecting "not set" is met by a symbol that is absent, `=n` or `# … is not set` (kconfig's
//! meaning of absent); expecting `y` is not met by `m`.

/// The KSPP sources this table follows, as recorded in build results and node reports.
pub const SOURCE_VERSION: &str =
    "linux hardening.config 006eac3fe20f/215199e3d9f3 (v6.6-v6.10); kspp.github.io 058b262fdf51";

/// Whether `name` is a recommendation of any kind: a `CONFIG_` setting, a sysctl key or a boot
/// parameter name (the part before `=`).
pub fn is_known(name: &str) -> bool {
    SETTINGS.iter().any(|s| s.name == name)
        || SYSCTLS.iter().any(|s| s.key == name)
        || BOOT_PARAMS.iter().any(|p| p.name() == name)
}

/// Value a recommendation expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Expected {
    /// Built in (`=y`).
    Yes,
    /// Disabled (absent, `=n` or `# CONFIG_X is not set`).
    NotSet,
    /// A number (decimal or `0x` hex in the config).
    Number(i64),
    /// A string (`CONFIG_X="…"`).
    Str(&'static str),
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Yes => f.write_str("y"),
            Expected::NotSet => f.write_str("is not set"),
            Expected::Number(n) => write!(f, "{n}"),
            Expected::Str(s) => write!(f, "\"{s}\""),
        }
    }
}

/// Architectures a recommendation applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Arch {
    /// Every architecture.
    Any,
    /// x86-64 only.
    X86_64,
    /// arm64 only.
    Arm64,
}

impl Arch {
    /// Whether an entry for `self` applies to a kernel built for `target`.
    pub fn applies_to(self, target: Arch) -> bool {
        self == Arch::Any || self == target
    }
}

/// Where a recommendation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// `kernel/configs/hardening.config` or `arch/x86/configs/hardening.config`.
    HardeningConfig,
    /// The KSPP wiki's "Recommended Settings" page only.
    Wiki,
}

/// One recommended kernel build setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The symbol, with its `CONFIG_` prefix.
    pub name: &'static str,
    /// The value KSPP recommends.
    pub expected: Expected,
    /// Architectures it applies to.
    pub arch: Arch,
    /// Which KSPP document recommends it.
    pub source: Source,
    /// Why, in a few words.
    pub reason: &'static str,
}

const fn s(
    name: &'static str,
    expected: Expected,
    arch: Arch,
    source: Source,
    reason: &'static str,
) -> Setting {
    Setting {
        name,
        expected,
        arch,
        source,
        reason,
    }
}

use Arch::{Any, Arm64, X86_64};
use Expected::{NotSet, Number, Str, Yes};
use Source::{HardeningConfig as Hc, Wiki};

/// KSPP's recommended kernel settings (see the module documentation for the sources).
pub const SETTINGS: &[Setting] = &[
    s(
        "CONFIG_BUG",
        Yes,
        Any,
        Hc,
        "hardening checks need BUG() reporting",
    ),
    s(
        "CONFIG_STRICT_KERNEL_RWX",
        Yes,
        Any,
        Hc,
        "kernel text read-only, data non-executable",
    ),
    s(
        "CONFIG_STRICT_MODULE_RWX",
        Yes,
        Any,
        Hc,
        "same memory permissions for modules",
    ),
    s(
        "CONFIG_VMAP_STACK",
        Yes,
        Any,
        Hc,
        "guard pages around kernel stacks",
    ),
    s(
        "CONFIG_RANDOMIZE_BASE",
        Yes,
        Any,
        Hc,
        "kernel image address randomised (KASLR)",
    ),
    s(
        "CONFIG_RANDOMIZE_MEMORY",
        Yes,
        X86_64,
        Hc,
        "kernel memory regions randomised",
    ),
    s(
        "CONFIG_SLAB_FREELIST_RANDOM",
        Yes,
        Any,
        Hc,
        "slab free-list order randomised",
    ),
    s(
        "CONFIG_SLAB_FREELIST_HARDENED",
        Yes,
        Any,
        Hc,
        "slab free-list metadata protected",
    ),
    s(
        "CONFIG_SHUFFLE_PAGE_ALLOCATOR",
        Yes,
        Any,
        Hc,
        "page allocator free lists can be shuffled",
    ),
    s(
        "CONFIG_RANDOM_KMALLOC_CACHES",
        Yes,
        Any,
        Hc,
        "kmalloc spread over several caches",
    ),
    s(
        "CONFIG_RANDOMIZE_KSTACK_OFFSET_DEFAULT",
        Yes,
        Any,
        Hc,
        "stack offset varies per syscall",
    ),
    s("CONFIG_STACKPROTECTOR", Yes, Any, Hc, "stack canaries"),
    s(
        "CONFIG_STACKPROTECTOR_STRONG",
        Yes,
        Any,
        Hc,
        "stack canaries in more functions",
    ),
    s(
        "CONFIG_HARDENED_USERCOPY",
        Yes,
        Any,
        Hc,
        "bounds checks on user/kernel copies",
    ),
    s(
        "CONFIG_FORTIFY_SOURCE",
        Yes,
        Any,
        Hc,
        "bounds checks on string and memory functions",
    ),
    s(
        "CONFIG_UBSAN",
        Yes,
        Any,
        Hc,
        "undefined-behaviour sanitiser framework",
    ),
    s(
        "CONFIG_UBSAN_TRAP",
        Yes,
        Any,
        Hc,
        "sanitiser failures trap instead of logging",
    ),
    s(
        "CONFIG_UBSAN_BOUNDS",
        Yes,
        Any,
        Hc,
        "array index bounds checking",
    ),
    s(
        "CONFIG_UBSAN_SHIFT",
        NotSet,
        Any,
        Hc,
        "only bounds checking is wanted in production",
    ),
    s(
        "CONFIG_LIST_HARDENED",
        Yes,
        Any,
        Hc,
        "linked-list integrity checks",
    ),
    s(
        "CONFIG_INIT_ON_ALLOC_DEFAULT_ON",
        Yes,
        Any,
        Hc,
        "heap memory zeroed on allocation",
    ),
    s(
        "CONFIG_INIT_STACK_ALL_ZERO",
        Yes,
        Any,
        Hc,
        "stack variables zero-initialised",
    ),
    s(
        "CONFIG_RESET_ATTACK_MITIGATION",
        Yes,
        Any,
        Hc,
        "firmware wipes RAM after reboot",
    ),
    s(
        "CONFIG_EFI_DISABLE_PCI_DMA",
        Yes,
        Any,
        Hc,
        "no DMA between EFI and IOMMU setup",
    ),
    s(
        "CONFIG_IOMMU_SUPPORT",
        Yes,
        Any,
        Hc,
        "IOMMU confines device DMA",
    ),
    s(
        "CONFIG_IOMMU_DEFAULT_DMA_STRICT",
        Yes,
        Any,
        Hc,
        "IOTLB flushed synchronously on unmap",
    ),
    s(
        "CONFIG_STRICT_DEVMEM",
        Yes,
        Any,
        Hc,
        "/dev/mem limited to device memory",
    ),
    s(
        "CONFIG_IO_STRICT_DEVMEM",
        Yes,
        Any,
        Hc,
        "/dev/mem also excludes claimed I/O regions",
    ),
    s(
        "CONFIG_SECCOMP",
        Yes,
        Any,
        Hc,
        "syscall filtering for userspace",
    ),
    s("CONFIG_SECCOMP_FILTER", Yes, Any, Hc, "BPF seccomp filters"),
    s("CONFIG_SYN_COOKIES", Yes, Any, Hc, "SYN flood resistance"),
    s(
        "CONFIG_LDISC_AUTOLOAD",
        NotSet,
        Any,
        Hc,
        "TTY line disciplines not autoloaded",
    ),
    s(
        "CONFIG_COMPAT_BRK",
        NotSet,
        Any,
        Hc,
        "keeps heap (brk) randomisation",
    ),
    s(
        "CONFIG_PROC_KCORE",
        NotSet,
        Any,
        Hc,
        "no /proc/kcore view of kernel memory",
    ),
    s(
        "CONFIG_COMPAT_VDSO",
        NotSet,
        X86_64,
        Hc,
        "keeps vDSO randomisation",
    ),
    s(
        "CONFIG_LEGACY_PTYS",
        NotSet,
        Any,
        Hc,
        "only devpts pseudo-terminals",
    ),
    s(
        "CONFIG_DRM_LEGACY",
        NotSet,
        Any,
        Hc,
        "no legacy (non-KMS) DRM drivers",
    ),
    s(
        "CONFIG_LEGACY_VSYSCALL_NONE",
        Yes,
        X86_64,
        Hc,
        "no fixed-address vsyscall page",
    ),
    s("CONFIG_INTEL_IOMMU", Yes, X86_64, Hc, "Intel VT-d support"),
    s(
        "CONFIG_INTEL_IOMMU_DEFAULT_ON",
        Yes,
        X86_64,
        Hc,
        "Intel IOMMU on by default",
    ),
    s(
        "CONFIG_INTEL_IOMMU_SVM",
        Yes,
        X86_64,
        Hc,
        "Intel IOMMU shared virtual memory",
    ),
    s("CONFIG_AMD_IOMMU", Yes, X86_64, Hc, "AMD IOMMU support"),
    s(
        "CONFIG_X86_USER_SHADOW_STACK",
        Yes,
        X86_64,
        Hc,
        "CET shadow stacks for userspace",
    ),
    // The wiki's further recommendations.
    s(
        "CONFIG_DEBUG_WX",
        Yes,
        Any,
        Wiki,
        "warns about writable+executable mappings",
    ),
    s("CONFIG_DEVMEM", NotSet, Any, Wiki, "no /dev/mem at all"),
    s(
        "CONFIG_DEBUG_NOTIFIERS",
        Yes,
        Any,
        Wiki,
        "notifier chain sanity checks",
    ),
    s(
        "CONFIG_DEBUG_LIST",
        Yes,
        Any,
        Wiki,
        "extra linked-list checks",
    ),
    s(
        "CONFIG_DEBUG_SG",
        Yes,
        Any,
        Wiki,
        "scatter-gather table checks",
    ),
    s(
        "CONFIG_DEBUG_VIRTUAL",
        Yes,
        Any,
        Wiki,
        "virtual-to-physical conversion checks",
    ),
    s(
        "CONFIG_BUG_ON_DATA_CORRUPTION",
        Yes,
        Any,
        Wiki,
        "corrupted structures stop the kernel",
    ),
    s(
        "CONFIG_SCHED_STACK_END_CHECK",
        Yes,
        Any,
        Wiki,
        "detects kernel stack overruns",
    ),
    s("CONFIG_SECURITY", Yes, Any, Wiki, "LSM framework"),
    s(
        "CONFIG_SECURITY_YAMA",
        Yes,
        Any,
        Wiki,
        "ptrace scope restrictions",
    ),
    s(
        "CONFIG_SECURITY_LANDLOCK",
        Yes,
        Any,
        Wiki,
        "unprivileged sandboxing",
    ),
    s(
        "CONFIG_SECURITY_SELINUX_BOOTPARAM",
        NotSet,
        Any,
        Wiki,
        "SELinux not disabled from cmdline",
    ),
    s(
        "CONFIG_SECURITY_SELINUX_DEVELOP",
        NotSet,
        Any,
        Wiki,
        "SELinux cannot boot permissive",
    ),
    s(
        "CONFIG_SECURITY_WRITABLE_HOOKS",
        NotSet,
        Any,
        Wiki,
        "LSM hooks stay read-only",
    ),
    s(
        "CONFIG_SECURITY_LOCKDOWN_LSM",
        Yes,
        Any,
        Wiki,
        "root cannot modify the running kernel",
    ),
    s(
        "CONFIG_SECURITY_LOCKDOWN_LSM_EARLY",
        Yes,
        Any,
        Wiki,
        "lockdown active from early boot",
    ),
    s(
        "CONFIG_LOCK_DOWN_KERNEL_FORCE_CONFIDENTIALITY",
        Yes,
        Any,
        Wiki,
        "strongest lockdown",
    ),
    s(
        "CONFIG_HARDENED_USERCOPY_PAGESPAN",
        NotSet,
        Any,
        Wiki,
        "no weaker multi-page fallback",
    ),
    s(
        "CONFIG_SLAB_MERGE_DEFAULT",
        NotSet,
        Any,
        Wiki,
        "caches not merged (slab_nomerge)",
    ),
    s(
        "CONFIG_PAGE_TABLE_CHECK",
        Yes,
        Any,
        Wiki,
        "user page-table sanity checks",
    ),
    s(
        "CONFIG_PAGE_TABLE_CHECK_ENFORCED",
        Yes,
        Any,
        Wiki,
        "page-table checks on by default",
    ),
    s(
        "CONFIG_SLUB_DEBUG",
        Yes,
        Any,
        Wiki,
        "allocator checks can be enabled at boot",
    ),
    s(
        "CONFIG_INIT_ON_FREE_DEFAULT_ON",
        Yes,
        Any,
        Wiki,
        "heap memory zeroed on free",
    ),
    s(
        "CONFIG_SECURITY_DMESG_RESTRICT",
        Yes,
        Any,
        Wiki,
        "dmesg for privileged users only",
    ),
    s(
        "CONFIG_UBSAN_DIV_ZERO",
        NotSet,
        Any,
        Wiki,
        "only bounds checking is wanted",
    ),
    s(
        "CONFIG_UBSAN_UNREACHABLE",
        NotSet,
        Any,
        Wiki,
        "only bounds checking is wanted",
    ),
    s(
        "CONFIG_UBSAN_BOOL",
        NotSet,
        Any,
        Wiki,
        "only bounds checking is wanted",
    ),
    s(
        "CONFIG_UBSAN_ENUM",
        NotSet,
        Any,
        Wiki,
        "only bounds checking is wanted",
    ),
    s(
        "CONFIG_UBSAN_ALIGNMENT",
        NotSet,
        Any,
        Wiki,
        "only bounds checking is wanted",
    ),
    s(
        "CONFIG_KFENCE",
        Yes,
        Any,
        Wiki,
        "sampled memory-error detection",
    ),
    s(
        "CONFIG_KFENCE_SAMPLE_INTERVAL",
        Number(100),
        Any,
        Wiki,
        "KFENCE sampling period (ms)",
    ),
    s(
        "CONFIG_IOMMU_DEFAULT_PASSTHROUGH",
        NotSet,
        Any,
        Wiki,
        "devices translated by default",
    ),
    s("CONFIG_HW_RANDOM_TPM", Yes, Any, Wiki, "TPM feeds the RNG"),
    s(
        "CONFIG_SCHED_CORE",
        Yes,
        Any,
        Wiki,
        "core scheduling for SMT isolation",
    ),
    s(
        "CONFIG_ZERO_CALL_USED_REGS",
        Yes,
        Any,
        Wiki,
        "registers cleared on function return",
    ),
    s(
        "CONFIG_ACPI_CUSTOM_METHOD",
        NotSet,
        Any,
        Wiki,
        "no ACPI method injection",
    ),
    s(
        "CONFIG_KEXEC",
        NotSet,
        Any,
        Wiki,
        "running kernel cannot be replaced",
    ),
    s(
        "CONFIG_HIBERNATION",
        NotSet,
        Any,
        Wiki,
        "no resume from a tampered image",
    ),
    s(
        "CONFIG_BINFMT_MISC",
        NotSet,
        Any,
        Wiki,
        "no arbitrary binary interpreters",
    ),
    s(
        "CONFIG_LEGACY_TIOCSTI",
        NotSet,
        Any,
        Wiki,
        "no TTY input injection",
    ),
    s(
        "CONFIG_PANIC_ON_OOPS",
        Yes,
        Any,
        Wiki,
        "an oops stops the kernel",
    ),
    s(
        "CONFIG_PANIC_TIMEOUT",
        Number(-1),
        Any,
        Wiki,
        "reboot at once after panic",
    ),
    s(
        "CONFIG_MAGIC_SYSRQ_DEFAULT_ENABLE",
        Number(176),
        Any,
        Wiki,
        "sysrq: sync, unmount, reboot",
    ),
    s("CONFIG_MODULE_SIG", Yes, Any, Wiki, "module signatures"),
    s(
        "CONFIG_MODULE_SIG_FORCE",
        Yes,
        Any,
        Wiki,
        "unsigned modules refused",
    ),
    s(
        "CONFIG_MODULE_SIG_ALL",
        Yes,
        Any,
        Wiki,
        "all modules signed at build",
    ),
    s(
        "CONFIG_MODULE_SIG_SHA512",
        Yes,
        Any,
        Wiki,
        "strong module signature hash",
    ),
    s(
        "CONFIG_MODULE_SIG_HASH",
        Str("sha512"),
        Any,
        Wiki,
        "strong module signature hash",
    ),
    s(
        "CONFIG_MODULE_FORCE_LOAD",
        NotSet,
        Any,
        Wiki,
        "version checks cannot be bypassed",
    ),
    s(
        "CONFIG_DEFAULT_MMAP_MIN_ADDR",
        Number(65536),
        X86_64,
        Wiki,
        "low 64 KiB unmappable",
    ),
    s(
        "CONFIG_X86_MSR",
        NotSet,
        X86_64,
        Wiki,
        "no MSR writes from userspace",
    ),
    s(
        "CONFIG_X86_VSYSCALL_EMULATION",
        NotSet,
        X86_64,
        Wiki,
        "no vsyscall page",
    ),
    s(
        "CONFIG_MITIGATION_PAGE_TABLE_ISOLATION",
        Yes,
        X86_64,
        Wiki,
        "kernel unmapped in user mode",
    ),
    s(
        "CONFIG_X86_KERNEL_IBT",
        Yes,
        X86_64,
        Wiki,
        "CET indirect branch tracking",
    ),
    s(
        "CONFIG_COMPAT",
        NotSet,
        Any,
        Wiki,
        "no 32-bit syscall surface",
    ),
    s(
        "CONFIG_IA32_EMULATION",
        NotSet,
        X86_64,
        Wiki,
        "no 32-bit syscall surface",
    ),
    s(
        "CONFIG_X86_X32_ABI",
        NotSet,
        X86_64,
        Wiki,
        "no x32 syscall surface",
    ),
    s(
        "CONFIG_MODIFY_LDT_SYSCALL",
        NotSet,
        X86_64,
        Wiki,
        "no LDT tricks",
    ),
    s(
        "CONFIG_MITIGATION_SLS",
        Yes,
        X86_64,
        Wiki,
        "straight-line speculation mitigation",
    ),
    s(
        "CONFIG_DEFAULT_MMAP_MIN_ADDR",
        Number(32768),
        Arm64,
        Wiki,
        "low 32 KiB unmappable",
    ),
    s(
        "CONFIG_ARM64_SW_TTBR0_PAN",
        Yes,
        Arm64,
        Wiki,
        "PAN emulation",
    ),
    s(
        "CONFIG_UNMAP_KERNEL_AT_EL0",
        Yes,
        Arm64,
        Wiki,
        "kernel unmapped in user mode",
    ),
    s(
        "CONFIG_ARM64_PTR_AUTH",
        Yes,
        Arm64,
        Wiki,
        "pointer authentication",
    ),
    s(
        "CONFIG_ARM64_PTR_AUTH_KERNEL",
        Yes,
        Arm64,
        Wiki,
        "pointer authentication in the kernel",
    ),
    s(
        "CONFIG_ARM64_BTI",
        Yes,
        Arm64,
        Wiki,
        "branch target identification",
    ),
    s(
        "CONFIG_ARM64_BTI_KERNEL",
        Yes,
        Arm64,
        Wiki,
        "branch target identification in kernel",
    ),
    s(
        "CONFIG_ARM64_E0PD",
        Yes,
        Arm64,
        Wiki,
        "user access to kernel half faults",
    ),
];

/// Settings renamed by the kernel: (current name, older name). When a config lacks the current
/// name, the checker reads the older one (both renamed in v6.9, so v6.1 kernels carry the old).
pub const RENAMED: &[(&str, &str)] = &[
    (
        "CONFIG_MITIGATION_PAGE_TABLE_ISOLATION",
        "CONFIG_PAGE_TABLE_ISOLATION",
    ),
    ("CONFIG_MITIGATION_SLS", "CONFIG_SLS"),
];

/// A recommended kernel command-line parameter (for `apply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootParam {
    /// The parameter as written on the command line (`name` or `name=value`).
    pub param: &'static str,
    /// Architectures it applies to.
    pub arch: Arch,
    /// A kernel setting that must be `y` for the parameter to mean anything.
    pub requires: Option<&'static str>,
    /// Why, in a few words.
    pub reason: &'static str,
}

impl BootParam {
    /// The parameter's name (the part before `=`).
    pub fn name(&self) -> &'static str {
        self.param.split('=').next().unwrap_or(self.param)
    }

    /// The value after `=` (`None` for a bare flag such as `slab_nomerge`).
    pub fn value(&self) -> Option<&'static str> {
        self.param.split_once('=').map(|(_, v)| v)
    }
}

/// The boot parameters `apply` adds. The wiki's slow ones (`nosmt`, `slub_debug=…`,
/// `page_poison=1`) are left out; `lockdown=integrity` is our choice where the wiki forces
/// confidentiality at build time, because confidentiality also blocks the kernel-memory reads
/// that eBPF-based node agents rely on.
pub const BOOT_PARAMS: &[BootParam] = &[
    BootParam {
        param: "hardened_usercopy=1",
        arch: Any,
        requires: None,
        reason: "usercopy checks stay on",
    },
    BootParam {
        param: "init_on_alloc=1",
        arch: Any,
        requires: None,
        reason: "zero memory on allocation",
    },
    BootParam {
        param: "init_on_free=1",
        arch: Any,
        requires: None,
        reason: "zero memory on free",
    },
    BootParam {
        param: "randomize_kstack_offset=on",
        arch: Any,
        requires: None,
        reason: "per-syscall stack offset",
    },
    BootParam {
        param: "page_alloc.shuffle=1",
        arch: Any,
        requires: Some("CONFIG_SHUFFLE_PAGE_ALLOCATOR"),
        reason: "shuffle page allocator free lists",
    },
    BootParam {
        param: "slab_nomerge",
        arch: Any,
        requires: None,
        reason: "no slab cache merging",
    },
    BootParam {
        param: "iommu.passthrough=0",
        arch: Any,
        requires: None,
        reason: "DMA always translated",
    },
    BootParam {
        param: "iommu.strict=1",
        arch: Any,
        requires: None,
        reason: "synchronous IOTLB flush",
    },
    BootParam {
        param: "pti=on",
        arch: X86_64,
        requires: None,
        reason: "page-table isolation always",
    },
    BootParam {
        param: "vsyscall=none",
        arch: X86_64,
        requires: None,
        reason: "no vsyscall page",
    },
    BootParam {
        param: "lockdown=integrity",
        arch: Any,
        requires: Some("CONFIG_SECURITY_LOCKDOWN_LSM"),
        reason: "root cannot modify the running kernel",
    },
];

/// A recommended sysctl (for `apply`, written to an `/etc/sysctl.d/` file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sysctl {
    /// The dotted key.
    pub key: &'static str,
    /// The value written.
    pub value: &'static str,
    /// Why, in a few words.
    pub reason: &'static str,
}

/// The sysctls `apply` sets. Deviations from the wiki, for Kubernetes nodes:
/// `kernel.yama.ptrace_scope` is 1 (the wiki's value when ptrace must keep working; 3 blocks
/// all attaches, debuggers included); `kernel.modules_disabled=1` (nodes load modules such as
/// `br_netfilter` and `wireguard` after boot), `user.max_user_namespaces=0` (container
/// runtimes use user namespaces), `kernel.warn_limit`/`kernel.oops_limit` (a node reboot on any
/// WARN is a policy choice) and `dev.tty.legacy_tiocsti` (absent before v6.2; writing it would
/// fail) are left out.
pub const SYSCTLS: &[Sysctl] = &[
    Sysctl {
        key: "kernel.kptr_restrict",
        value: "2",
        reason: "hide kernel pointers",
    },
    Sysctl {
        key: "kernel.dmesg_restrict",
        value: "1",
        reason: "dmesg for privileged users",
    },
    Sysctl {
        key: "kernel.perf_event_paranoid",
        value: "3",
        reason: "no unprivileged perf",
    },
    Sysctl {
        key: "kernel.kexec_load_disabled",
        value: "1",
        reason: "no kexec after boot",
    },
    Sysctl {
        key: "kernel.randomize_va_space",
        value: "2",
        reason: "full userspace ASLR",
    },
    Sysctl {
        key: "kernel.yama.ptrace_scope",
        value: "1",
        reason: "ptrace only descendants",
    },
    Sysctl {
        key: "dev.tty.ldisc_autoload",
        value: "0",
        reason: "no line discipline autoload",
    },
    Sysctl {
        key: "kernel.unprivileged_bpf_disabled",
        value: "1",
        reason: "no unprivileged eBPF",
    },
    Sysctl {
        key: "net.core.bpf_jit_harden",
        value: "2",
        reason: "harden the BPF JIT",
    },
    Sysctl {
        key: "vm.unprivileged_userfaultfd",
        value: "0",
        reason: "no unprivileged userfaultfd",
    },
    Sysctl {
        key: "fs.protected_symlinks",
        value: "1",
        reason: "symlink race protection",
    },
    Sysctl {
        key: "fs.protected_hardlinks",
        value: "1",
        reason: "hardlink race protection",
    },
    Sysctl {
        key: "fs.protected_fifos",
        value: "2",
        reason: "FIFO spoofing protection",
    },
    Sysctl {
        key: "fs.protected_regular",
        value: "2",
        reason: "file spoofing protection",
    },
    Sysctl {
        key: "fs.suid_dumpable",
        value: "0",
        reason: "no core dumps of setuid processes",
    },
];
