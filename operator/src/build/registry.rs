//! The registry edge of the controller: resolving a spec's references (and its build key) and looking up the artifact
//! published for a build key. [`ArtifactRegistry`] is the seam; [`BuilderRegistry`] implements it with
//! `kitfleet-builder`'s resolver and registry client, so the operator computes exactly the key the build Job will push.

use std::future::Future;
use std::path::Path;
use std::str::FromStr;

use kitfleet_api::NodeImageSpec;
use kitfleet_api::nodeimage::{ArtifactStatus, FormatArtifact, ResolvedImage};
use kitfleet_builder::assemble::{LINUXKIT_MTIME, Mtime};
use kitfleet_builder::auth::Credentials;
use kitfleet_builder::cache::Cache;
use kitfleet_builder::push::{
    ARTIFACT_TYPE, BUILD_KEY_ANNOTATION, CONFIG_MEDIA_TYPE, FORMAT_ANNOTATION, layer_media_type,
};
use kitfleet_builder::source::{SourceOptions, Sources};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// Registry failures (the controller backs off and retries).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{reference}: {message}")]
    Request { reference: String, message: String },
    #[error("{reference}: not a Kitfleet artifact for this build key: {reason}")]
    Foreign { reference: String, reason: String },
    #[error("{0}")]
    Builder(#[from] kitfleet_builder::Error),
    #[error("push secret: {0}")]
    Secret(String),
}

/// Registry credentials from a NodeImage's push secret: its `.dockerconfigjson`.
#[derive(Clone, PartialEq, Eq)]
pub struct PullSecret(pub Vec<u8>);

impl std::fmt::Debug for PullSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PullSecret(<redacted>)")
    }
}

/// The outcome of resolving every reference of a spec.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resolution {
    /// One entry per distinct reference, in spec order.
    pub resolved: Vec<ResolvedImage>,
    /// `sha256:<hex>`; `None` when a reference did not resolve.
    pub build_key: Option<String>,
}

/// The tag an artifact is published under (`bk-<hex build key>`).
pub fn artifact_tag(build_key: &str) -> String {
    format!(
        "bk-{}",
        build_key.strip_prefix("sha256:").unwrap_or(build_key)
    )
}

/// Resolution and artifact lookup.
pub trait ArtifactRegistry: Send + Sync + 'static {
    /// Resolves every reference of `spec` to a digest and computes the build key.
    fn resolve(
        &self,
        spec: &NodeImageSpec,
        secret: Option<&PullSecret>,
    ) -> impl Future<Output = Result<Resolution, RegistryError>> + Send;
    /// The artifact tagged for `build_key` in `repository`, if one is published.
    fn lookup(
        &self,
        repository: &str,
        build_key: &str,
        secret: Option<&PullSecret>,
    ) -> impl Future<Output = Result<Option<ArtifactStatus>, RegistryError>> + Send;
}

/// [`ArtifactRegistry`] backed by `kitfleet-builder`.
#[derive(Debug)]
pub struct BuilderRegistry {
    cache_dir: std::path::PathBuf,
    sources: Sources,
}

impl BuilderRegistry {
    /// A registry client with its manifest cache in `cache_dir`.
    pub fn new(
        cache_dir: &Path,
        arch: &str,
        insecure_registries: Vec<String>,
        docker_config: Option<&Path>,
    ) -> Result<Self, RegistryError> {
        let credentials = match docker_config {
            Some(p) => Credentials::from_file(p)?,
            None => Credentials::anonymous(),
        };
        let opts = SourceOptions {
            arch: arch.to_string(),
            insecure_registries,
            credentials,
            offline: false,
        };
        Ok(BuilderRegistry {
            cache_dir: cache_dir.to_path_buf(),
            sources: Sources::new(Cache::open(cache_dir.to_path_buf())?, opts),
        })
    }

    /// The sources to use: the operator's own credentials, or those of a push secret.
    fn with_secret(&self, secret: Option<&PullSecret>) -> Result<SourcesFor<'_>, RegistryError> {
        let Some(secret) = secret else {
            return Ok(SourcesFor::Own(&self.sources));
        };
        let staged = tempfile::NamedTempFile::new_in(&self.cache_dir)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &secret.0).map(|_| f))
            .map_err(|e| {
                RegistryError::Secret(format!(
                    "staging credentials in {}: {e}",
                    self.cache_dir.display()
                ))
            })?;
        let credentials = Credentials::from_file(staged.path()).map_err(|e| {
            let shown = staged.path().display().to_string();
            RegistryError::Secret(e.to_string().replace(&shown, ".dockerconfigjson"))
        })?;
        let opts = SourceOptions {
            credentials,
            ..self.sources.options().clone()
        };
        let cache = Cache::open(self.cache_dir.clone())?;
        Ok(SourcesFor::Secret(Box::new(Sources::new(cache, opts))))
    }
}

/// The operator's sources, or sources with a push secret's credentials.
enum SourcesFor<'a> {
    Own(&'a Sources),
    Secret(Box<Sources>),
}

impl std::ops::Deref for SourcesFor<'_> {
    type Target = Sources;
    fn deref(&self) -> &Sources {
        match self {
            SourcesFor::Own(s) => s,
            SourcesFor::Secret(s) => s,
        }
    }
}

/// The mtime policy of in-cluster builds: the Job sets no `SOURCE_DATE_EPOCH`, so LinuxKit's constant.
pub const JOB_MTIME: Mtime = Mtime {
    generated: LINUXKIT_MTIME,
    clamp: None,
};

/// The initrd's gzip level in build Jobs (part of the build key; the Job passes it as `--level`).
pub const JOB_GZIP_LEVEL: u32 = 6;

impl ArtifactRegistry for BuilderRegistry {
    async fn resolve(
        &self,
        spec: &NodeImageSpec,
        secret: Option<&PullSecret>,
    ) -> Result<Resolution, RegistryError> {
        let sources = self.with_secret(secret)?;
        let (map, statuses) =
            kitfleet_builder::build::resolve_all(&sources, &spec.image, false).await?;
        let mut resolved: Vec<ResolvedImage> = Vec::new();
        for s in &statuses {
            if resolved.iter().any(|r| r.reference == s.reference) {
                continue;
            }
            resolved.push(ResolvedImage {
                reference: s.reference.clone(),
                digest: s.digest.clone(),
                error: s.unresolved.clone(),
            });
        }
        let complete = statuses.iter().all(|s| s.digest.is_some());
        let build_key = if complete {
            // In-cluster builds never read local `files[].source` (validation rejects them), so no base directory.
            let key = kitfleet_builder::build::build_key_hardened(
                &spec.image,
                &map,
                &spec.formats,
                &sources.options().arch,
                JOB_MTIME,
                JOB_GZIP_LEVEL,
                Path::new("/nonexistent/kitfleet"),
                &spec.hardening.clone().unwrap_or_default(),
            )?;
            Some(format!("sha256:{}", hex::encode(key)))
        } else {
            None
        };
        Ok(Resolution {
            resolved,
            build_key,
        })
    }

    async fn lookup(
        &self,
        repository: &str,
        build_key: &str,
        secret: Option<&PullSecret>,
    ) -> Result<Option<ArtifactStatus>, RegistryError> {
        let sources = self.with_secret(secret)?;
        let whole = format!("{repository}:{}", artifact_tag(build_key));
        let reference =
            oci_client::Reference::from_str(&whole).map_err(|e| RegistryError::Request {
                reference: whole.clone(),
                message: e.to_string(),
            })?;
        let accepted = [kitfleet_builder::oci::MT_OCI_MANIFEST];
        // The builder's bounded read: a 4 MiB cap and connect/read timeouts (issue 12, item 7).
        match sources.fetch_manifest(&reference, &accepted).await {
            Ok(Some(bytes)) => artifact_from_manifest(repository, build_key, &bytes).map(Some),
            Ok(None) => Ok(None),
            Err(e) => {
                // The builder's message, without the reference (the error names it once).
                let message = match e {
                    kitfleet_builder::Error::Registry { message, .. } => message,
                    other => other.to_string(),
                };
                Err(RegistryError::Request {
                    reference: whole,
                    message: cause(&std::io::Error::other(message)),
                })
            }
        }
    }
}

/// An error with every cause in its chain (the outermost "error sending request" alone hides whether the registry
/// refused the connection, failed the TLS handshake or speaks plain HTTP), led by what it means when known.
pub fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        // Wrappers often repeat their source's text: keep each piece once.
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    let chain = parts.join(": ");
    let lower = chain.to_ascii_lowercase();
    let hint = if lower.contains("connection refused") {
        Some("connection refused (nothing listens there)")
    } else if lower.contains("invalidcontenttype") || lower.contains("corrupt message") {
        Some(
            "TLS handshake failed: the registry speaks plain HTTP (list it with --insecure-registry)",
        )
    } else if lower.contains("http request to an https server")
        || lower.contains("invalid http version")
    {
        Some("plain HTTP to a registry that speaks TLS (remove it from --insecure-registry)")
    } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
    {
        Some("TLS handshake failed")
    } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
        Some("the registry's host name does not resolve")
    } else if lower.contains("timed out") {
        Some("timed out")
    } else {
        None
    };
    match hint {
        Some(h) => format!("{h}: {chain}"),
        None => chain,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    artifact_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

/// Reads an artifact manifest into the status it adopts; checks that it is a Kitfleet artifact for `build_key`.
pub fn artifact_from_manifest(
    repository: &str,
    build_key: &str,
    bytes: &[u8],
) -> Result<ArtifactStatus, RegistryError> {
    let tag = artifact_tag(build_key);
    let whole = format!("{repository}:{tag}");
    let foreign = |reason: String| RegistryError::Foreign {
        reference: whole.clone(),
        reason,
    };
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| foreign(format!("unreadable manifest: {e}")))?;
    if m.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
        return Err(foreign(format!(
            "artifactType is {:?}, not {ARTIFACT_TYPE}",
            m.artifact_type
        )));
    }
    if m.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(foreign(format!(
            "config media type is {:?}",
            m.config.media_type
        )));
    }
    let hex_key = build_key.strip_prefix("sha256:").unwrap_or(build_key);
    match m.annotations.get(BUILD_KEY_ANNOTATION) {
        Some(k) if k == hex_key => {}
        other => {
            return Err(foreign(format!(
                "annotation {BUILD_KEY_ANNOTATION} is {other:?}"
            )));
        }
    }
    let mut formats: Vec<FormatArtifact> = Vec::new();
    for l in &m.layers {
        let Some(format) = l.annotations.get(FORMAT_ANNOTATION) else {
            return Err(foreign(format!(
                "layer {} has no {FORMAT_ANNOTATION} annotation",
                l.digest
            )));
        };
        let main = format != "kernel+initrd" || l.media_type == layer_media_type(format, "initrd");
        if main && !formats.iter().any(|f| &f.format == format) {
            formats.push(FormatArtifact {
                format: format.clone(),
                digest: l.digest.clone(),
                size: l.size,
            });
        }
    }
    if formats.is_empty() {
        return Err(foreign("no layers".into()));
    }
    // Canonical order (that of `OutputFormat::ALL`), whatever order the layers were pushed in.
    let rank = |f: &str| {
        kitfleet_api::OutputFormat::ALL
            .iter()
            .position(|o| o.as_str() == f)
            .unwrap_or(usize::MAX)
    };
    formats.sort_by_key(|f| rank(&f.format));
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    Ok(ArtifactStatus {
        reference: format!("{whole}@{digest}"),
        short_digest: digest["sha256:".len().."sha256:".len() + 12].to_string(),
        digest,
        formats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn manifest(artifact_type: &str, key: &str, layers: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": artifact_type,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:cc", "size": 10},
            "layers": layers,
            "annotations": {BUILD_KEY_ANNOTATION: key},
        }))
        .unwrap()
    }

    fn layer(mt: &str, digest: &str, size: i64, format: &str) -> serde_json::Value {
        serde_json::json!({"mediaType": mt, "digest": digest, "size": size,
            "annotations": {FORMAT_ANNOTATION: format, "org.opencontainers.image.title": "x"}})
    }

    #[test]
    fn adopts_the_main_file_of_each_format() {
        let hex_key = &KEY[7..];
        let body = manifest(
            ARTIFACT_TYPE,
            hex_key,
            serde_json::json!([
                layer(
                    &layer_media_type("kernel+initrd", "kernel"),
                    "sha256:k",
                    5,
                    "kernel+initrd"
                ),
                layer(
                    &layer_media_type("kernel+initrd", "initrd"),
                    "sha256:i",
                    7,
                    "kernel+initrd"
                ),
                layer(
                    &layer_media_type("kernel+initrd", "cmdline"),
                    "sha256:c",
                    1,
                    "kernel+initrd"
                ),
                layer(&layer_media_type("tar", "tar"), "sha256:t", 9, "tar"),
            ]),
        );
        let a = artifact_from_manifest("127.0.0.1:5000/k/demo", KEY, &body).unwrap();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        assert_eq!(a.digest, digest);
        assert_eq!(a.short_digest, digest[7..19]);
        assert_eq!(
            a.reference,
            format!("127.0.0.1:5000/k/demo:bk-{hex_key}@{digest}")
        );
        let f: Vec<_> = a
            .formats
            .iter()
            .map(|f| (f.format.as_str(), f.digest.as_str(), f.size))
            .collect();
        assert_eq!(
            f,
            vec![("kernel+initrd", "sha256:i", 7), ("tar", "sha256:t", 9)]
        );
    }

    #[test]
    fn refuses_foreign_manifests() {
        let l = serde_json::json!([layer(
            "application/vnd.kitfleet.nodeimage.tar.v1",
            "sha256:t",
            9,
            "tar"
        )]);
        let cases = [
            (
                manifest("application/vnd.other", &KEY[7..], l.clone()),
                "artifactType",
            ),
            (
                manifest(ARTIFACT_TYPE, "ffff", l.clone()),
                "dev.kitfleet.build-key",
            ),
            (
                manifest(ARTIFACT_TYPE, &KEY[7..], serde_json::json!([])),
                "no layers",
            ),
            (b"not json".to_vec(), "unreadable manifest"),
        ];
        for (body, want) in cases {
            let e = artifact_from_manifest("r/x", KEY, &body)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(want) && e.starts_with(&format!("r/x:bk-{}", &KEY[7..])),
                "{e}"
            );
        }
    }
}
