//! Where Nodes come from: the [`NodeSource`] trait, and [`DirSource`], a directory of Node manifests
//! (YAML or JSON, one Node per file) that stands in for the apiserver in namespace tests.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;

/// Errors of a node source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no Node manifest with metadata.name {node:?} in {dir}")]
    NoManifest { node: String, dir: PathBuf },
    #[error("{path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("apiserver: {0}")]
    Kube(#[from] kube::Error),
    #[error("Node watch: {0}")]
    Watch(String),
}

/// A view of the cluster's Nodes plus the one write the mesh makes (its own annotations).
pub trait NodeSource: Send {
    /// The next full list of Nodes: the first call returns the current list, later calls wait for a change.
    fn next(&mut self) -> impl Future<Output = Result<Vec<Node>, SourceError>> + Send;
    /// Sets `annotations` on Node `node` (other annotations stay).
    fn publish(
        &mut self,
        node: &str,
        annotations: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;
}

/// Nodes from a directory of manifests (`*.yaml`, `*.yml`, `*.json`; hidden files ignored), polled.
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
    interval: Duration,
    last: Option<u64>,
}

fn is_manifest(p: &Path) -> bool {
    let hidden = p
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    !hidden
        && matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

/// Parses one manifest; JSON when the file says `.json`, YAML otherwise.
pub fn parse_manifest(path: &Path, text: &str) -> Result<Node, SourceError> {
    let bad = |reason: String| SourceError::Manifest {
        path: path.into(),
        reason,
    };
    let value: serde_json::Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?
    } else {
        serde_saphyr::from_str(text).map_err(|e| bad(format!("not valid YAML: {e}")))?
    };
    match value.get("kind").and_then(|k| k.as_str()) {
        Some("Node") | None => {}
        Some(other) => return Err(bad(format!("kind: {other:?}, want \"Node\""))),
    }
    let node: Node = serde_json::from_value(value).map_err(|e| bad(format!("not a Node: {e}")))?;
    if node.metadata.name.as_deref().is_none_or(str::is_empty) {
        return Err(bad("metadata.name: missing".into()));
    }
    Ok(node)
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>, interval: Duration) -> Self {
        DirSource {
            dir: dir.into(),
            interval,
            last: None,
        }
    }

    fn files(&self) -> Result<Vec<PathBuf>, SourceError> {
        let io = |source| SourceError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_manifest(p))
            .collect();
        files.sort();
        Ok(files)
    }

    /// Reads every manifest; unreadable or invalid files are logged and left out.
    fn scan(&self) -> Result<(Vec<Node>, u64), SourceError> {
        let mut h = DefaultHasher::new();
        let mut nodes = Vec::new();
        for path in self.files()? {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            (&path, &text).hash(&mut h);
            match parse_manifest(&path, &text) {
                Ok(n) => nodes.push(n),
                Err(e) => tracing::warn!(error = %e, "skipping Node manifest"),
            }
        }
        Ok((nodes, h.finish()))
    }

    fn write_annotations(
        &self,
        node: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<(), SourceError> {
        for path in self.files()? {
            let io = |source| SourceError::Io {
                path: path.clone(),
                source,
            };
            let text = std::fs::read_to_string(&path).map_err(io)?;
            let Ok(mut n) = parse_manifest(&path, &text) else {
                continue;
            };
            if n.metadata.name.as_deref() != Some(node) {
                continue;
            }
            let ann = n.metadata.annotations.get_or_insert_default();
            for (k, v) in annotations {
                ann.insert(k.clone(), v.clone());
            }
            // JSON is valid YAML, so one writer serves both kinds of file.
            let mut json =
                serde_json::to_string_pretty(&n).map_err(|e| io(std::io::Error::other(e)))?;
            json.push('\n');
            let name = path.file_name().and_then(|f| f.to_str()).unwrap_or("node");
            let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
            std::fs::write(&tmp, json).map_err(io)?;
            return std::fs::rename(&tmp, &path).map_err(io);
        }
        Err(SourceError::NoManifest {
            node: node.into(),
            dir: self.dir.clone(),
        })
    }
}

impl NodeSource for DirSource {
    async fn next(&mut self) -> Result<Vec<Node>, SourceError> {
        loop {
            let (nodes, fp) = self.scan()?;
            if self.last != Some(fp) {
                self.last = Some(fp);
                return Ok(nodes);
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    async fn publish(
        &mut self,
        node: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<(), SourceError> {
        self.write_annotations(node, annotations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels: {a: b}\nspec:\n  podCIDR: 10.244.1.0/24\n";

    #[tokio::test]
    async fn lists_then_waits_for_changes_and_publishes_annotations() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("n1.yaml"), YAML).unwrap();
        std::fs::write(d.path().join("n2.json"), r#"{"metadata":{"name":"n2"}}"#).unwrap();
        std::fs::write(d.path().join("notes.txt"), "ignored").unwrap();
        let mut s = DirSource::new(d.path(), Duration::from_millis(10));
        let names = |v: &[Node]| {
            v.iter()
                .map(|n| n.metadata.name.clone().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&s.next().await.unwrap()), ["n1", "n2"]);
        // Unchanged: next() keeps waiting.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), s.next())
                .await
                .is_err()
        );
        let ann = BTreeMap::from([(
            "agent.kitfleet.dev/wg-public-key".to_string(),
            "k".to_string(),
        )]);
        s.publish("n1", &ann).await.unwrap();
        let nodes = s.next().await.unwrap();
        let n1 = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some("n1"))
            .unwrap();
        assert_eq!(
            n1.metadata.annotations.as_ref().unwrap()["agent.kitfleet.dev/wg-public-key"],
            "k"
        );
        assert_eq!(
            n1.metadata.labels.as_ref().unwrap()["a"],
            "b",
            "other fields kept"
        );
        assert_eq!(
            n1.spec.as_ref().unwrap().pod_cidr.as_deref(),
            Some("10.244.1.0/24")
        );
        let e = s.publish("n9", &ann).await.unwrap_err().to_string();
        assert!(e.contains("n9"), "{e}");
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        let cases = [
            ("a.yaml", "kind: Pod\nmetadata: {name: x}\n", "kind"),
            ("b.yaml", "metadata: {}\n", "metadata.name"),
            ("c.json", "{", "not valid JSON"),
            ("d.yaml", "metadata: [1, 2]\n", "not a Node"),
            ("e.yaml", "a: [\n", "not valid YAML"),
        ];
        for (file, text, why) in cases {
            let e = parse_manifest(Path::new(file), text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why) && e.contains(file), "{file}: {e}");
        }
    }
}
