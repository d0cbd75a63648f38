//! The mutating webhook's pure core: pod + the SecurityPolicies of its namespace + the entrypoints of its images →
//! JSON Patch (RFC 6902). No I/O: the caller looks up the images [`images_to_look_up`] names first.
//!
//! For a pod that at least one policy matches:
//! - `spec.volumes` gets the inline CSI volume [`SANDBOX_VOLUME`] (driver `sandbox.kitfleet.dev`, read-only) whose
//!   attributes pin the policy set: `sandbox.kitfleet.dev/policies` (`name@generation,…`, sorted by name) and
//!   `sandbox.kitfleet.dev/set-hash` ([`set_hash`], the same function as the node agent's `csi::attrs::set_hash`);
//! - every container (not init, not ephemeral: see the module docs of `webhook`) mounts it read-only at
//!   `/.kitfleet` and runs `/.kitfleet/kitfleet-sandbox exec --policy /.kitfleet/policy.json -- <argv>`, `<argv>`
//!   being the container's `command` + `args`, else the image's `Entrypoint` + (`args`, else the image's `Cmd`) —
//!   Kubernetes' own rule; `args` is removed;
//! - `spec.securityContext.seccompProfile` becomes `Localhost` `kitfleet/<set hash>.json` (the profile the node agent
//!   writes before the volume is published), and so does any container's (init ones included) own seccomp profile.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use kitfleet_api::SecurityPolicy;
use kitfleet_api::constants::{
    CSI_ATTR_POLICIES, CSI_ATTR_SET_HASH, CSI_DRIVER, POLICY_SET_HASH_SCHEME, SANDBOX_MOUNT,
    SANDBOX_VOLUME, seccomp_localhost_profile,
};
use kube::core::{Selector, SelectorExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The launcher inside the volume.
pub const LAUNCHER: &str = "/.kitfleet/kitfleet-sandbox";
/// The compiled policy set inside the volume.
pub const POLICY_FILE: &str = "/.kitfleet/policy.json";
/// Namespaces whose pods are never wrapped besides the operator's own (the control plane's add-ons).
pub const EXEMPT_NAMESPACES: &[&str] = &["kube-system"];
/// Label (with value `kitfleet`) of Kitfleet's own pods: never wrapped, wherever they run.
pub const KITFLEET_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "kitfleet");

/// Why a pod cannot be admitted. The message names the field (or the image) it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MutateError {
    /// A field of the pod.
    #[error("{field}: {message}")]
    Field { field: String, message: String },
    /// An image whose run configuration is needed and could not be read.
    #[error("{field}: image {image:?}: {message}")]
    Image {
        field: String,
        image: String,
        message: String,
    },
    /// A matching policy whose selector cannot be evaluated.
    #[error("securitypolicy {policy}: spec.podSelector: {message}")]
    Selector { policy: String, message: String },
}

/// An image's run configuration (from its config blob).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageArgv {
    /// `config.Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `config.Cmd`.
    pub cmd: Vec<String>,
}

/// The result of looking up one image: its argv, or why it could not be read.
pub type ImageLookup = Result<ImageArgv, String>;

/// One policy of a set as admitted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyRef {
    pub name: String,
    pub uid: String,
    pub generation: i64,
}

/// The policies matching one pod, pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySet {
    pub namespace: String,
    /// Sorted by name.
    pub policies: Vec<PolicyRef>,
    /// [`set_hash`].
    pub hash: String,
}

impl PolicySet {
    /// The pinned set of `matched` (policies of `namespace`).
    pub fn of(namespace: &str, matched: &[&SecurityPolicy]) -> PolicySet {
        let mut policies: Vec<PolicyRef> = matched
            .iter()
            .map(|p| PolicyRef {
                name: p.metadata.name.clone().unwrap_or_default(),
                uid: p.metadata.uid.clone().unwrap_or_default(),
                generation: p.metadata.generation.unwrap_or(1),
            })
            .collect();
        policies.sort();
        let hash = set_hash(namespace, &policies);
        PolicySet {
            namespace: namespace.to_string(),
            policies,
            hash,
        }
    }

    /// The value of the `sandbox.kitfleet.dev/policies` attribute.
    pub fn policies_attr(&self) -> String {
        self.policies
            .iter()
            .map(|p| format!("{}@{}", p.name, p.generation))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The policy-set hash: lowercase hex SHA-256 of `kitfleet.dev/policy-set v1\nnamespace <ns>\n` followed by
/// `policy <name> <uid> <generation>\n` per policy sorted by name — exactly the node agent's `csi::attrs::set_hash`
/// (a test pins the same vector on both sides).
pub fn set_hash(namespace: &str, policies: &[PolicyRef]) -> String {
    let mut sorted: Vec<&PolicyRef> = policies.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut text = format!("{POLICY_SET_HASH_SCHEME}\nnamespace {namespace}\n");
    for p in sorted {
        text.push_str(&format!("policy {} {} {}\n", p.name, p.uid, p.generation));
    }
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// What the webhook does with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Never wrapped (the reason says why).
    Exempt(String),
    /// No policy matches.
    Unmatched,
    /// Wrapped: the set and the JSON Patch.
    Mutated { set: PolicySet, patch: Vec<Value> },
}

/// Why a pod is exempt, if it is: its namespace is `kube-system` or the operator's, or it carries Kitfleet's label.
pub fn exemption(pod: &Pod, namespace: &str, operator_namespace: &str) -> Option<String> {
    if EXEMPT_NAMESPACES.contains(&namespace) || namespace == operator_namespace {
        return Some(format!("namespace {namespace} is exempt"));
    }
    let (k, v) = KITFLEET_POD_LABEL;
    if pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(k))
        .is_some_and(|x| x == v)
    {
        return Some(format!("Kitfleet's own pod ({k}={v})"));
    }
    None
}

/// The policies (of `namespace`, not being deleted) whose `podSelector` matches the pod's labels, sorted by name.
pub fn matching<'a>(
    pod: &Pod,
    namespace: &str,
    policies: &'a [SecurityPolicy],
) -> Result<Vec<&'a SecurityPolicy>, MutateError> {
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let mut out = Vec::new();
    for p in policies {
        if p.metadata.namespace.as_deref() != Some(namespace)
            || p.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let selector: Selector = p.spec.pod_selector.clone().try_into().map_err(
            |e: kube::core::ParseExpressionError| MutateError::Selector {
                policy: format!("{namespace}/{}", p.metadata.name.as_deref().unwrap_or("")),
                message: e.to_string(),
            },
        )?;
        if selector.matches(labels) {
            out.push(p);
        }
    }
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(out)
}

/// The images whose run configuration the patch needs: those of containers without `command`, each once.
pub fn images_to_look_up(pod: &Pod) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        if c.command.as_ref().is_none_or(|v| v.is_empty())
            && let Some(image) = c.image.as_ref()
            && !out.contains(image)
        {
            out.push(image.clone());
        }
    }
    out
}

/// The original argv of container `i`: `command` + `args`, else the image's `Entrypoint` + (`args`, else `Cmd`).
fn original_argv(
    i: usize,
    c: &Container,
    images: &BTreeMap<String, ImageLookup>,
) -> Result<Vec<String>, MutateError> {
    let args = c.args.clone().unwrap_or_default();
    if let Some(cmd) = c.command.as_ref().filter(|v| !v.is_empty()) {
        let mut argv = cmd.clone();
        argv.extend(args);
        return Ok(argv);
    }
    let field = format!("spec.containers[{i}].command");
    let image = c.image.clone().ok_or_else(|| MutateError::Field {
        field: format!("spec.containers[{i}].image"),
        message: "required".into(),
    })?;
    let looked_up = match images.get(&image) {
        Some(Ok(a)) => a,
        Some(Err(message)) => {
            return Err(MutateError::Image {
                field,
                image,
                message: format!(
                    "its entrypoint cannot be read ({message}); set command in the pod spec"
                ),
            });
        }
        None => {
            return Err(MutateError::Image {
                field,
                image,
                message: "not looked up (image lookups are disabled): set command in the pod spec"
                    .into(),
            });
        }
    };
    let mut argv = looked_up.entrypoint.clone();
    if c.args.is_some() {
        argv.extend(args);
    } else {
        argv.extend(looked_up.cmd.iter().cloned());
    }
    if argv.is_empty() {
        return Err(MutateError::Image {
            field,
            image,
            message: "has neither Entrypoint nor Cmd and the container no command".into(),
        });
    }
    Ok(argv)
}

/// The JSON Patch that wraps `pod` in `set`.
pub fn patch(
    pod: &Pod,
    set: &PolicySet,
    images: &BTreeMap<String, ImageLookup>,
) -> Result<Vec<Value>, MutateError> {
    let spec = pod.spec.as_ref().ok_or_else(|| MutateError::Field {
        field: "spec".into(),
        message: "required".into(),
    })?;
    let mut ops: Vec<Value> = Vec::new();
    // The volume.
    if let Some(i) = spec
        .volumes
        .iter()
        .flatten()
        .position(|v| v.name == SANDBOX_VOLUME)
    {
        return Err(MutateError::Field {
            field: format!("spec.volumes[{i}].name"),
            message: format!(
                "{SANDBOX_VOLUME:?} is reserved for the sandbox volume (was the pod copied from a wrapped one?)"
            ),
        });
    }
    let volume = json!({
        "name": SANDBOX_VOLUME,
        "csi": {
            "driver": CSI_DRIVER,
            "readOnly": true,
            "volumeAttributes": {
                CSI_ATTR_POLICIES: set.policies_attr(),
                CSI_ATTR_SET_HASH: set.hash,
            },
        },
    });
    ops.push(append("/spec/volumes", spec.volumes.is_some(), volume));
    // The containers.
    let profile =
        json!({"type": "Localhost", "localhostProfile": seccomp_localhost_profile(&set.hash)});
    for (i, c) in spec.containers.iter().enumerate() {
        let argv = original_argv(i, c, images)?;
        if let Some(j) = c
            .volume_mounts
            .iter()
            .flatten()
            .position(|m| m.mount_path.trim_end_matches('/') == SANDBOX_MOUNT)
        {
            return Err(MutateError::Field {
                field: format!("spec.containers[{i}].volumeMounts[{j}].mountPath"),
                message: format!("{SANDBOX_MOUNT} is reserved for the sandbox volume"),
            });
        }
        let base = format!("/spec/containers/{i}");
        ops.push(append(
            &format!("{base}/volumeMounts"),
            c.volume_mounts.is_some(),
            json!({"name": SANDBOX_VOLUME, "mountPath": SANDBOX_MOUNT, "readOnly": true}),
        ));
        let mut command: Vec<String> = vec![
            LAUNCHER.into(),
            "exec".into(),
            "--policy".into(),
            POLICY_FILE.into(),
            "--".into(),
        ];
        command.extend(argv);
        ops.push(json!({"op": "add", "path": format!("{base}/command"), "value": command}));
        if c.args.is_some() {
            ops.push(json!({"op": "remove", "path": format!("{base}/args")}));
        }
        if has_own_profile(c) {
            ops.push(json!({"op": "add", "path": format!("{base}/securityContext/seccompProfile"), "value": profile}));
        }
    }
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        if has_own_profile(c) {
            ops.push(json!({"op": "add", "path": format!("/spec/initContainers/{i}/securityContext/seccompProfile"), "value": profile}));
        }
    }
    // The pod's profile.
    if spec.security_context.is_some() {
        ops.push(
            json!({"op": "add", "path": "/spec/securityContext/seccompProfile", "value": profile}),
        );
    } else {
        ops.push(json!({"op": "add", "path": "/spec/securityContext", "value": {"seccompProfile": profile}}));
    }
    Ok(ops)
}

fn has_own_profile(c: &Container) -> bool {
    c.security_context
        .as_ref()
        .is_some_and(|s| s.seccomp_profile.is_some())
}

/// `add` to the end of the array at `path`, or of a new one-element array when it is absent.
fn append(path: &str, exists: bool, value: Value) -> Value {
    if exists {
        json!({"op": "add", "path": format!("{path}/-"), "value": value})
    } else {
        json!({"op": "add", "path": path, "value": [value]})
    }
}

/// The whole decision for one pod in `namespace`: exempt, unmatched, or the set and the patch.
pub fn mutate(
    pod: &Pod,
    namespace: &str,
    operator_namespace: &str,
    policies: &[SecurityPolicy],
    images: &BTreeMap<String, ImageLookup>,
) -> Result<Outcome, MutateError> {
    if let Some(why) = exemption(pod, namespace, operator_namespace) {
        return Ok(Outcome::Exempt(why));
    }
    let matched = matching(pod, namespace, policies)?;
    if matched.is_empty() {
        return Ok(Outcome::Unmatched);
    }
    let set = PolicySet::of(namespace, &matched);
    let patch = patch(pod, &set, images)?;
    Ok(Outcome::Mutated { set, patch })
}
