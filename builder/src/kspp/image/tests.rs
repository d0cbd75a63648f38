//! The build's KSPP step on fixture kernel images: where the config is found, each mode's
//! outcome, exceptions, unknown kernels.

use std::io::Write;

use kitfleet_api::nodeimage::{HardeningException, HardeningSpec, KsppMode};

use super::*;
use crate::kspp::data::{BOOT_PARAMS, SETTINGS, SYSCTLS};
use crate::tree::Entry;

fn tree(files: &[(&str, Vec<u8>)]) -> Tree {
    let mut t = Tree::new();
    for (p, b) in files {
        t.insert(Entry::file(*p, b.clone(), 0o644, 0));
    }
    t
}

/// A config meeting every x86-64 recommendation except `CONFIG_BUG` (=n), with lockdown.
fn almost_all() -> String {
    let mut out = String::from("CONFIG_X86_64=y\nCONFIG_SECURITY_LOCKDOWN_LSM=y\n");
    for s in SETTINGS.iter().filter(|s| s.arch.applies_to(Arch::X86_64)) {
        let line = match s.expected {
            _ if s.name == "CONFIG_BUG" => "CONFIG_BUG=n".to_owned(),
            Expected::Yes => format!("{}=y", s.name),
            Expected::NotSet => format!("# {} is not set", s.name),
            Expected::Number(n) => format!("{}={n}", s.name),
            Expected::Str(v) => format!("{}=\"{v}\"", s.name),
        };
        if !out.contains(&format!("{line}\n")) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}
use crate::kspp::data::Expected;

fn spec(mode: KsppMode, exceptions: &[&str]) -> HardeningSpec {
    HardeningSpec {
        kspp: mode,
        exceptions: exceptions
            .iter()
            .map(|s| HardeningException {
                setting: (*s).into(),
                reason: "test".into(),
            })
            .collect(),
    }
}

#[test]
fn kspp_config_file_is_found_before_ikconfig() {
    let t = tree(&[
        ("kernel", b"not a kernel".to_vec()),
        ("boot/config-6.1.0-x", b"CONFIG_BUG=y\n".to_vec()),
        ("boot/configs/other", b"garbage".to_vec()),
    ]);
    let f = find_config(&t, "kernel").unwrap();
    assert_eq!(f.source, "boot/config-6.1.0-x");
    assert_eq!(f.config.get("CONFIG_BUG"), Some(&Value::Yes));
    let root = tree(&[("config", b"# CONFIG_BUG is not set\n".to_vec())]);
    assert_eq!(find_config(&root, "kernel").unwrap().source, "config");
}

#[test]
fn kspp_ikconfig_in_the_kernel_binary_is_read() {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"CONFIG_BUG=y\n").unwrap();
    let mut kernel = b"\x7fELF....IKCFG_ST".to_vec();
    kernel.extend(gz.finish().unwrap());
    kernel.extend(b"IKCFG_ED....");
    let f = find_config(&tree(&[("boot/vmlinux", kernel)]), "/boot/vmlinux").unwrap();
    assert_eq!(f.source, "boot/vmlinux (IKCONFIG)");
}

#[test]
fn kspp_unreadable_configs_say_why() {
    let mut bz = vec![0u8; 4096];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    let why = find_config(&tree(&[("kernel", bz)]), "kernel").unwrap_err();
    assert!(
        why.contains("no config file") && why.contains("bzImage"),
        "{why}"
    );
    let why = find_config(&tree(&[("config-6", b"junk\n".to_vec())]), "kernel").unwrap_err();
    assert_eq!(
        why,
        "config-6: kernel config line 1: expected CONFIG_X=value"
    );
    let why = find_config(&tree(&[]), "kernel").unwrap_err();
    assert!(why.contains("no kernel file"), "{why}");
}

#[test]
fn kspp_off_does_nothing_and_audit_adds_nothing() {
    let found = Found {
        source: "config".into(),
        config: parse(&almost_all()).unwrap(),
    };
    assert_eq!(
        evaluate(&spec(KsppMode::Off, &[]), "k", Arch::X86_64, Ok(&found)).unwrap(),
        None
    );
    let (o, add) = evaluate(
        &HardeningSpec::default(),
        "k@sha256:1",
        Arch::X86_64,
        Ok(&found),
    )
    .unwrap()
    .unwrap();
    assert!(add.is_none());
    assert_eq!(o.mode, "audit");
    assert_eq!(o.source, SOURCE_VERSION);
    assert_eq!(o.config.as_deref(), Some("config"));
    assert_eq!(o.unmet.len(), 1);
    assert_eq!(o.unmet[0].setting, "CONFIG_BUG");
    assert_eq!(o.unmet[0].found, "is not set");
    assert!(o.boot_params.is_empty() && o.sysctl_file.is_none());
    assert_eq!(o.enforce_failure(), None, "audit never fails");
}

#[test]
fn kspp_apply_adds_params_sysctls_and_the_file_minus_exceptions() {
    let found = Found {
        source: "config".into(),
        config: parse(&almost_all()).unwrap(),
    };
    let (o, add) = evaluate(&spec(KsppMode::Apply, &[]), "k", Arch::X86_64, Ok(&found))
        .unwrap()
        .unwrap();
    let add = add.unwrap();
    assert_eq!(add.cmdline.len(), BOOT_PARAMS.len() + SYSCTLS.len());
    assert!(add.cmdline.contains(&"lockdown=integrity".to_owned()));
    assert!(
        add.cmdline
            .contains(&"sysctl.kernel.kptr_restrict=2".to_owned())
    );
    assert_eq!(add.sysctl_file.0, "etc/sysctl.d/90-kitfleet-kspp.conf");
    assert!(add.sysctl_file.1.contains("kernel.dmesg_restrict = 1"));
    assert_eq!(o.boot_params, add.cmdline);
    assert_eq!(o.enforce_failure(), None, "apply never fails");

    let (_, add) = evaluate(
        &spec(
            KsppMode::Apply,
            &["lockdown", "kernel.kexec_load_disabled", "CONFIG_BUG"],
        ),
        "k",
        Arch::X86_64,
        Ok(&found),
    )
    .unwrap()
    .unwrap();
    let add = add.unwrap();
    assert_eq!(add.cmdline.len(), BOOT_PARAMS.len() + SYSCTLS.len() - 2);
    assert!(
        !add.cmdline
            .iter()
            .any(|p| p.contains("lockdown") || p.contains("kexec"))
    );
    assert!(!add.sysctl_file.1.contains("kexec"));
}

#[test]
fn kspp_enforce_lists_every_unmet_setting_and_fails_unknown_kernels() {
    let mut text = almost_all();
    text = text.replace("CONFIG_STRICT_KERNEL_RWX=y\n", "");
    let found = Found {
        source: "boot/config-6".into(),
        config: parse(&text).unwrap(),
    };
    let (o, _) = evaluate(
        &spec(KsppMode::Enforce, &[]),
        "reg/kernel:6@sha256:ab",
        Arch::X86_64,
        Ok(&found),
    )
    .unwrap()
    .unwrap();
    let why = o.enforce_failure().expect("fails");
    assert!(
        why.contains("reg/kernel:6@sha256:ab")
            && why.contains("2 KSPP setting(s)")
            && why.contains("CONFIG_BUG (expected y, found is not set)")
            && why.contains("CONFIG_STRICT_KERNEL_RWX (expected y, found absent)"),
        "{why}"
    );
    // Excepting both makes enforce pass.
    let (o, _) = evaluate(
        &spec(
            KsppMode::Enforce,
            &["CONFIG_BUG", "CONFIG_STRICT_KERNEL_RWX"],
        ),
        "k",
        Arch::X86_64,
        Ok(&found),
    )
    .unwrap()
    .unwrap();
    assert_eq!(o.enforce_failure(), None);
    assert_eq!(o.excepted.len(), 2);
    assert!(o.excepted.iter().all(|e| !e.met));

    let (o, add) = evaluate(
        &spec(KsppMode::Enforce, &[]),
        "reg/kernel:6@sha256:ab",
        Arch::X86_64,
        Err("no config file"),
    )
    .unwrap()
    .unwrap();
    assert!(o.met.is_empty() && o.unmet.is_empty());
    assert_eq!(o.unknown.as_deref(), Some("no config file"));
    let why = o.enforce_failure().expect("unknown fails enforce");
    assert!(
        why.contains("reg/kernel:6@sha256:ab") && why.contains("unknown"),
        "{why}"
    );
    // Without a config, conditional parameters (lockdown) are left out.
    assert!(
        !add.unwrap()
            .cmdline
            .iter()
            .any(|p| p.starts_with("lockdown"))
    );
}

#[test]
fn kspp_unknown_exceptions_are_errors() {
    let found = Found {
        source: "config".into(),
        config: parse("").unwrap(),
    };
    let err = evaluate(
        &spec(KsppMode::Audit, &["CONFIG_NOPE"]),
        "k",
        Arch::X86_64,
        Ok(&found),
    )
    .unwrap_err();
    assert!(err.to_string().contains("CONFIG_NOPE"), "{err}");
}

#[test]
fn kspp_arch_comes_from_the_image_then_the_config() {
    let arm = parse("CONFIG_ARM64=y\n").unwrap();
    assert_eq!(kernel_arch("arm64", None), Arch::Arm64);
    assert_eq!(kernel_arch("amd64", Some(&arm)), Arch::X86_64);
    assert_eq!(kernel_arch("", Some(&arm)), Arch::Arm64);
    assert_eq!(kernel_arch("", None), Arch::X86_64);
}
