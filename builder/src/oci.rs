//! The OCI image-spec documents the builder reads and writes (own types, tolerant of extra fields).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// OCI image index media type.
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest media type.
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list media type.
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest media type.
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// OCI image config media type.
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Gzip layer media types (OCI and Docker).
pub const MT_LAYER_GZIP: [&str; 2] = [
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];
/// Uncompressed OCI layer.
pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Every manifest media type the builder accepts.
pub const ACCEPTED_MANIFESTS: [&str; 4] = [
    MT_OCI_INDEX,
    MT_DOCKER_LIST,
    MT_OCI_MANIFEST,
    MT_DOCKER_MANIFEST,
];

/// A content descriptor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform (indexes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A platform in an index entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    /// CPU architecture (`amd64`, `arm64`…).
    pub architecture: String,
    /// Operating system.
    pub os: String,
    /// Variant (`v8`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest or an index, told apart by their content.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when the document states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Artifact type (artifacts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Config descriptor (image manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    /// Layers (image manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<Descriptor>>,
    /// Manifests (indexes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests: Option<Vec<Descriptor>>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Document {
    /// Parses a manifest or index; `reference` names it in errors.
    pub fn parse(bytes: &[u8], reference: &str) -> Result<Self> {
        let doc: Document = serde_json::from_slice(bytes).map_err(|e| Error::Malformed {
            reference: reference.to_string(),
            what: "manifest",
            reason: e.to_string(),
        })?;
        if doc.manifests.is_none() && (doc.config.is_none() || doc.layers.is_none()) {
            return Err(Error::Malformed {
                reference: reference.to_string(),
                what: "manifest",
                reason: "neither an index (manifests) nor an image manifest (config, layers)"
                    .into(),
            });
        }
        Ok(doc)
    }

    /// Whether this is an index / manifest list.
    pub fn is_index(&self) -> bool {
        self.manifests.is_some()
    }

    /// Picks the `linux/<arch>` entry of an index.
    pub fn select_platform(&self, arch: &str, reference: &str) -> Result<&Descriptor> {
        let manifests = self.manifests.as_deref().unwrap_or_default();
        let (want_arch, want_variant) = match arch.split_once('/') {
            Some((a, v)) => (a, Some(v)),
            None => (arch, None),
        };
        manifests
            .iter()
            .find(|d| {
                d.platform.as_ref().is_some_and(|p| {
                    p.os == "linux"
                        && p.architecture == want_arch
                        && (want_variant.is_none() || p.variant.as_deref() == want_variant)
                })
            })
            .ok_or_else(|| Error::NoPlatform {
                reference: reference.to_string(),
                arch: arch.to_string(),
                offered: manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// The parts of an image config file the builder uses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfigFile {
    /// Architecture the image is built for.
    #[serde(default)]
    pub architecture: String,
    /// OS.
    #[serde(default)]
    pub os: String,
    /// The run configuration.
    #[serde(default)]
    pub config: Option<RunConfig>,
}

/// The `config` object of an image config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunConfig {
    /// Entrypoint.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// Cmd.
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// Environment.
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// Working directory.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    /// Labels (`org.mobyproject.config` lives here).
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl ImageConfigFile {
    /// Parses an image config blob.
    pub fn parse(bytes: &[u8], reference: &str) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::Malformed {
            reference: reference.to_string(),
            what: "image config",
            reason: e.to_string(),
        })
    }

    /// The run configuration, or an empty one.
    pub fn run(&self) -> RunConfig {
        self.config.clone().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_platform_and_reports_offers() {
        let idx = br#"{"schemaVersion":2,"manifests":[
          {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,
           "platform":{"architecture":"arm64","os":"linux"}},
          {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":1,
           "platform":{"architecture":"amd64","os":"linux"}}]}"#;
        let d = Document::parse(idx, "r").unwrap();
        assert!(d.is_index());
        assert_eq!(d.select_platform("amd64", "r").unwrap().digest, "sha256:bb");
        let e = d.select_platform("riscv64", "r").unwrap_err().to_string();
        assert!(e.contains("linux/arm64, linux/amd64"), "{e}");
    }

    #[test]
    fn rejects_non_manifests() {
        assert!(Document::parse(br#"{"schemaVersion":2}"#, "r").is_err());
        assert!(Document::parse(b"[]", "r").is_err());
    }
}
