//! The `CNI_*` environment of one invocation.

use super::{CniError, code};

/// The CNI verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach.
    Add,
    /// Detach.
    Del,
    /// Verify an attachment.
    Check,
    /// Is the plugin ready for ADD?
    Status,
    /// Garbage-collect attachments not listed as valid.
    Gc,
    /// Which versions are supported.
    Version,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            "VERSION" => Self::Version,
            _ => return None,
        })
    }
}

/// Recognised `CNI_ARGS` (what kubelet/containerd and podman send).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `IgnoreUnknown=1|true`: unknown keys are ignored instead of rejected.
    pub ignore_unknown: bool,
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub pod_name: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub infra_container_id: Option<String>,
    /// `K8S_POD_UID`.
    pub pod_uid: Option<String>,
}

/// Parses `CNI_ARGS` (`KEY=VALUE;KEY=VALUE`). Unknown keys are an error unless `IgnoreUnknown`
/// is true, like the reference plugins.
pub fn parse_args(raw: &str) -> Result<CniArgs, CniError> {
    let bad = |m: String| CniError::new(code::INVALID_ENV, format!("CNI_ARGS: {m}"));
    let mut args = CniArgs::default();
    let mut unknown = Vec::new();
    for (i, pair) in raw.split(';').filter(|p| !p.is_empty()).enumerate() {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("pair {i} {pair:?} is not KEY=VALUE")))?;
        match k {
            "IgnoreUnknown" => {
                args.ignore_unknown = match v.to_ascii_lowercase().as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => {
                        return Err(bad(format!(
                            "IgnoreUnknown: {v:?} is not a boolean (1, 0, true, false)"
                        )));
                    }
                }
            }
            "K8S_POD_NAMESPACE" => args.pod_namespace = Some(v.into()),
            "K8S_POD_NAME" => args.pod_name = Some(v.into()),
            "K8S_POD_INFRA_CONTAINER_ID" => args.infra_container_id = Some(v.into()),
            "K8S_POD_UID" => args.pod_uid = Some(v.into()),
            _ => unknown.push(k.to_string()),
        }
    }
    if !unknown.is_empty() && !args.ignore_unknown {
        return Err(bad(format!(
            "unknown key(s) {} (set IgnoreUnknown=1 to ignore them)",
            unknown.join(", ")
        )));
    }
    Ok(args)
}

/// The environment of one invocation, validated for its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for STATUS/GC/VERSION).
    pub container_id: String,
    /// `CNI_NETNS` (may be empty for DEL).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    pub args: CniArgs,
}

/// Reads and validates the environment through `get` (usually `std::env::var`).
pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
    let bad = |var: &str, why: String| CniError::new(code::INVALID_ENV, format!("{var}: {why}"));
    let cmd = get("CNI_COMMAND").unwrap_or_default();
    let command = Command::parse(&cmd).ok_or_else(|| {
        bad(
            "CNI_COMMAND",
            format!("{cmd:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
        )
    })?;
    let per_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
    let container_id = get("CNI_CONTAINERID").unwrap_or_default();
    let netns = get("CNI_NETNS").unwrap_or_default();
    let ifname = get("CNI_IFNAME").unwrap_or_default();
    if per_attachment {
        validate_container_id(&container_id).map_err(|w| bad("CNI_CONTAINERID", w))?;
        validate_ifname(&ifname).map_err(|w| bad("CNI_IFNAME", w))?;
        if command != Command::Del && netns.is_empty() {
            return Err(bad("CNI_NETNS", "is required for ADD and CHECK".into()));
        }
    }
    let args = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
    Ok(Env {
        command,
        container_id,
        netns,
        ifname,
        args,
    })
}

/// Container IDs: non-empty, `[A-Za-z0-9][A-Za-z0-9_.-]*` (the spec's rule).
pub fn validate_container_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    match chars.next() {
        None => Err("is empty".into()),
        Some(c) if !c.is_ascii_alphanumeric() => {
            Err(format!("{id:?} must start with a letter or digit"))
        }
        _ if chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) => Ok(()),
        _ => Err(format!(
            "{id:?} may contain only letters, digits, '_', '.' and '-'"
        )),
    }
}

/// Interface names: 1..=15 bytes, no '/', ':' or whitespace, not "." or "..".
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 15 {
        return Err(format!("{name:?} is longer than 15 bytes"));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn env_table() {
        let base = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert_eq!(env(&base).unwrap().command, Command::Add);
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("CNI_COMMAND", "FOO")], "CNI_COMMAND"),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x"),
                ],
                "CNI_CONTAINERID: is empty",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "-a"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x"),
                ],
                "CNI_CONTAINERID",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "a/b"),
                    ("CNI_NETNS", "/x"),
                ],
                "CNI_IFNAME",
            ),
            (
                &[
                    ("CNI_COMMAND", "CHECK"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "0123456789abcdef"),
                    ("CNI_NETNS", "/x"),
                ],
                "longer than 15",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "eth0"),
                ],
                "CNI_NETNS",
            ),
        ];
        for (vars, msg) in cases {
            let e = env(vars).unwrap_err();
            assert_eq!(e.code, code::INVALID_ENV);
            assert!(e.msg.contains(msg), "{vars:?}: {}", e.msg);
        }
        // DEL without a netns (containerd's second DEL), STATUS/GC/VERSION without anything.
        env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        for c in ["STATUS", "GC", "VERSION"] {
            env(&[("CNI_COMMAND", c)]).unwrap();
        }
    }

    #[test]
    fn args_table() {
        let a = parse_args("IgnoreUnknown=1;K8S_POD_NAME=web;FOO=bar").unwrap();
        assert!(a.ignore_unknown);
        assert_eq!(a.pod_name.as_deref(), Some("web"));
        let a = parse_args(
            "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=c;K8S_POD_UID=u",
        )
        .unwrap();
        assert_eq!(a.pod_uid.as_deref(), Some("u"));
        assert_eq!(parse_args("").unwrap(), CniArgs::default());
        for (raw, msg) in [
            ("FOO=bar", "unknown key(s) FOO"),
            ("IgnoreUnknown=0;FOO=bar", "unknown key(s) FOO"),
            ("IgnoreUnknown=maybe", "IgnoreUnknown"),
            ("novalue", "pair 0"),
        ] {
            let e = parse_args(raw).unwrap_err();
            assert!(e.msg.contains(msg), "{raw}: {}", e.msg);
        }
        assert!(parse_args("IgnoreUnknown=TRUE;X=1").unwrap().ignore_unknown);
    }
}
