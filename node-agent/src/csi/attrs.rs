//! The sandbox volume's attributes (`volumeAttributes` of the pod's inline CSI volume, plus what the kubelet adds
//! with `podInfoOnMount`), parsed and checked, and the policy-set hash. Pure: no I/O.
//!
//! Schema (written by the operator's mutating webhook, read here; README.md "Volume attributes"):
//!
//! | key | value |
//! |---|---|
//! | `sandbox.kitfleet.dev/policies` | `name@generation` of every SecurityPolicy in the set, comma-separated, sorted by name, all in the pod's namespace |
//! | `sandbox.kitfleet.dev/set-hash` | [`set_hash`] of that set: 64 lowercase hex digits |
//! | `sandbox.kitfleet.dev/mount-path` | optional: where the volume is mounted in the containers (default `/.kitfleet`) |
//! | `csi.storage.k8s.io/ephemeral` | `"true"` (set by the kubelet for inline volumes) |
//! | `csi.storage.k8s.io/pod.name`, `pod.namespace`, `pod.uid` | set by the kubelet (`podInfoOnMount`) |
#![forbid(unsafe_code)]

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Attribute (optional): the mount path in the containers.
pub use kitfleet_api::constants::CSI_ATTR_MOUNT_PATH as ATTR_MOUNT_PATH;
/// Attribute: the policy set, `name@generation,…` sorted by name.
pub use kitfleet_api::constants::CSI_ATTR_POLICIES as ATTR_POLICIES;
/// Attribute: [`set_hash`] of the set.
pub use kitfleet_api::constants::CSI_ATTR_SET_HASH as ATTR_SET_HASH;
/// Set by the kubelet on inline ephemeral volumes.
pub const ATTR_EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";
/// Set by the kubelet with `podInfoOnMount`.
pub const ATTR_POD_NAME: &str = "csi.storage.k8s.io/pod.name";
/// Set by the kubelet with `podInfoOnMount`.
pub const ATTR_POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
/// Set by the kubelet with `podInfoOnMount`.
pub const ATTR_POD_UID: &str = "csi.storage.k8s.io/pod.uid";

/// The first line of the text [`set_hash`] hashes: names the scheme and its version.
pub use kitfleet_api::constants::POLICY_SET_HASH_SCHEME as HASH_SCHEME;

/// One SecurityPolicy as admitted: its identity at admission time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyRef {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid` (only in the hash: a policy deleted and created again has a new uid).
    pub uid: String,
    /// `metadata.generation` (bumped by the apiserver on every spec change).
    pub generation: i64,
}

/// The hash of a policy set: lowercase hex SHA-256 of the UTF-8 text
///
/// ```text
/// kitfleet.dev/policy-set v1\n
/// namespace <namespace>\n
/// policy <name> <uid> <generation>\n      (one line per policy, sorted by name)
/// ```
///
/// The operator's webhook computes the same function on the policies it matched; the node agent on the policies
/// it finds when the volume is published. Equal hashes mean the same objects at the same generations.
pub fn set_hash(namespace: &str, policies: &[PolicyRef]) -> String {
    let mut sorted: Vec<&PolicyRef> = policies.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut text = format!("{HASH_SCHEME}\nnamespace {namespace}\n");
    for p in sorted {
        text.push_str(&format!("policy {} {} {}\n", p.name, p.uid, p.generation));
    }
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The value of [`ATTR_POLICIES`] for a set.
pub fn policies_attr(policies: &[PolicyRef]) -> String {
    let mut sorted: Vec<&PolicyRef> = policies.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted
        .iter()
        .map(|p| format!("{}@{}", p.name, p.generation))
        .collect::<Vec<_>>()
        .join(",")
}

/// The value of [`ATTR_POLICIES`] for a parsed set (as requested).
pub fn policies_attr_of(requested: &[Requested]) -> String {
    requested
        .iter()
        .map(|p| format!("{}@{}", p.name, p.generation))
        .collect::<Vec<_>>()
        .join(",")
}

/// The pod the volume is published for (from `podInfoOnMount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Pod name.
    pub name: String,
    /// Pod namespace (also the policies' namespace).
    pub namespace: String,
    /// Pod uid.
    pub uid: String,
}

/// A policy of the requested set: name and generation at admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.generation` at admission.
    pub generation: i64,
}

/// The checked attributes of one publish request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeAttrs {
    /// The pod.
    pub pod: PodInfo,
    /// The policy set, sorted by name.
    pub policies: Vec<Requested>,
    /// The set's hash.
    pub set_hash: String,
    /// Mount path in the containers.
    pub mount_path: String,
}

/// A bad attribute: the key and what is wrong (becomes `InvalidArgument` naming `volume_context["key"]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("volume_context[{key:?}]: {message}")]
pub struct AttrError {
    /// The attribute key.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn err(key: &str, message: impl Into<String>) -> AttrError {
    AttrError {
        key: key.to_string(),
        message: message.into(),
    }
}

/// A Kubernetes object name (DNS-1123 subdomain): 1–253 of `[a-z0-9.-]`, alphanumeric at both ends.
pub fn is_object_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn required<'a>(ctx: &'a BTreeMap<String, String>, key: &str) -> Result<&'a str, AttrError> {
    match ctx.get(key).map(String::as_str) {
        None => Err(err(key, "missing")),
        Some("") => Err(err(key, "empty")),
        Some(v) => Ok(v),
    }
}

fn parse_policies(value: &str) -> Result<Vec<Requested>, AttrError> {
    let mut out: Vec<Requested> = Vec::new();
    for (i, item) in value.split(',').enumerate() {
        let (name, generation) = item.split_once('@').ok_or_else(|| {
            err(
                ATTR_POLICIES,
                format!("item {i} {item:?}: expected name@generation"),
            )
        })?;
        if !is_object_name(name) {
            return Err(err(
                ATTR_POLICIES,
                format!("item {i}: {name:?} is not an object name"),
            ));
        }
        let generation: i64 = generation.parse().ok().filter(|g| *g >= 1).ok_or_else(|| {
            err(
                ATTR_POLICIES,
                format!("item {i}: generation {generation:?} is not a positive integer"),
            )
        })?;
        if let Some(prev) = out.last()
            && prev.name.as_str() >= name
        {
            return Err(err(
                ATTR_POLICIES,
                format!(
                    "item {i}: {name:?} is not after {:?} (names must be sorted and unique)",
                    prev.name
                ),
            ));
        }
        out.push(Requested {
            name: name.to_string(),
            generation,
        });
    }
    Ok(out)
}

/// Checks the publish request's `volume_context`.
pub fn parse(ctx: &BTreeMap<String, String>) -> Result<VolumeAttrs, AttrError> {
    match ctx.get(ATTR_EPHEMERAL).map(String::as_str) {
        Some("true") => {}
        Some(v) => {
            return Err(err(
                ATTR_EPHEMERAL,
                format!("{v:?}: only inline ephemeral volumes are served (\"true\")"),
            ));
        }
        None => {
            return Err(err(
                ATTR_EPHEMERAL,
                "missing: only inline ephemeral volumes are served",
            ));
        }
    }
    let pod = PodInfo {
        name: required(ctx, ATTR_POD_NAME)?.to_string(),
        namespace: required(ctx, ATTR_POD_NAMESPACE)?.to_string(),
        uid: required(ctx, ATTR_POD_UID)?.to_string(),
    };
    if !is_object_name(&pod.namespace) {
        return Err(err(ATTR_POD_NAMESPACE, "not a namespace name"));
    }
    let policies = parse_policies(required(ctx, ATTR_POLICIES)?)?;
    let set_hash = required(ctx, ATTR_SET_HASH)?.to_string();
    if set_hash.len() != 64
        || !set_hash
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return Err(err(ATTR_SET_HASH, "expected 64 lowercase hex digits"));
    }
    let mount_path = match ctx.get(ATTR_MOUNT_PATH) {
        None => kitfleet_api::constants::SANDBOX_MOUNT.to_string(),
        Some(p) if p.starts_with('/') && !p.contains('\0') && p.len() < 4000 => p.clone(),
        Some(_) => return Err(err(ATTR_MOUNT_PATH, "expected an absolute path")),
    };
    Ok(VolumeAttrs {
        pod,
        policies,
        set_hash,
        mount_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn good() -> BTreeMap<String, String> {
        ctx(&[
            (ATTR_EPHEMERAL, "true"),
            (ATTR_POD_NAME, "web-0"),
            (ATTR_POD_NAMESPACE, "shop"),
            (ATTR_POD_UID, "u-1"),
            (ATTR_POLICIES, "base@2,web@7"),
            (ATTR_SET_HASH, &"a".repeat(64)),
        ])
    }

    #[test]
    fn parses_a_good_context() {
        let a = parse(&good()).unwrap();
        assert_eq!(a.pod.namespace, "shop");
        assert_eq!(a.mount_path, "/.kitfleet");
        assert_eq!(
            a.policies,
            vec![
                Requested {
                    name: "base".into(),
                    generation: 2
                },
                Requested {
                    name: "web".into(),
                    generation: 7
                }
            ]
        );
    }

    #[test]
    fn every_bad_attribute_is_named() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            (ATTR_EPHEMERAL, None, "missing"),
            (ATTR_EPHEMERAL, Some("false"), "only inline"),
            (ATTR_POD_NAME, None, "missing"),
            (ATTR_POD_NAMESPACE, Some(""), "empty"),
            (ATTR_POD_NAMESPACE, Some("Shop"), "namespace"),
            (ATTR_POD_UID, None, "missing"),
            (ATTR_POLICIES, None, "missing"),
            (ATTR_POLICIES, Some("web"), "name@generation"),
            (ATTR_POLICIES, Some("web@0"), "positive"),
            (ATTR_POLICIES, Some("web@x"), "positive"),
            (ATTR_POLICIES, Some("Web@1"), "object name"),
            (ATTR_POLICIES, Some("web@1,base@1"), "sorted"),
            (ATTR_POLICIES, Some("web@1,web@2"), "sorted"),
            (ATTR_POLICIES, Some("web@1,"), "name@generation"),
            (ATTR_SET_HASH, Some("abc"), "hex"),
            (ATTR_SET_HASH, Some(&"A".repeat(64)), "hex"),
            (ATTR_MOUNT_PATH, Some("rel"), "absolute"),
        ];
        for (key, value, want) in cases {
            let mut c = good();
            match value {
                None => c.remove(*key),
                Some(v) => c.insert(key.to_string(), v.to_string()),
            };
            let e = parse(&c).unwrap_err();
            assert_eq!(e.key, *key, "{key}={value:?}");
            assert!(e.message.contains(want), "{key}={value:?}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("volume_context[{key:?}]"))
            );
        }
    }

    #[test]
    fn hash_is_order_independent_and_covers_every_field() {
        let a = PolicyRef {
            name: "a".into(),
            uid: "u1".into(),
            generation: 1,
        };
        let b = PolicyRef {
            name: "b".into(),
            uid: "u2".into(),
            generation: 3,
        };
        let h = set_hash("ns", &[a.clone(), b.clone()]);
        assert_eq!(h, set_hash("ns", &[b.clone(), a.clone()]));
        assert_eq!(h.len(), 64);
        assert_ne!(h, set_hash("other", &[a.clone(), b.clone()]));
        let mut b2 = b.clone();
        b2.generation = 4;
        assert_ne!(h, set_hash("ns", &[a.clone(), b2]));
        let mut b3 = b.clone();
        b3.uid = "u3".into();
        assert_ne!(h, set_hash("ns", &[a.clone(), b3]));
        assert_ne!(h, set_hash("ns", std::slice::from_ref(&a)));
        assert_eq!(policies_attr(&[b, a]), "a@1,b@3");
        // Pinned: the operator's webhook must produce exactly this.
        assert_eq!(
            set_hash(
                "shop",
                &[PolicyRef {
                    name: "web".into(),
                    uid: "0b0c".into(),
                    generation: 2
                }]
            ),
            hex::encode(Sha256::digest(
                b"kitfleet.dev/policy-set v1\nnamespace shop\npolicy web 0b0c 2\n"
            ))
        );
    }
}
