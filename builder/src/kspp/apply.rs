//! What `apply` adds to an image: boot parameters, the sysctls as `sysctl.<key>=<value>` boot
//! parameters (applied by the kernel itself before init runs, Linux ≥ 5.8) and the same sysctls
//! as an `/etc/sysctl.d` file (for LinuxKit's `linuxkit/sysctl` onboot step and for reference).
//! Pure; [`super::image`] calls it for the build.

use super::Result;
use super::check::{Exception, validate_exceptions};
use super::config::{KernelConfig, Value};
use super::data::{Arch, BOOT_PARAMS, SYSCTLS};

/// Where the sysctl file goes in the image: LinuxKit's `linuxkit/sysctl` onboot step applies
/// `/etc/sysctl.d/*.conf`.
pub const SYSCTL_PATH: &str = "etc/sysctl.d/90-kitfleet-kspp.conf";

/// The recommended boot parameters for a kernel built for `arch`, minus exceptions (by
/// parameter name) and minus those whose `requires` setting the config lacks (or, without a
/// config, every conditional one).
pub fn boot_params(
    config: Option<&KernelConfig>,
    arch: Arch,
    exceptions: &[Exception],
) -> Result<Vec<&'static str>> {
    validate_exceptions(exceptions)?;
    let has = |name: &str| config.and_then(|c| c.get(name)) == Some(&Value::Yes);
    Ok(BOOT_PARAMS
        .iter()
        .filter(|p| p.arch.applies_to(arch))
        .filter(|p| p.requires.is_none_or(has))
        .filter(|p| !exceptions.iter().any(|e| e.setting == p.name()))
        .map(|p| p.param)
        .collect())
}

/// The sysctls as kernel command-line parameters (`sysctl.kernel.kptr_restrict=2`), minus
/// exceptions (by key). The kernel applies them while booting, before init runs.
pub fn sysctl_params(exceptions: &[Exception]) -> Result<Vec<String>> {
    validate_exceptions(exceptions)?;
    Ok(SYSCTLS
        .iter()
        .filter(|s| !exceptions.iter().any(|e| e.setting == s.key))
        .map(|s| format!("sysctl.{}={}", s.key, s.value))
        .collect())
}

/// The sysctl file's contents (`key = value` lines), minus exceptions (by key).
pub fn sysctl_conf(exceptions: &[Exception]) -> Result<String> {
    validate_exceptions(exceptions)?;
    let mut out = String::from("# KSPP recommendations (kitfleet spec.hardening.kspp: apply)\n");
    for s in SYSCTLS
        .iter()
        .filter(|s| !exceptions.iter().any(|e| e.setting == s.key))
    {
        out.push_str(&format!("{} = {}\n", s.key, s.value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kspp::parse;

    fn ex(setting: &str) -> Exception {
        Exception {
            setting: setting.into(),
            reason: "test".into(),
        }
    }

    #[test]
    fn kspp_boot_params_follow_arch_config_and_exceptions() {
        let cfg =
            parse("CONFIG_SECURITY_LOCKDOWN_LSM=y\nCONFIG_SHUFFLE_PAGE_ALLOCATOR=y\n").unwrap();
        let all = boot_params(Some(&cfg), Arch::X86_64, &[]).unwrap();
        assert_eq!(all.len(), BOOT_PARAMS.len());
        for p in [
            "init_on_alloc=1",
            "slab_nomerge",
            "pti=on",
            "lockdown=integrity",
        ] {
            assert!(all.contains(&p), "{p}");
        }
        let arm = boot_params(Some(&cfg), Arch::Arm64, &[]).unwrap();
        assert!(!arm.contains(&"pti=on") && !arm.contains(&"vsyscall=none"));
        let bare = boot_params(None, Arch::X86_64, &[]).unwrap();
        assert!(!bare.contains(&"lockdown=integrity") && !bare.contains(&"page_alloc.shuffle=1"));
        let fewer = boot_params(
            Some(&cfg),
            Arch::X86_64,
            &[ex("init_on_free"), ex("lockdown")],
        );
        let fewer = fewer.unwrap();
        assert_eq!(fewer.len(), all.len() - 2);
        assert!(!fewer.contains(&"init_on_free=1") && fewer.contains(&"init_on_alloc=1"));
        assert!(boot_params(None, Arch::X86_64, &[ex("nosuch")]).is_err());
    }

    #[test]
    fn kspp_sysctl_params_follow_exceptions() {
        let all = sysctl_params(&[]).unwrap();
        assert_eq!(all.len(), SYSCTLS.len());
        assert!(all.contains(&"sysctl.kernel.yama.ptrace_scope=1".to_owned()));
        let fewer = sysctl_params(&[ex("kernel.kexec_load_disabled")]).unwrap();
        assert_eq!(fewer.len(), SYSCTLS.len() - 1);
        assert!(!fewer.iter().any(|p| p.contains("kexec")));
    }

    #[test]
    fn kspp_sysctl_conf_lists_every_sysctl_but_exceptions() {
        let full = sysctl_conf(&[]).unwrap();
        assert_eq!(full.lines().count(), SYSCTLS.len() + 1);
        assert!(full.contains("\nkernel.kptr_restrict = 2\n"));
        assert!(full.contains("\nkernel.kexec_load_disabled = 1\n"));
        let kexec = sysctl_conf(&[ex("kernel.kexec_load_disabled")]).unwrap();
        assert!(!kexec.contains("kexec_load_disabled"));
        assert_eq!(kexec.lines().count(), SYSCTLS.len());
        assert!(
            sysctl_conf(&[Exception {
                setting: "fs.suid_dumpable".into(),
                reason: String::new()
            }])
            .is_err()
        );
    }
}
