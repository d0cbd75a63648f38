//! What the mesh reads from a Kubernetes `Node` (pure): name, podCIDRs, InternalIP and the two
//! WireGuard annotations. Bad fields are reported with their path, never panicked on.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kitfleet_dataplane::PublicKey;

/// Node annotation holding the node's WireGuard public key (base64).
pub const ANNOTATION_PUBLIC_KEY: &str = kitfleet_api::constants::ANNOTATION_WG_PUBLIC_KEY;
/// Node annotation holding the node's WireGuard endpoint (`IP:port`).
pub const ANNOTATION_ENDPOINT: &str = kitfleet_api::constants::ANNOTATION_WG_ENDPOINT;
/// Default WireGuard UDP port.
pub const DEFAULT_PORT: u16 = kitfleet_api::constants::WG_DEFAULT_PORT;

/// The mesh-relevant view of one Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub pod_cidrs: Vec<IpNet>,
    pub internal_ip: Option<IpAddr>,
    pub public_key: Option<PublicKey>,
    pub endpoint: Option<SocketAddr>,
    /// Fields that could not be used, as `path: reason`.
    pub problems: Vec<String>,
}

impl NodeInfo {
    /// Extracts the mesh view from a Node. Invalid fields are left out and listed in `problems`.
    pub fn from_node(node: &Node) -> Self {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut problems = Vec::new();
        let spec = node.spec.as_ref();
        let mut raw: Vec<(String, &String)> = spec
            .and_then(|s| s.pod_cidrs.as_ref())
            .map(|v| {
                v.iter()
                    .enumerate()
                    .map(|(i, c)| (format!("spec.podCIDRs[{i}]"), c))
                    .collect()
            })
            .unwrap_or_default();
        if raw.is_empty()
            && let Some(c) = spec.and_then(|s| s.pod_cidr.as_ref())
        {
            raw.push(("spec.podCIDR".into(), c));
        }
        let mut pod_cidrs = Vec::new();
        for (path, c) in raw {
            match super::prefix::parse(c) {
                Ok(c) => pod_cidrs.push(c),
                Err(e) => problems.push(format!("{path}: {e}")),
            }
        }
        let internal_ip = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().enumerate().find(|(_, a)| a.type_ == "InternalIP"))
            .and_then(|(i, a)| match a.address.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    problems.push(format!(
                        "status.addresses[{i}].address: {:?} is not an IP address",
                        a.address
                    ));
                    None
                }
            });
        let ann = node.metadata.annotations.as_ref();
        let get = |k: &str| ann.and_then(|a| a.get(k));
        let public_key = get(ANNOTATION_PUBLIC_KEY).and_then(|v| match v.parse::<PublicKey>() {
            Ok(k) => Some(k),
            Err(e) => {
                problems.push(format!(
                    "metadata.annotations[{ANNOTATION_PUBLIC_KEY:?}]: {e}"
                ));
                None
            }
        });
        let endpoint = get(ANNOTATION_ENDPOINT).and_then(|v| match v.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(format!(
                    "metadata.annotations[{ANNOTATION_ENDPOINT:?}]: {v:?} is not IP:port"
                ));
                None
            }
        });
        NodeInfo {
            name,
            pod_cidrs,
            internal_ip,
            public_key,
            endpoint,
            problems,
        }
    }

    /// The endpoint peers should use: the annotation, else `InternalIP:51820`.
    pub fn effective_endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
            .or_else(|| self.internal_ip.map(|ip| SocketAddr::new(ip, DEFAULT_PORT)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn reads_cidrs_address_and_annotations() {
        let key = PublicKey([7; 32]);
        let n = node(serde_json::json!({
            "metadata": {"name": "n1", "annotations": {ANNOTATION_PUBLIC_KEY: key.to_string(), ANNOTATION_ENDPOINT: "192.0.2.1:4000"}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"]},
            "status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "192.0.2.1"}]}
        }));
        let i = NodeInfo::from_node(&n);
        assert_eq!(i.name, "n1");
        assert_eq!(i.pod_cidrs.len(), 2);
        assert_eq!(i.internal_ip, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(i.public_key, Some(key));
        assert_eq!(
            i.effective_endpoint(),
            Some("192.0.2.1:4000".parse().unwrap())
        );
        assert!(i.problems.is_empty());
    }

    #[test]
    fn falls_back_to_pod_cidr_and_internal_ip_port() {
        let n = node(serde_json::json!({
            "metadata": {"name": "n2"},
            "spec": {"podCIDR": "10.244.2.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.2"}]}
        }));
        let i = NodeInfo::from_node(&n);
        assert_eq!(i.pod_cidrs, vec!["10.244.2.0/24".parse().unwrap()]);
        assert_eq!(
            i.effective_endpoint(),
            Some("192.0.2.2:51820".parse().unwrap())
        );
    }

    #[test]
    fn bad_fields_are_reported_with_their_path() {
        let n = node(serde_json::json!({
            "metadata": {"name": "n3", "annotations": {ANNOTATION_PUBLIC_KEY: "nope", ANNOTATION_ENDPOINT: "host"}},
            "spec": {"podCIDRs": ["10.244.3.0/40"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "not-ip"}]}
        }));
        let i = NodeInfo::from_node(&n);
        assert!(
            i.pod_cidrs.is_empty()
                && i.public_key.is_none()
                && i.endpoint.is_none()
                && i.internal_ip.is_none()
        );
        let all = i.problems.join("\n");
        for path in [
            "spec.podCIDRs[0]",
            "wg-public-key",
            "wg-endpoint",
            "status.addresses[0].address",
        ] {
            assert!(all.contains(path), "{path} missing in {all}");
        }
    }
}
