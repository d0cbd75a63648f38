//! Building ADD results in the requested version, merging with a `prevResult`, and reading a
//! `prevResult` back for CHECK. Pure.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::{CniError, SpecVersion, code};
use crate::cidr::parse_ip_prefix;

/// The link-local gateway every pod routes through (Calico-style).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// What ADD attached: the facts a result is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Host-side veth name.
    pub host_if: String,
    /// Host-side MAC.
    pub host_mac: String,
    /// Pod-side interface name (`CNI_IFNAME`).
    pub pod_if: String,
    /// Pod-side MAC.
    pub pod_mac: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// The pod's address (a /32).
    pub ip: Ipv4Addr,
    /// Pod MTU.
    pub mtu: u32,
}

/// TCP advertised MSS for an IPv4 path of `mtu` (IPv4 + TCP headers, 40 bytes).
pub fn advmss(mtu: u32) -> u32 {
    mtu.saturating_sub(40)
}

/// Builds the ADD result: `prev` (if any) with our interfaces, IP and route appended, in the
/// shape of `version`.
pub fn build(a: &Attached, version: SpecVersion, prev: Option<&Value>) -> Value {
    let mut out = prev
        .filter(|p| p.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    let Some(obj) = out.as_object_mut() else {
        unreachable!("an object was just ensured")
    };
    let ifaces = obj.entry("interfaces").or_insert_with(|| json!([]));
    if !ifaces.is_array() {
        *ifaces = json!([]);
    }
    let list = ifaces.as_array_mut().expect("just made an array");
    list.push(json!({"name": a.host_if, "mac": a.host_mac, "mtu": a.mtu}));
    list.push(json!({"name": a.pod_if, "mac": a.pod_mac, "mtu": a.mtu, "sandbox": a.netns}));
    let pod_index = list.len() - 1;
    let ips = array(obj, "ips");
    ips.push(json!({"address": format!("{}/32", a.ip), "gateway": GATEWAY.to_string(), "interface": pod_index}));
    let routes = array(obj, "routes");
    routes.push(json!({"dst": "0.0.0.0/0", "gw": GATEWAY.to_string(), "mtu": a.mtu, "advmss": advmss(a.mtu)}));
    obj.entry("dns").or_insert_with(|| json!({}));
    normalize(&mut out, version);
    out
}

fn array<'a>(obj: &'a mut serde_json::Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let v = obj.entry(key).or_insert_with(|| json!([]));
    if !v.is_array() {
        *v = json!([]);
    }
    v.as_array_mut().expect("just made an array")
}

/// Reshapes a result for `version`: sets `cniVersion`, adds `ips[].version` before 1.0.0 and
/// removes it from 1.0.0, and drops the 1.1-only fields (route `mtu`/`advmss`/`priority`/
/// `table`/`scope`, interface `mtu`/`socketPath`/`pciID`) before 1.1.0.
pub fn normalize(result: &mut Value, version: SpecVersion) {
    result["cniVersion"] = version.as_str().into();
    if let Some(ips) = result.get_mut("ips").and_then(Value::as_array_mut) {
        for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
            if version.has_ip_version() {
                let v6 = ip
                    .get("address")
                    .and_then(Value::as_str)
                    .is_some_and(|a| a.contains(':'));
                ip.entry("version")
                    .or_insert_with(|| if v6 { "6" } else { "4" }.into());
            } else {
                ip.remove("version");
            }
        }
    }
    if !version.has_route_mtu() {
        strip(
            result,
            "routes",
            &["mtu", "advmss", "priority", "table", "scope"],
        );
        strip(result, "interfaces", &["mtu", "socketPath", "pciID"]);
    }
}

fn strip(result: &mut Value, list: &str, keys: &[&str]) {
    if let Some(items) = result.get_mut(list).and_then(Value::as_array_mut) {
        for item in items.iter_mut().filter_map(Value::as_object_mut) {
            for k in keys {
                item.remove(*k);
            }
        }
    }
}

/// What CHECK expects to find, read from `prevResult`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The pod interface's MAC, if the result recorded one.
    pub mac: Option<String>,
    /// The interface's IPv4 addresses with prefix length.
    pub addrs: Vec<(Ipv4Addr, u8)>,
    /// IPv4 routes: destination, prefix, gateway.
    pub routes: Vec<(Ipv4Addr, u8, Option<Ipv4Addr>)>,
}

/// Finds `ifname` (in `netns`) in `prevResult` and what was configured on it.
pub fn expected(prev: &Value, ifname: &str, netns: &str) -> Result<Expected, CniError> {
    let bad = |m: String| CniError::new(code::INVALID_CONFIG, format!("prevResult: {m}"));
    let ifaces = prev
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let index = ifaces
        .iter()
        .position(|i| {
            i.get("name").and_then(Value::as_str) == Some(ifname)
                && i.get("sandbox")
                    .and_then(Value::as_str)
                    .is_some_and(|s| s == netns || !s.is_empty())
        })
        .ok_or_else(|| {
            bad(format!(
                "no interface {ifname:?} with a sandbox in interfaces"
            ))
        })?;
    let mac = ifaces[index]
        .get("mac")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut addrs = Vec::new();
    for (i, ip) in prev
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if ip.get("interface").and_then(Value::as_u64) != Some(index as u64) {
            continue;
        }
        let a = ip
            .get("address")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if a.contains(':') {
            continue;
        }
        addrs.push(
            parse_ip_prefix(a)
                .ok_or_else(|| bad(format!("ips[{i}].address: {a:?} is not ADDRESS/PREFIX")))?,
        );
    }
    if addrs.is_empty() {
        return Err(bad(format!(
            "no IPv4 address for interface {ifname:?} in ips"
        )));
    }
    let mut routes = Vec::new();
    for (i, r) in prev
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let dst = r.get("dst").and_then(Value::as_str).unwrap_or_default();
        if dst.contains(':') {
            continue;
        }
        let (d, p) = parse_ip_prefix(dst)
            .ok_or_else(|| bad(format!("routes[{i}].dst: {dst:?} is not a CIDR")))?;
        let gw = match r.get("gw").and_then(Value::as_str) {
            None => None,
            Some(g) => Some(
                g.parse()
                    .map_err(|_| bad(format!("routes[{i}].gw: {g:?} is not an IPv4 address")))?,
            ),
        };
        routes.push((d, p, gw));
    }
    Ok(Expected { mac, addrs, routes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached() -> Attached {
        Attached {
            host_if: "kfw0123456789ab".into(),
            host_mac: "ee:ee:ee:ee:ee:ee".into(),
            pod_if: "eth0".into(),
            pod_mac: "0a:58:0a:f4:01:02".into(),
            netns: "/run/netns/p".into(),
            ip: Ipv4Addr::new(10, 244, 1, 2),
            mtu: 1420,
        }
    }

    #[test]
    fn result_shape_per_version() {
        for v in SpecVersion::ALL {
            let r = build(&attached(), v, None);
            assert_eq!(r["cniVersion"], v.as_str());
            assert_eq!(r["interfaces"].as_array().unwrap().len(), 2);
            assert_eq!(r["interfaces"][1]["sandbox"], "/run/netns/p");
            assert_eq!(r["ips"][0]["address"], "10.244.1.2/32");
            assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
            assert_eq!(r["ips"][0]["interface"], 1);
            assert_eq!(
                r["ips"][0].get("version").is_some(),
                v.has_ip_version(),
                "{v}"
            );
            assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
            let mtu = r["routes"][0].get("mtu").cloned();
            let mss = r["routes"][0].get("advmss").cloned();
            if v == SpecVersion::V1_1_0 {
                assert_eq!((mtu, mss), (Some(json!(1420)), Some(json!(1380))));
                assert_eq!(r["interfaces"][1]["mtu"], 1420);
            } else {
                assert_eq!((mtu, mss), (None, None), "{v}");
                assert!(r["interfaces"][1].get("mtu").is_none());
            }
        }
    }

    #[test]
    fn merges_prev_result_and_offsets_indexes() {
        let prev = json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "other", "mac": "aa:aa:aa:aa:aa:aa", "sandbox": "/x"}],
            "ips": [{"address": "fd00::2/64", "interface": 0, "version": "6"}],
            "dns": {"nameservers": ["10.0.0.10"]}});
        let r = build(&attached(), SpecVersion::V1_0_0, Some(&prev));
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(r["ips"][1]["interface"], 2);
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(r["dns"]["nameservers"][0], "10.0.0.10");
        let old = build(&attached(), SpecVersion::V0_3_1, Some(&prev));
        assert_eq!(old["ips"][0]["version"], "6");
        assert_eq!(old["ips"][1]["version"], "4");
    }

    #[test]
    fn expected_round_trips_our_result() {
        for v in SpecVersion::ALL {
            let r = build(&attached(), v, None);
            let e = expected(&r, "eth0", "/run/netns/p").unwrap();
            assert_eq!(e.addrs, vec![(Ipv4Addr::new(10, 244, 1, 2), 32)]);
            assert_eq!(e.routes, vec![(Ipv4Addr::UNSPECIFIED, 0, Some(GATEWAY))]);
            assert_eq!(e.mac.as_deref(), Some("0a:58:0a:f4:01:02"));
        }
    }

    #[test]
    fn expected_errors() {
        let r = build(&attached(), SpecVersion::V1_0_0, None);
        let cases = [
            (r.clone(), "net1", "no interface \"net1\""),
            (
                json!({"interfaces": [{"name": "eth0", "sandbox": "/p"}], "ips": []}),
                "eth0",
                "no IPv4 address",
            ),
            (
                json!({"interfaces": [{"name": "eth0", "sandbox": "/p"}], "ips": [{"address": "x", "interface": 0}]}),
                "eth0",
                "ips[0].address",
            ),
        ];
        for (prev, ifname, msg) in cases {
            let e = expected(&prev, ifname, "/run/netns/p").unwrap_err();
            assert!(e.msg.contains(msg), "{}", e.msg);
        }
    }
}
