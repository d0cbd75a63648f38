//! The network configuration on stdin, parsed with errors that name the field.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::{CniError, SpecVersion, code};
use crate::state::DEFAULT_STATE_FILE;
use ipnet::Ipv4Net;

/// Default IPAM store directory (one sub-directory per network name).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/kitfleet-wg";

/// One `runtimeConfig.portMappings` entry (accepted for chaining; `portmap` applies them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// Host port.
    pub host_port: u16,
    /// Container port.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Host IP to bind, if any.
    pub host_ip: Option<String>,
}

/// A `{containerID, ifname}` pair from GC's valid-attachments list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attachment {
    /// Container ID.
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

/// The `kitfleet-wg` network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion`.
    pub cni_version: SpecVersion,
    /// `name` (also the IPAM store sub-directory).
    pub name: String,
    /// `stateFile`: the node state file written by the node agent.
    pub state_file: PathBuf,
    /// `dataDir`: the IPAM store root.
    pub data_dir: PathBuf,
    /// `logFile`: where to log (stderr when absent).
    pub log_file: Option<PathBuf>,
    /// `masquerade`: masquerade egress leaving the cluster CIDRs (default true).
    pub masquerade: bool,
    /// `podCIDR`: overrides the state file's podCIDRs.
    pub pod_cidr: Option<Ipv4Net>,
    /// `runtimeConfig.portMappings`.
    pub port_mappings: Vec<PortMapping>,
    /// `prevResult`, as received.
    pub prev_result: Option<Value>,
    /// GC: `cni.dev/valid-attachments` (or the older `cni.dev/attachments`).
    pub valid_attachments: Option<Vec<Attachment>>,
}

fn invalid(field: &str, why: impl std::fmt::Display) -> CniError {
    CniError::new(code::INVALID_CONFIG, format!("{field}: {why}"))
}

/// Reads only `cniVersion` (for VERSION, and to answer errors in the right version).
pub fn peek_version(stdin: &[u8]) -> Option<SpecVersion> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    SpecVersion::parse(v.get("cniVersion")?.as_str()?)
}

/// Parses and validates the configuration.
pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
    let root: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(code::DECODE, "network configuration is not valid JSON").details(e)
    })?;
    let obj = root
        .as_object()
        .ok_or_else(|| invalid("(root)", "must be a JSON object"))?;
    let version = match obj.get("cniVersion") {
        None => return Err(invalid("cniVersion", "is missing")),
        Some(Value::String(s)) => SpecVersion::parse(s).ok_or_else(|| {
            let all: Vec<_> = SpecVersion::ALL.iter().map(|v| v.as_str()).collect();
            CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion: {s:?} is not supported (supported: {})",
                    all.join(", ")
                ),
            )
        })?,
        Some(_) => return Err(invalid("cniVersion", "must be a string")),
    };
    let name = string(obj, "name")?.ok_or_else(|| invalid("name", "is missing"))?;
    validate_name(&name).map_err(|w| invalid("name", w))?;
    string(obj, "type")?.ok_or_else(|| invalid("type", "is missing"))?;
    let state_file = path(obj, "stateFile")?.unwrap_or_else(|| DEFAULT_STATE_FILE.into());
    let data_dir = path(obj, "dataDir")?.unwrap_or_else(|| DEFAULT_DATA_DIR.into());
    let log_file = path(obj, "logFile")?;
    let masquerade = match obj.get("masquerade") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("masquerade", "must be true or false")),
    };
    let pod_cidr = match string(obj, "podCIDR")? {
        None => None,
        Some(s) => Some(crate::cidr::parse(&s).map_err(|e| invalid("podCIDR", e))?),
    };
    let port_mappings = port_mappings(obj.get("runtimeConfig"))?;
    let prev_result = match obj.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return Err(invalid("prevResult", "must be an object")),
    };
    let valid_attachments = attachments(obj)?;
    Ok(NetConf {
        cni_version: version,
        name,
        state_file,
        data_dir,
        log_file,
        masquerade,
        pod_cidr,
        port_mappings,
        prev_result,
        valid_attachments,
    })
}

fn string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(key, "must be a string")),
    }
}

fn path(obj: &Map<String, Value>, key: &str) -> Result<Option<PathBuf>, CniError> {
    match string(obj, key)? {
        None => Ok(None),
        Some(s) if s.starts_with('/') && !s.split('/').any(|c| c == "..") => Ok(Some(s.into())),
        Some(s) => Err(invalid(
            key,
            format!("{s:?} must be an absolute path without '..'"),
        )),
    }
}

/// Network names become directory names: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 128 bytes.
fn validate_name(name: &str) -> Result<(), String> {
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if name.is_empty() {
        Err("is empty".into())
    } else if !ok_first || !ok_rest || name.len() > 128 {
        Err(format!(
            "{name:?} must match [A-Za-z0-9][A-Za-z0-9_.-]* (at most 128 bytes)"
        ))
    } else {
        Ok(())
    }
}

/// Accepts podman's lowercase (`hostPort`) and containerd's capitalised (`HostPort`) keys.
fn port_mappings(rc: Option<&Value>) -> Result<Vec<PortMapping>, CniError> {
    let Some(rc) = rc.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let rc = rc
        .as_object()
        .ok_or_else(|| invalid("runtimeConfig", "must be an object"))?;
    let list = match rc.get("portMappings") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(invalid("runtimeConfig.portMappings", "must be an array")),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let field = |k: &str| format!("runtimeConfig.portMappings[{i}].{k}");
        let m = m
            .as_object()
            .ok_or_else(|| invalid(&field(""), "must be an object"))?;
        let get = |lower: &str, upper: &str| {
            m.get(lower)
                .or_else(|| m.get(upper))
                .filter(|v| !v.is_null())
        };
        let port = |lower: &str, upper: &str| -> Result<u16, CniError> {
            let v = get(lower, upper).ok_or_else(|| invalid(&field(lower), "is missing"))?;
            v.as_u64()
                .filter(|p| (1..=65535).contains(p))
                .map(|p| p as u16)
                .ok_or_else(|| invalid(&field(lower), format!("{v} is not a port in 1..=65535")))
        };
        let host_port = port("hostPort", "HostPort")?;
        let container_port = port("containerPort", "ContainerPort")?;
        let protocol = match get("protocol", "Protocol") {
            None => "tcp".to_string(),
            Some(Value::String(p))
                if ["tcp", "udp", "sctp"].contains(&p.to_ascii_lowercase().as_str()) =>
            {
                p.to_ascii_lowercase()
            }
            Some(p) => {
                return Err(invalid(
                    &field("protocol"),
                    format!("{p} is not tcp, udp or sctp"),
                ));
            }
        };
        let host_ip = match get("hostIP", "HostIP") {
            None => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(invalid(&field("hostIP"), "must be a string")),
        };
        out.push(PortMapping {
            host_port,
            container_port,
            protocol,
            host_ip,
        });
    }
    Ok(out)
}

fn attachments(obj: &Map<String, Value>) -> Result<Option<Vec<Attachment>>, CniError> {
    let (key, list) = match (
        obj.get("cni.dev/valid-attachments"),
        obj.get("cni.dev/attachments"),
    ) {
        (Some(v), _) => ("cni.dev/valid-attachments", v),
        (None, Some(v)) => ("cni.dev/attachments", v),
        (None, None) => return Ok(None),
    };
    let list = list
        .as_array()
        .ok_or_else(|| invalid(key, "must be an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, a) in list.iter().enumerate() {
        let get = |k: &str| {
            a.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| invalid(&format!("{key}[{i}].{k}"), "must be a non-empty string"))
        };
        out.push(Attachment {
            container_id: get("containerID")?,
            ifname: get("ifname")?,
        });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(extra: Value) -> Value {
        let mut v = json!({"cniVersion": "1.0.0", "name": "kfw", "type": "kitfleet-wg"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    fn parse_v(v: Value) -> Result<NetConf, CniError> {
        parse(v.to_string().as_bytes())
    }

    #[test]
    fn defaults() {
        let c = parse_v(conf(json!({}))).unwrap();
        assert_eq!(c.state_file, PathBuf::from("/run/kitfleet/node.json"));
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(
            c.masquerade
                && c.pod_cidr.is_none()
                && c.log_file.is_none()
                && c.valid_attachments.is_none()
        );
    }

    #[test]
    fn keys_are_read() {
        let c = parse_v(conf(json!({
            "stateFile": "/tmp/s.json", "dataDir": "/tmp/d", "logFile": "/tmp/l", "masquerade": false,
            "podCIDR": "10.9.0.0/24", "prevResult": {"interfaces": []},
            "cni.dev/attachments": [{"containerID": "c1", "ifname": "eth0"}],
        })))
        .unwrap();
        assert_eq!(c.pod_cidr.unwrap().to_string(), "10.9.0.0/24");
        assert!(!c.masquerade && c.prev_result.is_some());
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "c1");
    }

    #[test]
    fn port_mappings_both_spellings() {
        let podman = json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]});
        let containerd = json!({"portMappings": [{"HostPort": 8080, "ContainerPort": 80, "Protocol": "TCP", "HostIP": ""}]});
        let a = parse_v(conf(json!({"runtimeConfig": podman})))
            .unwrap()
            .port_mappings;
        let b = parse_v(conf(json!({"runtimeConfig": containerd})))
            .unwrap()
            .port_mappings;
        assert_eq!(a, b);
        assert_eq!(
            a[0],
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: None
            }
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                json!({"cniVersion": "0.2.0", "name": "n", "type": "t"}),
                code::INCOMPATIBLE_VERSION,
                "cniVersion",
            ),
            (
                json!({"name": "n", "type": "t"}),
                code::INVALID_CONFIG,
                "cniVersion: is missing",
            ),
            (
                json!({"cniVersion": 1, "name": "n", "type": "t"}),
                code::INVALID_CONFIG,
                "cniVersion",
            ),
            (
                json!({"cniVersion": "1.0.0", "type": "t"}),
                code::INVALID_CONFIG,
                "name: is missing",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "../x", "type": "t"}),
                code::INVALID_CONFIG,
                "name:",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n"}),
                code::INVALID_CONFIG,
                "type: is missing",
            ),
            (
                conf(json!({"dataDir": "rel/dir"})),
                code::INVALID_CONFIG,
                "dataDir:",
            ),
            (
                conf(json!({"stateFile": "/a/../b"})),
                code::INVALID_CONFIG,
                "stateFile:",
            ),
            (
                conf(json!({"logFile": 3})),
                code::INVALID_CONFIG,
                "logFile: must be a string",
            ),
            (
                conf(json!({"masquerade": "yes"})),
                code::INVALID_CONFIG,
                "masquerade:",
            ),
            (
                conf(json!({"podCIDR": "10.0.0.1/24"})),
                code::INVALID_CONFIG,
                "podCIDR:",
            ),
            (
                conf(json!({"prevResult": []})),
                code::INVALID_CONFIG,
                "prevResult:",
            ),
            (
                conf(json!({"runtimeConfig": {"portMappings": {}}})),
                code::INVALID_CONFIG,
                "runtimeConfig.portMappings:",
            ),
            (
                conf(
                    json!({"runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}}),
                ),
                code::INVALID_CONFIG,
                "runtimeConfig.portMappings[0].hostPort",
            ),
            (
                conf(
                    json!({"runtimeConfig": {"portMappings": [{"HostPort": 1, "ContainerPort": 80, "Protocol": "icmp"}]}}),
                ),
                code::INVALID_CONFIG,
                "runtimeConfig.portMappings[0].protocol",
            ),
            (
                conf(json!({"cni.dev/valid-attachments": [{"containerID": "a"}]})),
                code::INVALID_CONFIG,
                "cni.dev/valid-attachments[0].ifname",
            ),
        ];
        for (v, code, msg) in cases {
            let e = parse_v(v.clone()).unwrap_err();
            assert_eq!(e.code, code, "{v}");
            assert!(e.msg.contains(msg), "{v}: {}", e.msg);
        }
        assert_eq!(parse(b"{not json").unwrap_err().code, code::DECODE);
    }
}
