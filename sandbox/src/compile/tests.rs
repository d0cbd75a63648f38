use super::*;
use crate::seccomp::bpf::{SeccompData, run};
use crate::seccomp::{CmpOp, Cond};
use kitfleet_api::security::FsAccess;

fn policy(yaml: &str) -> SecurityPolicy {
    let mut v: serde_json::Value = serde_saphyr::from_str(yaml).expect("yaml");
    v.as_object_mut().unwrap().remove("apiVersion");
    v.as_object_mut().unwrap().remove("kind");
    kitfleet_api::from_value(v).expect("policy parses")
}

fn named(name: &str, spec: &str) -> SecurityPolicy {
    policy(&format!(
        "metadata: {{name: {name}, namespace: ns}}\nspec:\n{spec}"
    ))
}

fn errors(p: &[SecurityPolicy]) -> Vec<String> {
    compile(p, &Options::default())
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn decide(c: &Compiled, layer: usize, name: &str, args: [u64; 6]) -> u32 {
    let arch = Arch::X86_64;
    let prog = &c.policy.seccomp[&arch][layer].program;
    let d = SeccompData {
        nr: arch.lookup(name).unwrap(),
        arch: arch.audit_arch(),
        ip: 0,
        args,
    };
    run(prog, &d).unwrap()
}

#[test]
fn every_error_names_the_policy_and_the_field() {
    let p = named(
        "bad",
        r#"
  landlock:
    minAbi: 0
    filesystem:
      - {paths: [relative/dir], access: [read-file]}
      - {paths: [], access: []}
    network: {bindTcp: [0, 80], connectTcp: [70000]}
  seccomp:
    defaultAction: allow
    defaultErrno: 5
    rules:
      - {names: [no_such_call], action: errno}
      - {names: [open], action: allow}
      - {names: [ptrace], action: allow, errno: 3}
      - {names: [ptrace], action: kill-process}
      - {names: [lseek], action: errno, errno: 5000}
      - names: [mmap]
        action: allow
        args: [{index: 6, op: eq, value: 1}, {index: 1, op: masked-eq, value: 1}, {index: 2, op: eq, value: 1, valueTwo: 2}]
"#,
    );
    let e = errors(&[p]);
    let want = [
        "policy ns/bad: spec.landlock.minAbi: must be at least 1",
        "policy ns/bad: spec.landlock.filesystem[0].paths[0]: \"relative/dir\" is not an absolute path",
        "policy ns/bad: spec.landlock.filesystem[1].paths: at least one path is required",
        "policy ns/bad: spec.landlock.filesystem[1].access: at least one access right is required",
        "policy ns/bad: spec.landlock.network.bindTcp[0]: port 0 is not in 1-65535",
        "policy ns/bad: spec.landlock.network.connectTcp[0]: port 70000 is not in 1-65535",
        "policy ns/bad: spec.seccomp.defaultErrno: an errno contradicts action allow",
        "policy ns/bad: spec.seccomp.rules[0].names[0]: unknown syscall \"no_such_call\"",
        "policy ns/bad: spec.seccomp.rules[1].names[0]: \"open\" is not a syscall on aarch64 (compile for fewer architectures)",
        "policy ns/bad: spec.seccomp.rules[2].errno: an errno contradicts action allow",
        "policy ns/bad: spec.seccomp.rules[3].names[0]: \"ptrace\" is also in spec.seccomp.rules[2] with a different action",
        "policy ns/bad: spec.seccomp.rules[4].errno: errno 5000 is not in 1-4095",
        "policy ns/bad: spec.seccomp.rules[5].args[0].index: argument index 6 is not in 0-5",
        "policy ns/bad: spec.seccomp.rules[5].args[1].valueTwo: masked-eq needs valueTwo",
        "policy ns/bad: spec.seccomp.rules[5].args[2].valueTwo: valueTwo is only valid with masked-eq",
    ];
    for w in want {
        assert!(e.iter().any(|x| x == w), "missing {w:?} in {e:#?}");
    }
    assert_eq!(e.len(), want.len(), "{e:#?}");
}

#[test]
fn one_architecture_accepts_its_own_calls() {
    let p = named(
        "x",
        "  seccomp:\n    defaultAction: allow\n    rules:\n      - {names: [open], action: errno}\n",
    );
    let opts = Options {
        arches: vec![Arch::X86_64],
        report_socket: None,
    };
    let c = compile(&[p], &opts).unwrap();
    assert_eq!(c.policy.seccomp.keys().collect::<Vec<_>>(), [&Arch::X86_64]);
    assert_eq!(c.profile.architectures, ["SCMP_ARCH_X86_64"]);
}

#[test]
fn unknown_access_right_is_a_parse_error_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    let yaml = "apiVersion: kitfleet.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: a}\nspec:\n  landlock:\n    filesystem:\n      - {paths: [/x], access: [fly]}\n";
    std::fs::write(&f, yaml).unwrap();
    let e = crate::cli::read_manifests(&[f]).unwrap_err();
    assert!(
        e.contains("document 0: policy a: spec.landlock.filesystem[0].access[0]"),
        "{e}"
    );
    assert!(e.contains("fly"), "{e}");
}

const A: &str = r#"
  landlock:
    minAbi: 3
    filesystem: [{paths: [/usr], access: [read-file, execute, read-file]}]
  seccomp:
    defaultAction: errno
    base: runtime/default
    rules:
      - {names: [uname], action: errno, errno: 38}
      - names: [lseek]
        action: errno
        errno: 22
        args: [{index: 1, op: gt, value: 4294967296}]
"#;

const B: &str = r#"
  mode: enforce-and-log
  landlock:
    network: {connectTcp: [443, 443, 80]}
  seccomp:
    defaultAction: kill-process
    base: runtime/default
    rules:
      - {names: [uname], action: allow}
      - {names: [getpgid], action: trap}
"#;

#[test]
fn stacked_policies_become_layers_and_merge_in_the_profile() {
    let c = compile(&[named("a", A), named("b", B)], &Options::default()).unwrap();
    let p = &c.policy;
    assert_eq!(p.policies, ["ns/a", "ns/b"]);
    assert_eq!(p.landlock.len(), 2);
    assert_eq!(
        p.landlock[0].filesystem[0].access,
        [FsAccess::Execute, FsAccess::ReadFile]
    );
    assert_eq!(
        p.landlock[1].network.as_ref().unwrap().connect_tcp,
        [80, 443]
    );
    assert_eq!(p.seccomp[&Arch::X86_64].len(), 2);
    assert!(p.seccomp[&Arch::X86_64][1].log && !p.seccomp[&Arch::X86_64][0].log);
    // Layer a: uname → ENOSYS; lseek with a > 4 GiB offset → EINVAL, else allowed.
    assert_eq!(decide(&c, 0, "uname", [0; 6]), Action::Errno(38).ret());
    assert_eq!(
        decide(&c, 0, "lseek", [3, 1 << 33, 0, 0, 0, 0]),
        Action::Errno(22).ret()
    );
    assert_eq!(
        decide(&c, 0, "lseek", [3, 5, 0, 0, 0, 0]),
        Action::Allow.ret()
    );
    assert_eq!(decide(&c, 0, "ptrace", [0; 6]), Action::Errno(1).ret());
    assert_eq!(decide(&c, 1, "ptrace", [0; 6]), Action::KillProcess.ret());
    // The profile: strictest default, uname errno from a, getpgid trap from b, launcher needs allowed.
    let prof = &c.profile;
    assert_eq!(prof.default_action, "SCMP_ACT_KILL_PROCESS");
    assert_eq!(prof.flags, ["SECCOMP_FILTER_FLAG_LOG"]);
    let find = |name: &str| {
        prof.syscalls
            .iter()
            .filter(|s| s.names.iter().any(|n| n == name))
            .collect::<Vec<_>>()
    };
    assert_eq!(find("uname")[0].action, "SCMP_ACT_ERRNO");
    assert_eq!(find("uname")[0].errno_ret, Some(38));
    assert_eq!(find("getpgid")[0].action, "SCMP_ACT_TRAP");
    assert_eq!(find("landlock_restrict_self")[0].action, "SCMP_ACT_ALLOW");
    assert!(
        find("ptrace").is_empty(),
        "ptrace falls to the kill default"
    );
    // clone: allowed without namespace flags (both layers' base), else the default.
    let clone = find("clone");
    assert_eq!(clone.len(), 1);
    assert_eq!(clone[0].args[0].op, "SCMP_CMP_MASKED_EQ");
}

#[test]
fn output_is_byte_identical_on_recompile() {
    let c1 = compile(&[named("a", A), named("b", B)], &Options::default()).unwrap();
    let c2 = compile(&[named("a", A), named("b", B)], &Options::default()).unwrap();
    assert_eq!(c1.policy.to_json(), c2.policy.to_json());
    assert_eq!(c1.profile.to_json(), c2.profile.to_json());
    let back = CompiledPolicy::from_json("p", c1.policy.to_json().as_bytes()).unwrap();
    assert_eq!(back, c1.policy);
}

#[test]
fn audit_mode_logs_instead_of_denying() {
    let audit = A.replacen("\n  landlock:", "\n  mode: audit\n  landlock:", 1);
    let c = compile(&[named("a", &audit)], &Options::default()).unwrap();
    assert_eq!(decide(&c, 0, "uname", [0; 6]), Action::Log.ret());
    assert_eq!(decide(&c, 0, "ptrace", [0; 6]), Action::Log.ret());
    assert_eq!(c.profile.default_action, "SCMP_ACT_LOG");
    assert_eq!(c.policy.landlock[0].mode, PolicyMode::Audit);
}

#[test]
fn policy_file_version_is_checked() {
    let mut p = CompiledPolicy::new();
    p.version = 2;
    let e = CompiledPolicy::from_json("f.json", p.to_json().as_bytes())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "policy file f.json: version: this launcher reads version 1, found 2"
    );
    let e = CompiledPolicy::from_json("f.json", br#"{"format":"kitfleet.dev/sandbox-policy","version":1,"policies":[],"landlock":[{"policy":1}]}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("policy file f.json: landlock[0].policy: invalid type"),
        "{e}"
    );
}

#[test]
fn profile_merge_is_exact_or_looser_never_stricter() {
    use crate::oci::merge;
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let actions = [
        Action::Allow,
        Action::Log,
        Action::Errno(1),
        Action::Trap,
        Action::KillProcess,
    ];
    let rule = |next: &mut dyn FnMut() -> u64| {
        let action = actions[(next() % 5) as usize];
        if next().is_multiple_of(3) {
            return SyscallRule::always(action);
        }
        let clauses = (0..1 + next() % 2)
            .map(|_| vec![Cond::wide((next() % 2) as u8, CmpOp::Eq, next() % 3, 0)])
            .collect();
        SyscallRule {
            clauses,
            action,
            otherwise: actions[(next() % 5) as usize],
        }
    };
    for _ in 0..2000 {
        let (a, b) = (rule(&mut next), rule(&mut next));
        let (m, exact) = merge(&a, &b);
        for x in 0..3 {
            for y in 0..3 {
                let args = [x, y, 0, 0, 0, 0];
                let want = a.decide(&args).strictest(b.decide(&args));
                let got = m.decide(&args);
                if exact {
                    assert_eq!(got, want, "{a:?} {b:?}");
                } else {
                    assert!(got.precedence() <= want.precedence(), "{a:?} {b:?}");
                }
            }
        }
    }
}

#[test]
fn filters_must_let_the_launcher_finish() {
    let strict =
        "  seccomp:\n    defaultAction: errno\n    rules: [{names: [read], action: allow}]\n";
    let second = "  seccomp:\n    defaultAction: allow\n";
    let e = errors(&[named("a", strict), named("b", second)]);
    assert_eq!(
        e,
        [
            "policy ns/a: spec.seccomp: execve must be allowed unconditionally: the launcher cannot exec the workload",
            "policy ns/a: spec.seccomp: seccomp must be allowed unconditionally: the launcher cannot install the filter of ns/b",
        ]
    );
    let ok =
        "  seccomp:\n    defaultAction: errno\n    rules: [{names: [execve], action: allow}]\n";
    assert!(compile(&[named("a", ok)], &Options::default()).is_ok());
}

#[test]
fn a_filter_over_the_kernel_limit_is_an_error() {
    // 400 rules with 6 conditions each: far above 4096 instructions.
    let mut spec = String::from("  seccomp:\n    defaultAction: allow\n    rules:\n");
    for i in 0..400 {
        let args: Vec<String> = (0..6)
            .map(|k| format!("{{index: {k}, op: ne, value: {}}}", i * 7 + k))
            .collect();
        spec.push_str(&format!(
            "      - {{names: [ioctl], action: errno, args: [{}]}}\n",
            args.join(", ")
        ));
    }
    let e = errors(&[named("big", &spec)]);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("policy ns/big: spec.seccomp.rules: the x86_64 filter needs "),
        "{e:?}"
    );
    assert!(e[1].contains("aarch64"), "{e:?}");
}

fn raw(c: &Compiled, nr: u32, args: [u64; 6]) -> u32 {
    let arch = Arch::X86_64;
    let d = SeccompData {
        nr,
        arch: arch.audit_arch(),
        ip: 0,
        args,
    };
    run(&c.policy.seccomp[&arch][0].program, &d).unwrap()
}

#[test]
fn int_arguments_compare_only_the_low_32_bits() {
    let p = named(
        "net",
        "  seccomp:\n    defaultAction: allow\n    rules:\n      - {names: [socket], action: errno, errno: 97, args: [{index: 0, op: eq, value: 2}]}\n      - {names: [lseek], action: errno, errno: 75, args: [{index: 1, op: gt, value: 4294967296}]}\n      - {names: [openat], action: errno, errno: 9, args: [{index: 0, op: eq, value: 18446744073709551516}]}\n",
    );
    let c = compile(&[p], &Options::default()).unwrap();
    let no_af = Action::Errno(97).ret();
    let allow = Action::Allow.ret();
    assert_eq!(decide(&c, 0, "socket", [2, 1, 0, 0, 0, 0]), no_af);
    // The kernel truncates `int family` to 32 bits: these are AF_INET too.
    assert_eq!(
        decide(&c, 0, "socket", [0x1_0000_0002, 1, 0, 0, 0, 0]),
        no_af
    );
    assert_eq!(
        decide(&c, 0, "socket", [0xffff_ffff_0000_0002, 1, 0, 0, 0, 0]),
        no_af
    );
    assert_eq!(decide(&c, 0, "socket", [10, 1, 0, 0, 0, 0]), allow);
    // lseek's offset is an off_t (64-bit): both halves still count.
    assert_eq!(
        decide(&c, 0, "lseek", [0, 0x2_0000_0000, 0, 0, 0, 0]),
        Action::Errno(75).ret()
    );
    assert_eq!(
        decide(&c, 0, "lseek", [0, 0x1_0000_0000, 0, 0, 0, 0]),
        allow
    );
    // AT_FDCWD (-100) written sign-extended matches however the caller extends it.
    let at_fdcwd = Action::Errno(9).ret();
    assert_eq!(
        decide(&c, 0, "openat", [0xffff_ffff_ffff_ff9c, 0, 0, 0, 0, 0]),
        at_fdcwd
    );
    assert_eq!(
        decide(&c, 0, "openat", [0xffff_ff9c, 0, 0, 0, 0, 0]),
        at_fdcwd
    );
    assert_eq!(decide(&c, 0, "openat", [3, 0, 0, 0, 0, 0]), allow);
}

#[test]
fn a_value_that_does_not_fit_an_int_argument_is_an_error() {
    let p = named(
        "wide",
        "  seccomp:\n    defaultAction: allow\n    rules:\n      - {names: [socket], action: errno, args: [{index: 0, op: eq, value: 4294967298}]}\n",
    );
    assert_eq!(
        errors(&[p]),
        [
            "policy ns/wide: spec.seccomp.rules[0].args[0].value: argument 0 of socket is a 32-bit int \
          (the kernel uses only the low 32 bits): 0x100000002 does not fit"
        ]
    );
}

#[test]
fn unassigned_numbers_get_the_default_action() {
    let p = named(
        "strict",
        "  seccomp:\n    defaultAction: errno\n    base: runtime/default\n",
    );
    let c = compile(&[p], &Options::default()).unwrap();
    let eperm = Action::Errno(1).ret();
    // 337-423 and 463+ name no syscall in the table (336 is uprobe, which the base allows), but
    // a newer kernel may run them.
    for nr in [337, 400, 423, 470, 1000] {
        assert_eq!(raw(&c, nr, [0; 6]), eperm, "nr {nr}");
    }
    assert_eq!(
        raw(&c, 334, [0; 6]),
        Action::Allow.ret(),
        "rseq is in the base"
    );
}

#[test]
fn every_widened_profile_rule_has_a_note() {
    let p = named(
        "narrow",
        "  seccomp:\n    defaultAction: allow\n    rules:\n      - {names: [prctl], action: kill-process}\n      - {names: [socket], action: errno, args: [{index: 0, op: ne, value: 2}]}\n      - {names: [kill], action: errno, args: [{index: 1, op: eq, value: 9}]}\n",
    );
    let c = compile(&[p], &Options::default()).unwrap();
    let notes = c.notes.join("\n");
    assert!(notes.contains("prctl:"), "{notes}");
    assert!(notes.contains("socket:"), "{notes}");
    assert!(
        !notes.contains("kill:"),
        "eq on an int is exact in the profile: {notes}"
    );
    let kill = c
        .profile
        .syscalls
        .iter()
        .find(|s| s.names.contains(&"kill".to_string()))
        .unwrap();
    assert_eq!(kill.args[0].op, "SCMP_CMP_MASKED_EQ");
    assert_eq!(
        (kill.args[0].value, kill.args[0].value_two),
        (0xffff_ffff, 9)
    );
}
