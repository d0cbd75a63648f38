//! Where publish finds the current SecurityPolicies and the pod's labels: a trait with an in-memory / directory
//! implementation (tests, static nodes) and the apiserver one ([`KubePolicySource`]). [`current_set`] and
//! [`check_set`] are pure.

use crate::csi::attrs::{self, PolicyRef, Requested, VolumeAttrs};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kitfleet_api::SecurityPolicy;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A lookup failure (not "absent": that is `Ok(None)`).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The apiserver answered with an error or could not be reached.
    #[error("apiserver: {0}")]
    Kube(#[from] kube::Error),
    /// A manifest file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// What publish needs from the cluster.
pub trait PolicySource: Send + Sync + 'static {
    /// Every SecurityPolicy in `namespace`.
    fn policies(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<SecurityPolicy>, SourceError>> + Send;
    /// The pod's labels and uid; `None` if there is no such pod.
    fn pod(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<PodFacts>, SourceError>> + Send;
}

/// What publish needs to know about the pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodFacts {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
}

/// Whether a label selector matches a label set (Kubernetes semantics: every `matchLabels` pair and every
/// `matchExpressions` requirement must hold; an empty selector matches everything). An unknown operator
/// matches nothing (fail closed: the policy then does not match, and the set comparison reports it).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let got = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => got.is_some_and(|v| values.contains(v)),
            "NotIn" => got.is_none_or(|v| !values.contains(v)),
            "Exists" => got.is_some(),
            "DoesNotExist" => got.is_none(),
            _ => false,
        }
    });
    pairs && exprs
}

/// The policies of `all` that select a pod with `labels`, sorted by name (the layer order).
pub fn current_set(
    all: &[SecurityPolicy],
    labels: &BTreeMap<String, String>,
) -> Vec<SecurityPolicy> {
    let mut out: Vec<SecurityPolicy> = all
        .iter()
        .filter(|p| selector_matches(&p.spec.pod_selector, labels))
        .cloned()
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

/// The identity of a policy object.
pub fn policy_ref(p: &SecurityPolicy) -> PolicyRef {
    PolicyRef {
        name: p.metadata.name.clone().unwrap_or_default(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
        generation: p.metadata.generation.unwrap_or(0),
    }
}

/// Compares the set pinned at admission with the current one. `Err` lists every change, one per item,
/// e.g. `policy shop/web generation 3 → 4`, `policy shop/extra now matches the pod`.
pub fn check_set(attrs: &VolumeAttrs, current: &[SecurityPolicy]) -> Result<(), Vec<String>> {
    let ns = &attrs.pod.namespace;
    let refs: Vec<PolicyRef> = current.iter().map(policy_ref).collect();
    let cur: BTreeMap<&str, &PolicyRef> = refs.iter().map(|r| (r.name.as_str(), r)).collect();
    let req: BTreeMap<&str, &Requested> = attrs
        .policies
        .iter()
        .map(|r| (r.name.as_str(), r))
        .collect();
    let mut changes = Vec::new();
    for (name, r) in &req {
        match cur.get(name) {
            None => changes.push(format!(
                "policy {ns}/{name} (generation {}) no longer applies to the pod (deleted or its podSelector changed)",
                r.generation
            )),
            Some(c) if c.generation != r.generation => changes.push(format!(
                "policy {ns}/{name} generation {} → {}",
                r.generation, c.generation
            )),
            Some(_) => {}
        }
    }
    for (name, c) in &cur {
        if !req.contains_key(name) {
            changes.push(format!(
                "policy {ns}/{name} (generation {}) now matches the pod",
                c.generation
            ));
        }
    }
    if changes.is_empty() {
        let h = attrs::set_hash(ns, &refs);
        if h != attrs.set_hash {
            changes.push(format!(
                "set hash {} ≠ current {h} (a policy was deleted and created again with the same name and generation)",
                attrs.set_hash
            ));
        }
    }
    if changes.is_empty() {
        Ok(())
    } else {
        Err(changes)
    }
}

/// In-memory source (tests, the bench): policies and pods set by the caller.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    inner: Arc<Mutex<MemoryState>>,
}

#[derive(Debug, Default)]
struct MemoryState {
    policies: Vec<SecurityPolicy>,
    pods: BTreeMap<(String, String), PodFacts>,
}

impl MemorySource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds or replaces a policy (by namespace and name).
    pub fn put_policy(&self, p: SecurityPolicy) {
        let mut s = self.inner.lock().expect("lock");
        s.policies.retain(|q| {
            (&q.metadata.namespace, &q.metadata.name) != (&p.metadata.namespace, &p.metadata.name)
        });
        s.policies.push(p);
    }
    /// Removes a policy.
    pub fn delete_policy(&self, namespace: &str, name: &str) {
        let mut s = self.inner.lock().expect("lock");
        s.policies.retain(|q| {
            (q.metadata.namespace.as_deref(), q.metadata.name.as_deref())
                != (Some(namespace), Some(name))
        });
    }
    /// Adds or replaces a pod.
    pub fn put_pod(&self, namespace: &str, name: &str, facts: PodFacts) {
        let mut s = self.inner.lock().expect("lock");
        s.pods.insert((namespace.into(), name.into()), facts);
    }
}

impl PolicySource for MemorySource {
    async fn policies(&self, namespace: &str) -> Result<Vec<SecurityPolicy>, SourceError> {
        let s = self.inner.lock().expect("lock");
        Ok(s.policies
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .cloned()
            .collect())
    }
    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodFacts>, SourceError> {
        let s = self.inner.lock().expect("lock");
        Ok(s.pods.get(&(namespace.into(), name.into())).cloned())
    }
}

/// A directory of manifests (`*.yaml`, `*.yml`, `*.json`; several documents per file), re-read on every call:
/// `kitfleet.dev/v1alpha1` SecurityPolicies and `v1` Pods. Other kinds are ignored; a file that does not parse is
/// an error (publish fails closed).
#[derive(Debug, Clone)]
pub struct DirSource {
    dir: PathBuf,
}

impl DirSource {
    /// Reads `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn read(&self) -> Result<(Vec<SecurityPolicy>, Vec<Pod>), SourceError> {
        let file_err = |path: &std::path::Path, e: &dyn std::fmt::Display| SourceError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut policies = Vec::new();
        let mut pods = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| file_err(&self.dir, &e))?;
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'));
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if hidden || !matches!(ext, "yaml" | "yml" | "json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| file_err(&path, &e))?;
            let docs: Vec<serde_json::Value> =
                serde_saphyr::from_multiple(&text).map_err(|e| file_err(&path, &e))?;
            for (i, doc) in docs.into_iter().enumerate() {
                let kind = (
                    doc.get("apiVersion").and_then(|v| v.as_str()).unwrap_or(""),
                    doc.get("kind").and_then(|v| v.as_str()).unwrap_or(""),
                );
                match kind {
                    ("kitfleet.dev/v1alpha1", "SecurityPolicy") => policies.push(
                        serde_json::from_value(doc)
                            .map_err(|e| file_err(&path, &format!("document {i}: {e}")))?,
                    ),
                    ("v1", "Pod") => pods.push(
                        serde_json::from_value(doc)
                            .map_err(|e| file_err(&path, &format!("document {i}: {e}")))?,
                    ),
                    _ => {}
                }
            }
        }
        Ok((policies, pods))
    }
}

impl PolicySource for DirSource {
    async fn policies(&self, namespace: &str) -> Result<Vec<SecurityPolicy>, SourceError> {
        let (p, _) = self.read()?;
        Ok(p.into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .collect())
    }
    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodFacts>, SourceError> {
        let (_, pods) = self.read()?;
        Ok(pods
            .into_iter()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && p.metadata.name.as_deref() == Some(name)
            })
            .map(|p| pod_facts(&p)))
    }
}

fn pod_facts(p: &Pod) -> PodFacts {
    PodFacts {
        uid: p.metadata.uid.clone().unwrap_or_default(),
        labels: p.metadata.labels.clone().unwrap_or_default(),
    }
}

/// The apiserver: `list securitypolicies` in the pod's namespace and `get pods` (RBAC: `get`,`list` on
/// `securitypolicies.kitfleet.dev`; `get` on `pods`). Every publish asks afresh: a cache could miss a change that
/// the apiserver already acknowledged, and a publish must fail closed on any change.
#[derive(Clone)]
pub struct KubePolicySource {
    client: kube::Client,
}

impl std::fmt::Debug for KubePolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubePolicySource")
    }
}

impl KubePolicySource {
    /// Uses `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl PolicySource for KubePolicySource {
    async fn policies(&self, namespace: &str) -> Result<Vec<SecurityPolicy>, SourceError> {
        let api: kube::Api<SecurityPolicy> = kube::Api::namespaced(self.client.clone(), namespace);
        Ok(api.list(&Default::default()).await?.items)
    }
    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodFacts>, SourceError> {
        let api: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), namespace);
        Ok(api.get_opt(name).await?.map(|p| pod_facts(&p)))
    }
}

#[cfg(test)]
mod tests;
