//! Publishing outputs as an OCI artifact, and pulling one back.
//!
//! The artifact is an OCI image manifest with `artifactType`
//! `application/vnd.kitfleet.nodeimage.v1`, one layer per output file (media types from
//! [`layer_media_type`], file name in `org.opencontainers.image.title`), a config blob
//! (`application/vnd.kitfleet.nodeimage.config.v1+json`) recording the resolved inputs and the
//! KSPP check of the kernel, and the build key in the `dev.kitfleet.build-key` annotation. It is
//! tagged `bk-<build key hex>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_client::{Reference, RegistryOperation};
use serde::{Deserialize, Serialize};

use crate::build::{BuildResult, OutputFile, RefStatus, artifact_tag};
use crate::digest::{hex_part, sha256};
use crate::error::{Error, Result};
use crate::oci::{Descriptor, Document, MT_OCI_MANIFEST};
use crate::source::Sources;

/// `artifactType` of Kitfleet node image artifacts.
pub const ARTIFACT_TYPE: &str = kitfleet_api::constants::MEDIA_TYPE_ARTIFACT;
/// Media type of the artifact's config blob.
pub const CONFIG_MEDIA_TYPE: &str = kitfleet_api::constants::MEDIA_TYPE_CONFIG;
/// Annotation holding the hex build key.
pub const BUILD_KEY_ANNOTATION: &str = kitfleet_api::constants::ARTIFACT_ANNOTATION_BUILD_KEY;
/// Annotation naming a layer's format.
pub const FORMAT_ANNOTATION: &str = "dev.kitfleet.format";
/// Standard title annotation (the file name).
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

/// The media type of one output file: `application/vnd.kitfleet.nodeimage.<format-file>.v1`, where
/// `<format-file>` is `kernel`, `initrd` or `cmdline` for the `kernel+initrd` files and the format
/// name for single-file formats (`tar`, `tar-kernel-initrd`, `iso-efi-initrd`, `raw-efi`, `qcow2-efi`).
pub fn layer_media_type(format: &str, role: &str) -> String {
    let part = if format == "kernel+initrd" {
        role
    } else {
        format
    };
    kitfleet_api::constants::layer_media_type(part)
}

/// The config blob of an artifact.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactConfig {
    /// Builder version.
    pub builder: String,
    /// Hex build key.
    pub build_key: String,
    /// Target architecture.
    pub arch: String,
    /// Formats built.
    pub formats: Vec<String>,
    /// Every resolved input.
    pub inputs: Vec<ArtifactInput>,
    /// The KSPP check of the kernel (`spec.hardening`; unset for `kspp: off`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kspp: Option<crate::kspp::KsppOutcome>,
}

/// One input of an artifact.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactInput {
    /// YAML location.
    pub location: String,
    /// Reference as written.
    pub reference: String,
    /// Digest it resolved to.
    pub digest: String,
}

/// Where an artifact was published.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Published {
    /// `repo:tag` pushed.
    pub reference: String,
    /// Manifest digest.
    pub digest: String,
    /// `repo@digest`.
    pub pinned: String,
    /// Per-file digests (file name → digest).
    pub files: BTreeMap<String, String>,
}

fn reg_err(r: &str, e: impl std::fmt::Display) -> Error {
    Error::Registry {
        reference: r.to_string(),
        message: e.to_string(),
    }
}

fn parse_repo(repo: &str) -> Result<Reference> {
    Reference::from_str(repo).map_err(|e| Error::BadReference {
        location: "--push".into(),
        reference: repo.into(),
        reason: e.to_string(),
    })
}

/// Pushes the outputs of `result` to `repo` (a repository, optionally with an extra tag).
pub async fn push(
    sources: &Sources,
    repo: &str,
    result: &BuildResult,
    arch: &str,
) -> Result<Published> {
    let base = parse_repo(repo)?;
    let key: [u8; 32] = hex::decode(&result.build_key)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| Error::Config {
            location: "build key".into(),
            reason: "not 32 bytes of hex".into(),
        })?;
    let tag = artifact_tag(&key);
    let target = Reference::with_tag(
        base.registry().to_string(),
        base.repository().to_string(),
        tag.clone(),
    );
    let client = sources.client();
    let auth = sources
        .options()
        .credentials
        .for_host(target.resolve_registry());
    client
        .auth(&target, &auth, RegistryOperation::Push)
        .await
        .map_err(|e| reg_err(&target.whole(), e))?;

    let mut formats: Vec<String> = result.outputs.iter().map(|o| o.format.clone()).collect();
    formats.dedup();
    let config = ArtifactConfig {
        builder: crate::BUILDER_VERSION.into(),
        build_key: result.build_key.clone(),
        arch: arch.into(),
        formats,
        inputs: result.inputs.iter().filter_map(input).collect(),
        kspp: result.kspp.clone(),
    };
    let config_bytes = serde_json::to_vec(&config).expect("plain struct serialises");
    let config_digest = sha256(&config_bytes);
    client
        .push_blob(&target, config_bytes.clone(), &config_digest)
        .await
        .map_err(|e| reg_err(&target.whole(), e))?;

    let mut layers = Vec::new();
    let mut files = BTreeMap::new();
    for o in &result.outputs {
        let data = std::fs::read(&o.path).map_err(|e| Error::io(&o.path, e))?;
        client
            .push_blob(&target, data, &o.digest)
            .await
            .map_err(|e| reg_err(&target.whole(), e))?;
        let title = file_name(&o.path);
        files.insert(title.clone(), o.digest.clone());
        layers.push(Descriptor {
            media_type: layer_media_type(&o.format, &o.role),
            digest: o.digest.clone(),
            size: o.size,
            platform: None,
            annotations: BTreeMap::from([
                (TITLE_ANNOTATION.into(), title),
                (FORMAT_ANNOTATION.into(), o.format.clone()),
            ]),
        });
    }
    let manifest = Document {
        schema_version: 2,
        media_type: Some(MT_OCI_MANIFEST.into()),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        config: Some(Descriptor {
            media_type: CONFIG_MEDIA_TYPE.into(),
            digest: config_digest,
            size: config_bytes.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        }),
        layers: Some(layers),
        manifests: None,
        annotations: BTreeMap::from([(BUILD_KEY_ANNOTATION.into(), result.build_key.clone())]),
    };
    let body = serde_json::to_vec(&manifest).expect("plain struct serialises");
    let digest = sha256(&body);
    let ct = MT_OCI_MANIFEST.parse().expect("static header value");
    client
        .push_manifest_raw(&target, body.clone(), ct)
        .await
        .map_err(|e| reg_err(&target.whole(), e))?;
    if let Some(extra) = base
        .tag()
        .filter(|t| *t != "latest" || repo.ends_with(":latest"))
    {
        let r = Reference::with_tag(
            base.registry().to_string(),
            base.repository().to_string(),
            extra.to_string(),
        );
        let ct = MT_OCI_MANIFEST.parse().expect("static header value");
        client
            .push_manifest_raw(&r, body, ct)
            .await
            .map_err(|e| reg_err(&r.whole(), e))?;
    }
    Ok(Published {
        reference: format!("{}/{}:{tag}", base.registry(), base.repository()),
        pinned: format!("{}/{}@{digest}", base.registry(), base.repository()),
        digest,
        files,
    })
}

fn input(s: &RefStatus) -> Option<ArtifactInput> {
    Some(ArtifactInput {
        location: s.location.clone(),
        reference: s.reference.clone(),
        digest: s.digest.clone()?,
    })
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What a pull wrote.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pulled {
    /// Manifest digest.
    pub digest: String,
    /// The artifact's config.
    pub config: ArtifactConfig,
    /// Files written (verified against their layer digests).
    pub files: Vec<OutputFile>,
}

/// Pulls a Kitfleet artifact into `out_dir`, verifying every layer's digest.
pub async fn pull(sources: &Sources, reference: &str, out_dir: &Path) -> Result<Pulled> {
    let r = crate::reference::ImageRef::parse(reference, "pull")?;
    let top = sources.resolve_raw(&r).await?;
    let (bytes, digest) = top;
    let doc = Document::parse(&bytes, reference)?;
    if doc.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
        return Err(Error::Malformed {
            reference: reference.into(),
            what: "artifact",
            reason: format!(
                "artifactType is {:?}, not {ARTIFACT_TYPE}",
                doc.artifact_type
            ),
        });
    }
    let cfg_desc = doc.config.clone().expect("Document::parse checked");
    let cfg_bytes = sources.config_blob(&r, &cfg_desc).await?;
    let config: ArtifactConfig =
        serde_json::from_slice(&cfg_bytes).map_err(|e| Error::Malformed {
            reference: reference.into(),
            what: "artifact config",
            reason: e.to_string(),
        })?;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let mut files = Vec::new();
    for l in doc.layers.unwrap_or_default() {
        let title = l
            .annotations
            .get(TITLE_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        if title.is_empty()
            || title.contains('/')
            || title.starts_with('.')
            || hex_part(&l.digest).is_none()
        {
            return Err(Error::Malformed {
                reference: reference.into(),
                what: "artifact layer",
                reason: format!("unsafe or missing title {title:?}"),
            });
        }
        // Streamed to the cache, then copied out: never held in memory.
        let blob = sources.blob_file(&r, &l).await?;
        let path: PathBuf = out_dir.join(&title);
        let size = std::fs::copy(&blob, &path).map_err(|e| Error::io(&path, e))?;
        files.push(OutputFile {
            format: l
                .annotations
                .get(FORMAT_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
            role: l.media_type.clone(),
            path,
            size,
            digest: l.digest.clone(),
        });
    }
    Ok(Pulled {
        digest,
        config,
        files,
    })
}
