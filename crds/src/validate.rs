//! Validation beyond what one CEL rule can express. Returns *every* problem, each with its field path, so the
//! controller's `Degraded` condition, its Event and the admission webhook all say the same thing.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::{Errors, FieldErrors};
use crate::linuxkit::{self, Image};
use crate::nodeimage::{
    HardeningSpec, MaintenanceWindow, NodeImageSpec, RolloutMethod, RolloutSpec,
};
use crate::reference::Reference;
use crate::security::{ArgOp, LandlockPolicy, SeccompAction, SeccompPolicy, SecurityPolicySpec};

/// Validates a NodeImage spec. Paths start at `spec`.
pub fn nodeimage(spec: &NodeImageSpec) -> Result<(), FieldErrors> {
    let mut errs = Errors::default();
    linuxkit_config(&spec.image, "spec.", &mut errs);
    for (i, f) in spec.image.files.iter().enumerate() {
        if f.source.is_some() {
            errs.push(
                format!("spec.files[{i}].source"),
                "a build Job cannot read files from your machine: use `contents` (or build with the CLI from LinuxKit YAML)",
            );
        }
    }
    let mut seen = BTreeSet::new();
    if spec.formats.is_empty() {
        errs.push("spec.formats", "at least one format is required");
    }
    for (i, f) in spec.formats.iter().enumerate() {
        if !seen.insert(f) {
            errs.push(
                format!("spec.formats[{i}]"),
                format!("duplicate format {f:?}", f = f.as_str()),
            );
        }
    }
    match Reference::parse_loose(&spec.output.repository) {
        Err(e) => errs.push("spec.output.repository", e.to_string()),
        Ok(r) if r.tag.is_some() || r.digest.is_some() => errs.push(
            "spec.output.repository",
            format!("{:?} must be a repository without tag or digest (the tag is derived from the build key)", spec.output.repository),
        ),
        Ok(_) => {}
    }
    if let Some(d) = &spec.refresh_interval
        && (d.is_negative() || std::time::Duration::from(*d).is_zero())
    {
        errs.push("spec.refreshInterval", "must be positive");
    }
    if let Some(r) = &spec.rollout {
        rollout(r, &mut errs);
    }
    if let Some(h) = &spec.hardening {
        hardening(h, spec.rollout.as_ref(), &mut errs);
    }
    errs.finish()
}

/// The sysctl KSPP sets that makes `kexec` impossible after boot.
pub const KEXEC_SYSCTL: &str = "kernel.kexec_load_disabled";

fn hardening(h: &HardeningSpec, rollout: Option<&RolloutSpec>, errs: &mut Errors) {
    let mut seen = BTreeMap::new();
    for (i, e) in h.exceptions.iter().enumerate() {
        let path = format!("spec.hardening.exceptions[{i}]");
        if !crate::kspp::is_known(&e.setting) {
            errs.push(
                format!("{path}.setting"),
                format!(
                    "{:?} is not a KSPP recommendation (a CONFIG_ setting, sysctl key or boot parameter name)",
                    e.setting
                ),
            );
        } else if let Some(first) = seen.insert(e.setting.as_str(), i) {
            errs.push(
                format!("{path}.setting"),
                format!(
                    "duplicate setting {:?} (also exceptions[{first}])",
                    e.setting
                ),
            );
        }
        if e.reason.trim().is_empty() {
            errs.push(
                format!("{path}.reason"),
                format!(
                    "a reason is required (why the image does without {})",
                    e.setting
                ),
            );
        }
    }
    if h.kspp.applies()
        && rollout.is_some_and(|r| r.method == RolloutMethod::Kexec)
        && !h.exceptions.iter().any(|e| e.setting == KEXEC_SYSCTL)
    {
        errs.push(
            "spec.hardening.kspp",
            format!(
                "{} sets {KEXEC_SYSCTL}=1, which spec.rollout.method: kexec cannot work with: add an exception for {KEXEC_SYSCTL} or use method reboot",
                h.kspp.as_str()
            ),
        );
    }
}

/// Validates a LinuxKit declaration on its own (paths start at the document root).
pub fn linuxkit(config: &linuxkit::Config) -> Result<(), FieldErrors> {
    let mut errs = Errors::default();
    linuxkit_config(config, "", &mut errs);
    errs.finish()
}

fn linuxkit_config(c: &linuxkit::Config, prefix: &str, errs: &mut Errors) {
    if c.kernel.is_none() {
        errs.push(format!("{prefix}kernel"), "a kernel is required");
    }
    for (path, r) in c.references() {
        if let Err(e) = Reference::parse(r) {
            errs.push(format!("{prefix}{path}"), e.to_string());
        }
    }
    for (section, images) in c.sections() {
        image_names(prefix, section, images, errs);
    }
    let mut volumes = BTreeSet::new();
    for (i, v) in c.volumes.iter().enumerate() {
        let path = format!("{prefix}volumes[{i}].name");
        if !is_name(&v.name) {
            errs.push(
                &path,
                format!("{:?} must be non-empty and of [a-z0-9_-]", v.name),
            );
        } else if !volumes.insert(v.name.as_str()) {
            errs.push(&path, format!("duplicate volume name {:?}", v.name));
        }
    }
    for (i, f) in c.files.iter().enumerate() {
        file(f, &format!("{prefix}files[{i}]"), errs);
    }
}

/// LinuxKit's volume-name rule (`nameRE` in `moby/config.go`), also applied to container names, which become
/// directory names in the image.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Names become directories; services run side by side, so theirs must be unique (LinuxKit's `uniqueServices`).
/// Onboot and onshutdown containers are numbered (`000-name`), so LinuxKit lets their names repeat.
fn image_names(prefix: &str, section: &str, images: &[Image], errs: &mut Errors) {
    let mut names = BTreeMap::new();
    for (i, img) in images.iter().enumerate() {
        let path = format!("{prefix}{section}[{i}].name");
        if !is_name(&img.name) {
            errs.push(
                &path,
                format!(
                    "{:?} must be non-empty and of [a-z0-9_-] (it names a directory)",
                    img.name
                ),
            );
        } else if let Some(first) = names.insert(img.name.as_str(), i)
            && section == "services"
        {
            errs.push(
                &path,
                format!("duplicate name {:?} (also {section}[{first}])", img.name),
            );
        }
    }
}

fn file(f: &linuxkit::File, path: &str, errs: &mut Errors) {
    if f.path.is_empty() {
        errs.push(format!("{path}.path"), "must not be empty");
    } else if f.path.split('/').any(|c| c == "..") {
        errs.push(
            format!("{path}.path"),
            format!("{:?} must not contain '..'", f.path),
        );
    }
    let sources = [
        ("contents", f.contents.is_some()),
        ("source", f.source.is_some()),
        ("symlink", f.symlink.is_some()),
        ("metadata", f.metadata.is_some()),
        ("directory", f.directory),
    ];
    let given: Vec<_> = sources
        .iter()
        .filter(|(_, set)| *set)
        .map(|(n, _)| *n)
        .collect();
    if given.len() > 1 {
        errs.push(
            path,
            format!(
                "only one of contents, source, symlink, metadata, directory may be set (got {})",
                given.join(", ")
            ),
        );
    }
    if let Some(m) = &f.metadata
        && m != "yaml"
    {
        errs.push(
            format!("{path}.metadata"),
            format!("{m:?} is not supported (only \"yaml\")"),
        );
    }
    if let Some(mode) = &f.mode
        && (mode.is_empty() || mode.len() > 5 || u32::from_str_radix(mode, 8).is_err())
    {
        errs.push(
            format!("{path}.mode"),
            format!("{mode:?} is not an octal mode like \"0644\""),
        );
    }
}

fn rollout(r: &RolloutSpec, errs: &mut Errors) {
    match &r.max_unavailable {
        IntOrString::Int(n) if *n <= 0 => errs.push(
            "spec.rollout.maxUnavailable",
            format!("{n} must be greater than 0"),
        ),
        IntOrString::String(s) => match s.strip_suffix('%').map(u32::from_str) {
            Some(Ok(p)) if (1..=100).contains(&p) => {}
            Some(Ok(p)) => errs.push(
                "spec.rollout.maxUnavailable",
                format!("{p}% must be between 1% and 100%"),
            ),
            _ => errs.push(
                "spec.rollout.maxUnavailable",
                format!("{s:?} must be an integer or a percentage like \"25%\""),
            ),
        },
        IntOrString::Int(_) => {}
    }
    for (field, d) in [
        ("drain.timeout", &r.drain.timeout),
        ("healthCheck.timeout", &r.health_check.timeout),
    ] {
        if let Some(d) = d
            && (d.is_negative() || std::time::Duration::from(*d).is_zero())
        {
            errs.push(format!("spec.rollout.{field}"), "must be positive");
        }
    }
    if let Some(g) = r.drain.grace_period_seconds
        && g < 0
    {
        errs.push(
            "spec.rollout.drain.gracePeriodSeconds",
            format!("{g} must not be negative"),
        );
    }
    if let Some(w) = &r.window {
        window(w, errs);
    }
}

fn window(w: &MaintenanceWindow, errs: &mut Errors) {
    let start = parse_hhmm(&w.start);
    let end = parse_hhmm(&w.end);
    if start.is_none() {
        errs.push(
            "spec.rollout.window.start",
            format!("{:?} is not a 24-hour HH:MM time", w.start),
        );
    }
    if end.is_none() {
        errs.push(
            "spec.rollout.window.end",
            format!("{:?} is not a 24-hour HH:MM time", w.end),
        );
    }
    if start.is_some() && start == end {
        errs.push(
            "spec.rollout.window",
            format!(
                "start and end are both {} (an empty window never opens)",
                w.start
            ),
        );
    }
    let mut days = BTreeSet::new();
    for (i, d) in w.days.iter().enumerate() {
        if !days.insert(d) {
            errs.push(
                format!("spec.rollout.window.days[{i}]"),
                format!("duplicate day {d:?}"),
            );
        }
    }
    if let Some(tz) = &w.time_zone
        && tz.parse::<chrono_tz::Tz>().is_err()
    {
        errs.push(
            "spec.rollout.window.timeZone",
            format!("{tz:?} is not an IANA time zone"),
        );
    }
}

/// Minutes since midnight of an `HH:MM` time.
pub fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// Validates a SecurityPolicy spec. Paths start at `spec`.
pub fn security_policy(spec: &SecurityPolicySpec) -> Result<(), FieldErrors> {
    let mut errs = Errors::default();
    if let Some(l) = &spec.landlock {
        landlock(l, &mut errs);
    }
    if let Some(s) = &spec.seccomp {
        seccomp(s, &mut errs);
    }
    errs.finish()
}

fn landlock(l: &LandlockPolicy, errs: &mut Errors) {
    if l.min_abi == Some(0) {
        errs.push("spec.landlock.minAbi", "must be at least 1");
    }
    for (i, rule) in l.filesystem.iter().enumerate() {
        let path = format!("spec.landlock.filesystem[{i}]");
        if rule.paths.is_empty() {
            errs.push(format!("{path}.paths"), "at least one path is required");
        }
        for (j, p) in rule.paths.iter().enumerate() {
            if !p.starts_with('/') {
                errs.push(
                    format!("{path}.paths[{j}]"),
                    format!("{p:?} must be an absolute path"),
                );
            } else if p.split('/').any(|c| c == "..") {
                errs.push(
                    format!("{path}.paths[{j}]"),
                    format!("{p:?} must not contain '..'"),
                );
            }
        }
        if rule.access.is_empty() {
            errs.push(
                format!("{path}.access"),
                "at least one access right is required",
            );
        }
        let mut seen = BTreeSet::new();
        for (j, a) in rule.access.iter().enumerate() {
            if !seen.insert(a) {
                errs.push(
                    format!("{path}.access[{j}]"),
                    format!("duplicate access right {a:?}"),
                );
            }
        }
    }
    if let Some(n) = &l.network {
        for (field, ports) in [("bindTcp", &n.bind_tcp), ("connectTcp", &n.connect_tcp)] {
            for (i, p) in ports.iter().enumerate() {
                if !(1..=65535).contains(p) {
                    errs.push(
                        format!("spec.landlock.network.{field}[{i}]"),
                        format!("port {p} is outside 1-65535"),
                    );
                }
            }
        }
    }
    let mut scopes = BTreeSet::new();
    for (i, s) in l.scopes.iter().enumerate() {
        if !scopes.insert(s) {
            errs.push(
                format!("spec.landlock.scopes[{i}]"),
                format!("duplicate scope {s:?}"),
            );
        }
    }
}

/// Whether `name` is a system call on any architecture Kitfleet compiles filters for.
pub fn is_syscall(name: &str) -> bool {
    syscalls::x86_64::Sysno::from_str(name).is_ok()
        || syscalls::aarch64::Sysno::from_str(name).is_ok()
}

fn seccomp(s: &SeccompPolicy, errs: &mut Errors) {
    if let Some(e) = s.default_errno {
        if s.default_action != SeccompAction::Errno {
            errs.push(
                "spec.seccomp.defaultErrno",
                "is only valid with defaultAction: errno",
            );
        }
        if !(1..=4095).contains(&e) {
            errs.push(
                "spec.seccomp.defaultErrno",
                format!("{e} is outside 1-4095"),
            );
        }
    }
    // An unconditional rule decides a syscall outright: two of them with different actions contradict each other.
    let mut unconditional: BTreeMap<&str, (usize, SeccompAction)> = BTreeMap::new();
    for (i, rule) in s.rules.iter().enumerate() {
        let path = format!("spec.seccomp.rules[{i}]");
        if rule.names.is_empty() {
            errs.push(
                format!("{path}.names"),
                "at least one syscall name is required",
            );
        }
        for (j, name) in rule.names.iter().enumerate() {
            if !is_syscall(name) {
                errs.push(
                    format!("{path}.names[{j}]"),
                    format!("unknown system call {name:?} (not on x86_64 or aarch64)"),
                );
            } else if rule.args.is_empty()
                && let Some((first, action)) = unconditional.insert(name, (i, rule.action))
                && action != rule.action
            {
                errs.push(
                    format!("{path}.names[{j}]"),
                    format!("{name:?} is also in rules[{first}] with another action ({action:?} vs {:?})", rule.action),
                );
            }
        }
        if let Some(e) = rule.errno {
            if rule.action != SeccompAction::Errno {
                errs.push(format!("{path}.errno"), "is only valid with action: errno");
            }
            if !(1..=4095).contains(&e) {
                errs.push(format!("{path}.errno"), format!("{e} is outside 1-4095"));
            }
        }
        let mut equal_to: BTreeMap<u8, u64> = BTreeMap::new();
        for (j, a) in rule.args.iter().enumerate() {
            let apath = format!("{path}.args[{j}]");
            if a.index > 5 {
                errs.push(
                    format!("{apath}.index"),
                    format!("{} is outside 0-5", a.index),
                );
            }
            match (a.op, a.value_two) {
                (ArgOp::MaskedEq, None) => {
                    errs.push(format!("{apath}.valueTwo"), "is required by op masked-eq")
                }
                (op, Some(_)) if op != ArgOp::MaskedEq => errs.push(
                    format!("{apath}.valueTwo"),
                    "is only valid with op masked-eq",
                ),
                _ => {}
            }
            if a.op == ArgOp::Eq
                && let Some(other) = equal_to.insert(a.index, a.value)
                && other != a.value
            {
                errs.push(
                    format!("{apath}.value"),
                    format!(
                        "argument {} must equal both {other} and {}: the rule can never match",
                        a.index, a.value
                    ),
                );
            }
        }
    }
}
