//! The per-node report on fixture files: everything met, each kind of miss, lockdown present or
//! not, and the message bound.

use super::*;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A node with every KSPP boot parameter and sysctl in force and lockdown `integrity`.
    fn hardened() -> Self {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        let params: Vec<&str> = BOOT_PARAMS.iter().map(|p| p.param).collect();
        f.write(
            "proc/cmdline",
            &format!("console=ttyS0 {} kitfleet.buildkey=ab\n", params.join(" ")),
        );
        for s in SYSCTLS {
            f.write(
                &format!("proc/sys/{}", s.key.replace('.', "/")),
                &format!("{}\n", s.value),
            );
        }
        f.write(
            "sys/kernel/security/lockdown",
            "none [integrity] confidentiality\n",
        );
        f
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn paths(&self) -> Paths {
        let d = self.dir.path();
        Paths {
            cmdline: d.join("proc/cmdline"),
            sysctl_root: d.join("proc/sys"),
            lockdown: d.join("sys/kernel/security/lockdown"),
        }
    }
}

fn now() -> Time {
    Time("2026-11-29T20:00:00Z".parse().unwrap())
}

#[test]
fn kspp_node_everything_met() {
    let f = Fixture::hardened();
    let r = observe(&f.paths(), Arch::X86_64).unwrap();
    assert_eq!(r.unmet, Vec::<String>::new());
    assert_eq!(r.total, BOOT_PARAMS.len() + SYSCTLS.len());
    assert_eq!(r.lockdown.as_deref(), Some("integrity"));
    let c = condition(&r, now());
    assert_eq!(
        (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
        ("KitfleetHardened", "True", "KsppMet")
    );
    assert!(
        c.message
            .contains(&format!("{0}/{0} boot parameters", r.total)),
        "{}",
        c.message
    );
    assert!(c.message.contains("lockdown integrity"), "{}", c.message);
}

#[test]
fn kspp_node_each_miss_is_named() {
    let f = Fixture::hardened();
    f.write(
        "proc/cmdline",
        "console=ttyS0 init_on_alloc=0 slab_nomerge page_alloc.shuffle=1 hardened_usercopy=1 \
         init_on_free=1 randomize_kstack_offset=on iommu.passthrough=0 iommu.strict=1 pti=on vsyscall=none\n",
    );
    f.write("proc/sys/kernel/kptr_restrict", "1\n");
    std::fs::remove_file(f.dir.path().join("proc/sys/kernel/yama/ptrace_scope")).unwrap();
    f.write(
        "sys/kernel/security/lockdown",
        "[none] integrity confidentiality\n",
    );
    let r = observe(&f.paths(), Arch::X86_64).unwrap();
    assert_eq!(
        r.unmet,
        vec![
            "init_on_alloc (found init_on_alloc=0, want init_on_alloc=1)",
            "lockdown (found none, want integrity)",
            "kernel.kptr_restrict (found 1, want 2)",
            "kernel.yama.ptrace_scope (found absent, want 1)",
        ]
    );
    let c = condition(&r, now());
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "KsppUnmet")
    );
    assert!(
        c.message.contains(&format!("{}/{}", r.total - 4, r.total)),
        "{}",
        c.message
    );
    assert!(
        c.message.contains("unmet: init_on_alloc (found"),
        "{}",
        c.message
    );
}

#[test]
fn kspp_node_without_lockdown_does_not_count_it() {
    let f = Fixture::hardened();
    std::fs::remove_file(f.dir.path().join("sys/kernel/security/lockdown")).unwrap();
    let r = observe(&f.paths(), Arch::X86_64).unwrap();
    assert_eq!(r.total, BOOT_PARAMS.len() + SYSCTLS.len() - 1);
    assert!(r.unmet.is_empty() && r.lockdown.is_none());
    // arm64 has no pti/vsyscall.
    let arm = observe(&f.paths(), Arch::Arm64).unwrap();
    assert_eq!(arm.total, r.total - 2);
}

#[test]
fn kspp_node_message_is_bounded() {
    let f = Fixture::hardened();
    f.write("proc/cmdline", "console=ttyS0\n");
    for s in SYSCTLS {
        f.write(
            &format!("proc/sys/{}", s.key.replace('.', "/")),
            &format!("{}\n", "9".repeat(200)),
        );
    }
    let r = observe(&f.paths(), Arch::X86_64).unwrap();
    assert_eq!(r.unmet.len(), r.total - 1, "all but lockdown");
    let c = condition(&r, now());
    assert!(c.message.len() <= MAX_MESSAGE, "{}", c.message.len());
    assert!(c.message.contains(" more"), "{}", c.message);
}

#[test]
fn kspp_node_unreadable_cmdline_is_an_error() {
    let f = Fixture::hardened();
    let mut p = f.paths();
    p.cmdline = f.dir.path().join("nope");
    let e = observe(&p, Arch::X86_64).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn kspp_node_condition_keeps_the_transition_time() {
    let f = Fixture::hardened();
    let c = condition(&observe(&f.paths(), Arch::X86_64).unwrap(), now());
    let old = k8s_openapi::api::core::v1::NodeCondition {
        type_: CONDITION_TYPE.into(),
        status: "True".into(),
        last_transition_time: Some(Time("2026-01-01T00:00:00Z".parse().unwrap())),
        ..Default::default()
    };
    let n = to_node_condition(&c, Some(&old));
    assert_eq!(n.last_transition_time, old.last_transition_time);
    let flipped = k8s_openapi::api::core::v1::NodeCondition {
        status: "False".into(),
        ..old
    };
    assert_eq!(
        to_node_condition(&c, Some(&flipped)).last_transition_time,
        Some(now())
    );
}
