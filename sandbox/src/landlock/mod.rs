//! Landlock: negotiating a layer down to the kernel's ABI (pure), then building and enforcing
//! the rulesets (real syscalls).

pub mod sys;

use crate::policy::LandlockLayer;
use kitfleet_api::security::{FsAccess, PolicyMode, Scope};
use serde::Serialize;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

/// The ABI whose log flags exist (`LANDLOCK_RESTRICT_SELF_LOG_*`).
pub const ABI_LOGGING: u32 = 7;
/// The ABI that restricts TCP.
pub const ABI_NET: u32 = 4;
/// The ABI that knows scopes.
pub const ABI_SCOPES: u32 = 6;

/// Rights that apply to a non-directory file (the kernel rejects the others on one).
const FILE_RIGHTS: u64 = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15);

/// Every filesystem right the given ABI knows.
pub fn fs_rights(abi: u32) -> u64 {
    FsAccess::ALL
        .iter()
        .filter(|a| a.min_abi() <= abi)
        .fold(0, |m, a| m | a.bit())
}

/// Bits of a list of rights.
pub fn mask(access: &[FsAccess]) -> u64 {
    access.iter().fold(0, |m, a| m | a.bit())
}

/// Rights of a mask, in bit order.
pub fn rights(mask: u64) -> Vec<FsAccess> {
    FsAccess::ALL
        .iter()
        .copied()
        .filter(|a| mask & a.bit() != 0)
        .collect()
}

fn scope_bit(s: Scope) -> u64 {
    match s {
        Scope::AbstractUnixSocket => sys::SCOPE_ABSTRACT_UNIX_SOCKET,
        Scope::Signal => sys::SCOPE_SIGNAL,
    }
}

/// What one layer becomes on a kernel with a given ABI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Build and enforce a ruleset.
    Apply {
        /// `handled_access_fs`.
        fs: u64,
        /// `handled_access_net`.
        net: u64,
        /// `scoped`.
        scoped: u64,
        /// `landlock_restrict_self` flags.
        flags: u32,
    },
    /// Not applied (audit mode, or no Landlock and no minimum ABI), with the reason.
    Skip(String),
    /// The kernel is below the policy's minimum ABI: the workload must not run.
    Refuse {
        /// Required ABI.
        required: u32,
    },
}

/// Pure negotiation of `layer` against `abi`.
pub fn plan(layer: &LandlockLayer, abi: u32) -> Plan {
    if layer.mode == PolicyMode::Audit {
        return Plan::Skip(
            "audit mode: Landlock has no permissive mode, so the ruleset is not applied".into(),
        );
    }
    if let Some(required) = layer.min_abi
        && abi < required
    {
        return Plan::Refuse { required };
    }
    if abi == 0 {
        return Plan::Skip("the kernel has no Landlock (best effort: no minimum ABI)".into());
    }
    let net = match &layer.network {
        Some(_) if abi >= ABI_NET => sys::ACCESS_NET_BIND_TCP | sys::ACCESS_NET_CONNECT_TCP,
        _ => 0,
    };
    let scoped = if abi >= ABI_SCOPES {
        layer.scopes.iter().fold(0, |m, s| m | scope_bit(*s))
    } else {
        0
    };
    let flags = if layer.mode == PolicyMode::EnforceAndLog && abi >= ABI_LOGGING {
        sys::RESTRICT_SELF_LOG_NEW_EXEC_ON
    } else {
        0
    };
    Plan::Apply {
        fs: fs_rights(abi),
        net,
        scoped,
        flags,
    }
}

/// Outcome of one path of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleReport {
    /// `spec.landlock.filesystem[i]` of the source policy.
    pub field: String,
    /// The path.
    pub path: String,
    /// `enforced`, `narrowed` (a file: directory rights removed) or `dropped`.
    pub status: &'static str,
    /// Rights in force for the path.
    pub access: Vec<FsAccess>,
    /// Why a rule was narrowed or dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Outcome of one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerReport {
    /// `namespace/name`.
    pub policy: String,
    /// Whether a ruleset was enforced.
    pub applied: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Rights the policy grants but this ABI cannot restrict (they stay unrestricted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unsupported_access: Vec<FsAccess>,
    /// Per path.
    pub rules: Vec<RuleReport>,
    /// `enforced`, `unsupported (ABI n)` or absent when the policy has no network section.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Scopes in force.
    pub scopes: Vec<Scope>,
    /// Scopes the ABI cannot enforce.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unsupported_scopes: Vec<Scope>,
    /// Denials logged after exec (`enforce-and-log` on ABI ≥ 7).
    pub log_new_exec: bool,
}

/// Why the workload must not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kernel below the policy's minimum ABI.
    #[error(
        "policy {policy}: spec.landlock.minAbi is {required} but this kernel offers Landlock ABI {available}"
    )]
    Abi {
        /// Policy.
        policy: String,
        /// Required ABI.
        required: u32,
        /// Kernel ABI.
        available: u32,
    },
    /// A required rule path cannot be opened.
    #[error("policy {policy}: {field}: required path {path}: {source}")]
    RequiredPath {
        /// Policy.
        policy: String,
        /// Rule field.
        field: String,
        /// Path.
        path: String,
        /// Cause.
        source: io::Error,
    },
    /// A Landlock call failed.
    #[error("policy {policy}: {what}: {source}")]
    Kernel {
        /// Policy.
        policy: String,
        /// Which call.
        what: String,
        /// Cause.
        source: io::Error,
    },
}

/// Rulesets built and ready to enforce, with their report.
#[derive(Debug)]
pub struct Prepared {
    rulesets: Vec<(String, OwnedFd, u32)>,
    /// What will be enforced.
    pub reports: Vec<LayerReport>,
}

/// Opens every rule path and builds every ruleset, enforcing nothing yet (so a refusal leaves
/// no half-applied state).
pub fn prepare(layers: &[LandlockLayer], abi: u32) -> Result<Prepared, Error> {
    let mut out = Prepared {
        rulesets: Vec::new(),
        reports: Vec::new(),
    };
    for layer in layers {
        let mut report = LayerReport {
            policy: layer.policy.clone(),
            applied: false,
            reason: None,
            unsupported_access: Vec::new(),
            rules: Vec::new(),
            network: None,
            scopes: Vec::new(),
            unsupported_scopes: Vec::new(),
            log_new_exec: false,
        };
        match plan(layer, abi) {
            Plan::Refuse { required } => {
                return Err(Error::Abi {
                    policy: layer.policy.clone(),
                    required,
                    available: abi,
                });
            }
            Plan::Skip(reason) => report.reason = Some(reason),
            Plan::Apply {
                fs,
                net,
                scoped,
                flags,
            } => {
                let fd = build(layer, fs, net, scoped, &mut report)?;
                report.applied = true;
                report.log_new_exec = flags & sys::RESTRICT_SELF_LOG_NEW_EXEC_ON != 0;
                report.network = layer.network.as_ref().map(|_| {
                    if net != 0 {
                        "enforced".to_string()
                    } else {
                        format!("unsupported (ABI {abi} < {ABI_NET})")
                    }
                });
                for s in &layer.scopes {
                    if scoped & scope_bit(*s) != 0 {
                        &mut report.scopes
                    } else {
                        &mut report.unsupported_scopes
                    }
                    .push(*s);
                }
                out.rulesets.push((layer.policy.clone(), fd, flags));
            }
        }
        out.reports.push(report);
    }
    Ok(out)
}

fn build(
    layer: &LandlockLayer,
    fs: u64,
    net: u64,
    scoped: u64,
    report: &mut LayerReport,
) -> Result<OwnedFd, Error> {
    let kernel = |what: &str, source| Error::Kernel {
        policy: layer.policy.clone(),
        what: what.into(),
        source,
    };
    let ruleset =
        sys::create_ruleset(fs, net, scoped).map_err(|e| kernel("landlock_create_ruleset", e))?;
    let mut unsupported = 0;
    for rule in &layer.filesystem {
        let wanted = mask(&rule.access);
        unsupported |= wanted & !fs;
        for path in &rule.paths {
            let mut r = RuleReport {
                field: rule.field.clone(),
                path: path.clone(),
                status: "enforced",
                access: Vec::new(),
                reason: None,
            };
            let file = match open_path(path) {
                Ok(f) => f,
                Err(source) if rule.required => {
                    return Err(Error::RequiredPath {
                        policy: layer.policy.clone(),
                        field: rule.field.clone(),
                        path: path.clone(),
                        source,
                    });
                }
                Err(e) => {
                    r.status = "dropped";
                    r.reason = Some(e.to_string());
                    report.rules.push(r);
                    continue;
                }
            };
            let mut access = wanted & fs;
            if !file.1 && access & !FILE_RIGHTS != 0 {
                r.status = "narrowed";
                r.reason = Some(format!(
                    "not a directory: {:?} do not apply",
                    rights(access & !FILE_RIGHTS)
                ));
                access &= FILE_RIGHTS;
            }
            r.access = rights(access);
            if access == 0 {
                r.status = "dropped";
                r.reason
                    .get_or_insert_with(|| "no right this ABI can restrict".into());
            } else {
                sys::add_path_rule(ruleset.as_fd(), file.0.as_fd(), access)
                    .map_err(|e| kernel(&format!("{}: landlock_add_rule {path}", rule.field), e))?;
            }
            report.rules.push(r);
        }
    }
    report.unsupported_access = rights(unsupported);
    if let (Some(ports), true) = (&layer.network, net != 0) {
        for (list, bit) in [
            (&ports.bind_tcp, sys::ACCESS_NET_BIND_TCP),
            (&ports.connect_tcp, sys::ACCESS_NET_CONNECT_TCP),
        ] {
            for port in list {
                sys::add_net_rule(ruleset.as_fd(), *port, bit)
                    .map_err(|e| kernel(&format!("landlock_add_rule tcp port {port}"), e))?;
            }
        }
    }
    Ok(ruleset)
}

/// Opens `path` with `O_PATH` without following any symlink in any component
/// (`openat2` with `RESOLVE_NO_SYMLINKS`): a rule must not follow a link the image planted to
/// somewhere else. Returns the descriptor and whether it is a directory.
fn open_path(path: &str) -> io::Result<(OwnedFd, bool)> {
    let fd = sys::open_no_symlinks(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            io::Error::new(
                e.kind(),
                "the path is a symlink or passes through one (rule paths are opened without following links)",
            )
        } else {
            e
        }
    })?;
    let f = std::fs::File::from(fd);
    let dir = f.metadata()?.is_dir();
    Ok((f.into(), dir))
}

impl Prepared {
    /// Enforces every ruleset on the calling thread. `no_new_privs` must be set first.
    pub fn enforce(self) -> Result<(), Error> {
        for (policy, fd, flags) in self.rulesets {
            sys::restrict_self(fd.as_fd(), flags).map_err(|source| Error::Kernel {
                policy,
                what: "landlock_restrict_self".into(),
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::NetPorts;

    fn layer(mode: PolicyMode, min_abi: Option<u32>) -> LandlockLayer {
        LandlockLayer {
            policy: "ns/p".into(),
            mode,
            min_abi,
            filesystem: Vec::new(),
            network: Some(NetPorts::default()),
            scopes: vec![Scope::Signal],
        }
    }

    #[test]
    fn negotiation_by_abi() {
        let l = layer(PolicyMode::EnforceAndLog, None);
        assert_eq!(
            plan(&l, 7),
            Plan::Apply {
                fs: 0xffff,
                net: 3,
                scoped: 2,
                flags: 2
            }
        );
        assert_eq!(
            plan(&l, 3),
            Plan::Apply {
                fs: 0x7fff,
                net: 0,
                scoped: 0,
                flags: 0
            }
        );
        assert_eq!(
            plan(&l, 1),
            Plan::Apply {
                fs: 0x1fff,
                net: 0,
                scoped: 0,
                flags: 0
            }
        );
        assert!(matches!(plan(&l, 0), Plan::Skip(_)));
        assert_eq!(
            plan(&layer(PolicyMode::Enforce, Some(8)), 7),
            Plan::Refuse { required: 8 }
        );
        assert_eq!(
            plan(&layer(PolicyMode::Enforce, Some(7)), 7),
            Plan::Apply {
                fs: 0xffff,
                net: 3,
                scoped: 2,
                flags: 0
            }
        );
        assert!(matches!(
            plan(&layer(PolicyMode::Audit, Some(8)), 7),
            Plan::Skip(_)
        ));
    }
}
