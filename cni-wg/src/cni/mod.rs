//! The CNI protocol: spec versions, error codes, the environment, network configuration and
//! results. Everything here is pure: it turns bytes and variables into values and back.
#![forbid(unsafe_code)]

pub mod config;
pub mod env;
pub mod result;

use std::fmt;

use serde_json::json;

/// A CNI specification version this plugin speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpecVersion {
    /// 0.3.0
    V0_3_0,
    /// 0.3.1
    V0_3_1,
    /// 0.4.0: adds CHECK and prevResult on DEL.
    V0_4_0,
    /// 1.0.0: drops `ips[].version`.
    V1_0_0,
    /// 1.1.0: adds STATUS, GC, route `mtu`/`advmss`.
    V1_1_0,
}

impl SpecVersion {
    /// Every supported version, oldest first.
    pub const ALL: [SpecVersion; 5] = [
        Self::V0_3_0,
        Self::V0_3_1,
        Self::V0_4_0,
        Self::V1_0_0,
        Self::V1_1_0,
    ];
    /// The newest supported version.
    pub const LATEST: SpecVersion = Self::V1_1_0;

    /// Parses `"1.0.0"` and friends.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }
    /// Whether CHECK exists in this version (0.4.0 and later).
    pub fn has_check(self) -> bool {
        self >= Self::V0_4_0
    }
    /// Whether STATUS and GC exist in this version (1.1.0 and later).
    pub fn has_status_gc(self) -> bool {
        self >= Self::V1_1_0
    }
    /// Whether results carry `ips[].version` (before 1.0.0).
    pub fn has_ip_version(self) -> bool {
        self < Self::V1_0_0
    }
    /// Whether routes may carry `mtu`/`advmss` and interfaces `mtu` (1.1.0).
    pub fn has_route_mtu(self) -> bool {
        self >= Self::V1_1_0
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The VERSION answer: `{"cniVersion": …, "supportedVersions": […]}`.
pub fn version_result(requested: Option<SpecVersion>) -> serde_json::Value {
    let all: Vec<&str> = SpecVersion::ALL.iter().map(|v| v.as_str()).collect();
    json!({"cniVersion": requested.unwrap_or(SpecVersion::LATEST).as_str(), "supportedVersions": all})
}

/// Well-known CNI error codes (spec section "Error").
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: plugin not available (no podCIDR / no state file).
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: limited connectivity (mesh down).
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// Plugin-specific: the interface already exists in the container.
    pub const INTERFACE_EXISTS: u32 = 100;
    /// Plugin-specific: the pod CIDR is exhausted.
    pub const NO_ADDRESS: u32 = 101;
    /// Plugin-specific: CHECK found a difference.
    pub const CHECK_FAILED: u32 = 102;
    /// Plugin-specific: a kernel (netlink) operation failed.
    pub const KERNEL: u32 = 103;
    /// Plugin-specific: applying masquerade rules failed.
    pub const MASQUERADE: u32 = 104;
}

/// A CNI error result: printed on stdout, exit status 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// Spec or plugin error code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer details (the underlying cause).
    pub details: String,
}

impl CniError {
    /// An error with a code and message.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }
    /// Adds details.
    pub fn details(mut self, d: impl fmt::Display) -> Self {
        self.details = d.to_string();
        self
    }
    /// The JSON error object for `version`.
    pub fn to_json(&self, version: SpecVersion) -> serde_json::Value {
        let mut v = json!({"cniVersion": version.as_str(), "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = self.details.clone().into();
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_table() {
        let rows = [
            ("0.3.0", false, false, true, false),
            ("0.3.1", false, false, true, false),
            ("0.4.0", true, false, true, false),
            ("1.0.0", true, false, false, false),
            ("1.1.0", true, true, false, true),
        ];
        for (s, check, status, ipver, mtu) in rows {
            let v = SpecVersion::parse(s).unwrap();
            assert_eq!(v.as_str(), s);
            assert_eq!(
                (
                    v.has_check(),
                    v.has_status_gc(),
                    v.has_ip_version(),
                    v.has_route_mtu()
                ),
                (check, status, ipver, mtu),
                "{s}"
            );
        }
        for bad in ["0.1.0", "0.2.0", "1.2.0", "", "1.0"] {
            assert_eq!(SpecVersion::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn version_and_error_json() {
        let v = version_result(Some(SpecVersion::V0_4_0));
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
        let e = CniError::new(code::TRY_AGAIN, "no state").details("file missing");
        let j = e.to_json(SpecVersion::V1_0_0);
        assert_eq!(
            j,
            json!({"cniVersion":"1.0.0","code":11,"msg":"no state","details":"file missing"})
        );
        assert_eq!(e.to_string(), "no state: file missing");
    }
}
