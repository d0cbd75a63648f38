//! Table tests of the checker on fixture configs built from the recommendation table.

use super::*;
use crate::kspp::config::parse;
use crate::kspp::data::{BOOT_PARAMS, SYSCTLS};

/// A `.config` meeting every recommendation for `arch`, with `broken` set to a wrong value.
fn fixture(arch: Arch, broken: Option<&str>) -> String {
    let mut out = String::from("# fixture\nCONFIG_UNRELATED=y\n");
    for s in SETTINGS.iter().filter(|s| s.arch.applies_to(arch)) {
        let line = match (s.expected, broken == Some(s.name)) {
            (Expected::Yes, false) => format!("{}=y", s.name),
            (Expected::Yes, true) => format!("{}=m", s.name),
            (Expected::NotSet, false) => format!("# {} is not set", s.name),
            (Expected::NotSet, true) => format!("{}=y", s.name),
            (Expected::Number(n), false) => format!("{}={n}", s.name),
            (Expected::Number(n), true) => format!("{}={}", s.name, n + 1),
            (Expected::Str(v), false) => format!("{}=\"{v}\"", s.name),
            (Expected::Str(_), true) => format!("{}=\"other\"", s.name),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn applicable(arch: Arch) -> usize {
    SETTINGS.iter().filter(|s| s.arch.applies_to(arch)).count()
}

#[test]
fn kspp_all_met() {
    for arch in [Arch::X86_64, Arch::Arm64] {
        let cfg = parse(&fixture(arch, None)).unwrap();
        let report = check(Some(&cfg), arch, &[]).unwrap();
        let Report::Checked {
            met,
            unmet,
            excepted,
        } = &report
        else {
            panic!("{report:?}")
        };
        assert_eq!(unmet, &[], "{arch:?}");
        assert!(excepted.is_empty());
        assert_eq!(met.len(), applicable(arch));
        assert!(report.all_met());
    }
}

#[test]
fn kspp_each_unmet_is_reported_alone() {
    for s in SETTINGS.iter().filter(|s| s.arch.applies_to(Arch::X86_64)) {
        let cfg = parse(&fixture(Arch::X86_64, Some(s.name))).unwrap();
        let report = check(Some(&cfg), Arch::X86_64, &[]).unwrap();
        let Report::Checked { met, unmet, .. } = &report else {
            panic!("{report:?}")
        };
        assert_eq!(unmet.len(), 1, "{}: {unmet:?}", s.name);
        assert_eq!(unmet[0].setting, s.name);
        assert_eq!(unmet[0].expected, s.expected.to_string());
        assert_ne!(unmet[0].found, unmet[0].expected);
        assert_eq!(met.len(), applicable(Arch::X86_64) - 1);
        assert!(!report.all_met());
    }
}

#[test]
fn kspp_absent_symbols() {
    // Absent meets "not set" and fails "y", reported as `absent`.
    let cfg = parse("CONFIG_UNRELATED=y\n").unwrap();
    let Report::Checked { met, unmet, .. } = check(Some(&cfg), Arch::X86_64, &[]).unwrap() else {
        panic!("unknown")
    };
    assert!(met.contains(&"CONFIG_KEXEC"));
    let bug = unmet.iter().find(|u| u.setting == "CONFIG_BUG").unwrap();
    assert_eq!((bug.expected.as_str(), bug.found.as_str()), ("y", "absent"));
    assert_eq!(met.len() + unmet.len(), applicable(Arch::X86_64));
}

#[test]
fn kspp_renamed_settings_are_read_under_their_older_name() {
    let text = fixture(Arch::X86_64, None)
        .replace("CONFIG_MITIGATION_SLS=y", "CONFIG_SLS=y")
        .replace(
            "CONFIG_MITIGATION_PAGE_TABLE_ISOLATION=y",
            "# CONFIG_PAGE_TABLE_ISOLATION is not set",
        );
    let report = check(Some(&parse(&text).unwrap()), Arch::X86_64, &[]).unwrap();
    let Report::Checked { met, unmet, .. } = &report else {
        panic!("{report:?}")
    };
    assert!(met.contains(&"CONFIG_MITIGATION_SLS"));
    assert_eq!(unmet.len(), 1);
    assert_eq!(unmet[0].setting, "CONFIG_MITIGATION_PAGE_TABLE_ISOLATION");
    assert_eq!(unmet[0].found, "is not set");
}

#[test]
fn kspp_unknown_kernel() {
    let report = check(None, Arch::X86_64, &[]).unwrap();
    assert_eq!(report, Report::Unknown);
    assert!(!report.all_met());
    assert_eq!(
        serde_json::to_string(&report).unwrap(),
        r#"{"status":"unknown"}"#
    );
}

#[test]
fn kspp_exceptions_move_settings_out_of_unmet() {
    let cfg = parse(&fixture(Arch::X86_64, Some("CONFIG_KEXEC"))).unwrap();
    let exceptions = vec![
        Exception {
            setting: "CONFIG_KEXEC".into(),
            reason: "kexec rollouts".into(),
        },
        Exception {
            setting: "CONFIG_BUG".into(),
            reason: "met anyway".into(),
        },
        // Sysctl and boot-parameter exceptions are valid and do not touch the config check.
        Exception {
            setting: "kernel.kexec_load_disabled".into(),
            reason: "kexec rollouts".into(),
        },
        Exception {
            setting: "init_on_free".into(),
            reason: "throughput".into(),
        },
        // Other architectures' settings are valid names and ignored here.
        Exception {
            setting: "CONFIG_ARM64_BTI".into(),
            reason: "n/a".into(),
        },
    ];
    let report = check(Some(&cfg), Arch::X86_64, &exceptions).unwrap();
    let Report::Checked {
        met,
        unmet,
        excepted,
    } = &report
    else {
        panic!("{report:?}")
    };
    assert!(unmet.is_empty());
    assert!(report.all_met());
    assert_eq!(
        excepted,
        &[
            Excepted {
                setting: "CONFIG_BUG",
                reason: "met anyway".into(),
                met: true
            },
            Excepted {
                setting: "CONFIG_KEXEC",
                reason: "kexec rollouts".into(),
                met: false
            },
        ]
    );
    assert_eq!(met.len(), applicable(Arch::X86_64) - 2);
}

#[test]
fn kspp_bad_exceptions_are_errors_naming_them() {
    let cfg = parse(&fixture(Arch::X86_64, None)).unwrap();
    let unknown = [
        Exception {
            setting: "CONFIG_BUG".into(),
            reason: "r".into(),
        },
        Exception {
            setting: "CONFIG_NO_SUCH_THING".into(),
            reason: "r".into(),
        },
    ];
    let err = check(Some(&cfg), Arch::X86_64, &unknown).unwrap_err();
    assert_eq!(
        err.to_string(),
        "exceptions[1].setting: \"CONFIG_NO_SUCH_THING\" is not a KSPP recommendation \
         (a CONFIG_ setting, sysctl key or boot parameter name)"
    );
    // Also rejected when no config could be read: the spec is wrong either way.
    assert!(matches!(
        check(None, Arch::X86_64, &unknown),
        Err(Error::UnknownException { index: 1, .. })
    ));
    let empty = [Exception {
        setting: "slab_nomerge".into(),
        reason: "  ".into(),
    }];
    let err = validate_exceptions(&empty).unwrap_err();
    assert_eq!(
        err.to_string(),
        "exceptions[0].reason: empty (every exception to slab_nomerge needs a reason)"
    );
    // A full boot parameter (with its value) is not a name.
    assert!(
        validate_exceptions(&[Exception {
            setting: "init_on_alloc=1".into(),
            reason: "r".into()
        }])
        .is_err()
    );
}

#[test]
fn kspp_table_is_consistent() {
    for (i, s) in SETTINGS.iter().enumerate() {
        assert!(
            s.name.starts_with("CONFIG_") && !s.reason.is_empty(),
            "{}",
            s.name
        );
        let dup = SETTINGS[..i].iter().any(|t| {
            t.name == s.name && (t.arch == s.arch || t.arch == Arch::Any || s.arch == Arch::Any)
        });
        assert!(!dup, "{} listed twice for one arch", s.name);
    }
    for p in BOOT_PARAMS {
        assert!(
            p.requires
                .is_none_or(|r| SETTINGS.iter().any(|s| s.name == r)),
            "{}",
            p.param
        );
    }
    assert!(
        SYSCTLS
            .iter()
            .any(|s| s.key == "kernel.kexec_load_disabled" && s.value == "1")
    );
}
