//! Image sources: OCI registries (through `oci-client`) and local OCI layouts, both behind one
//! resolver that turns a reference into digests, a platform manifest and an image config, and
//! serves verified blobs through the cache.

use std::path::Path;

use oci_client::Reference;
use oci_client::client::{ClientConfig, ClientProtocol};

use crate::auth::Credentials;
use crate::cache::Cache;
use crate::digest::{hex_part, sha256};
use crate::error::{Error, Result};
use crate::fetch::{self, CappedFile, FetchError, NetLimits};
use crate::oci::{ACCEPTED_MANIFESTS, Descriptor, Document, ImageConfigFile};
use crate::reference::ImageRef;

/// How to reach sources.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Target architecture for multi-platform indexes (`amd64`, `arm64`, `arm/v7`…).
    pub arch: String,
    /// Registries (`host:port`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Registry credentials.
    pub credentials: Credentials,
    /// Never contact a registry: only pinned digests already in the cache resolve.
    pub offline: bool,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            arch: "amd64".into(),
            insecure_registries: Vec::new(),
            credentials: Credentials::anonymous(),
            offline: false,
        }
    }
}

/// A reference resolved to digests.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The reference.
    pub reference: ImageRef,
    /// The digest the reference resolves to (an index or a manifest): the one recorded in the
    /// build key and in `resolve` output.
    pub digest: String,
    /// The digest of the platform's image manifest.
    pub manifest_digest: String,
    /// The platform's image manifest.
    pub manifest: Document,
    /// The image config blob's digest.
    pub config_digest: String,
    /// The image config.
    pub config: ImageConfigFile,
}

impl Resolved {
    /// Layer descriptors, in order.
    pub fn layers(&self) -> &[Descriptor] {
        self.manifest.layers.as_deref().unwrap_or_default()
    }
}

/// Resolves references and fetches blobs.
pub struct Sources {
    cache: Cache,
    opts: SourceOptions,
    client: oci_client::Client,
    http: reqwest::Client,
    limits: NetLimits,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").field("opts", &self.opts).finish()
    }
}

/// Installs ring as the process's rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Sources {
    /// A resolver using `cache`, with the default [`NetLimits`].
    pub fn new(cache: Cache, opts: SourceOptions) -> Self {
        Self::with_limits(cache, opts, NetLimits::default())
    }

    /// A resolver using `cache` with explicit timeouts and size caps.
    pub fn with_limits(cache: Cache, opts: SourceOptions, limits: NetLimits) -> Self {
        install_crypto_provider();
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(opts.insecure_registries.clone()),
            platform_resolver: None,
            connect_timeout: Some(limits.connect_timeout),
            read_timeout: Some(limits.read_timeout),
            ..Default::default()
        });
        let http = reqwest::Client::builder()
            .connect_timeout(limits.connect_timeout)
            .read_timeout(limits.read_timeout)
            .build()
            .unwrap_or_default();
        Sources {
            cache,
            opts,
            client,
            http,
            limits,
        }
    }

    /// The timeouts and caps in force.
    pub fn limits(&self) -> NetLimits {
        self.limits
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The options.
    pub fn options(&self) -> &SourceOptions {
        &self.opts
    }

    /// Resolves `r` (written at `location`) to digests, manifest and config.
    pub async fn resolve(&self, r: &ImageRef, location: &str) -> Result<Resolved> {
        let name = r.to_string();
        let (top_bytes, top_digest) = self.top_manifest(r, location).await?;
        let top = Document::parse(&top_bytes, &name)?;
        let (manifest, manifest_digest) = if top.is_index() {
            let d = top.select_platform(&self.opts.arch, &name)?.clone();
            let bytes = self.manifest_by_digest(r, &d.digest).await?;
            (Document::parse(&bytes, &name)?, d.digest)
        } else {
            (top, top_digest.clone())
        };
        let cfg_desc = manifest.config.clone().ok_or_else(|| Error::Malformed {
            reference: name.clone(),
            what: "manifest",
            reason: "no config".into(),
        })?;
        let config_bytes = self.config_blob(r, &cfg_desc).await?;
        let config = ImageConfigFile::parse(&config_bytes, &name)?;
        Ok(Resolved {
            reference: r.clone(),
            digest: top_digest,
            manifest_digest,
            manifest,
            config_digest: cfg_desc.digest,
            config,
        })
    }

    async fn top_manifest(&self, r: &ImageRef, location: &str) -> Result<(Vec<u8>, String)> {
        if let Some(d) = r.pinned_digest()
            && let Some(bytes) = self.cache.get_blob(d)?
        {
            return Ok((bytes, d.to_string()));
        }
        match r {
            ImageRef::Layout { dir, tag, digest } => {
                let d = layout_select(dir, tag.as_deref(), digest.as_deref())?;
                Ok((read_layout_blob(dir, &d)?, d))
            }
            ImageRef::Registry(reference) => {
                if self.opts.offline {
                    return Err(Error::Unresolved {
                        location: location.to_string(),
                        reference: r.to_string(),
                        reason: "offline and not in the cache".into(),
                    });
                }
                let auth = self.opts.credentials.for_host(reference.resolve_registry());
                let mut accepted = ACCEPTED_MANIFESTS.to_vec();
                accepted.push("application/vnd.oci.artifact.manifest.v1+json");
                let insecure = self
                    .opts
                    .insecure_registries
                    .iter()
                    .any(|h| h == reference.resolve_registry());
                let max = self.limits.max_manifest;
                let bytes = fetch::manifest(
                    &self.http,
                    &self.client,
                    reference,
                    &auth,
                    &accepted,
                    insecure,
                    max,
                )
                .await
                .map_err(|e| match e {
                    FetchError::TooLarge(limit) => Error::TooLarge {
                        reference: r.to_string(),
                        what: "manifest".into(),
                        limit,
                    },
                    FetchError::Other(message) | FetchError::NotFound(message) => Error::Registry {
                        reference: r.to_string(),
                        message,
                    },
                })?;
                let d = sha256(&bytes);
                if let Some(p) = r.pinned_digest()
                    && p != d
                {
                    return Err(Error::DigestMismatch {
                        reference: r.to_string(),
                        digest: p.to_string(),
                        actual: d,
                    });
                }
                self.cache.put_blob(&d, &bytes)?;
                Ok((bytes.to_vec(), d))
            }
        }
    }

    /// A manifest by digest (through the registry's manifests endpoint), verified and cached.
    async fn manifest_by_digest(&self, r: &ImageRef, digest: &str) -> Result<Vec<u8>> {
        let ImageRef::Registry(reference) = r else {
            let ImageRef::Layout { dir, .. } = r else {
                unreachable!("registry handled above")
            };
            return read_layout_blob(dir, digest);
        };
        if let Some(b) = self.cache.get_blob(digest)? {
            return Ok(b);
        }
        let pinned = ImageRef::Registry(Reference::with_digest(
            reference.registry().to_string(),
            reference.repository().to_string(),
            digest.to_string(),
        ));
        let (bytes, d) = self.top_manifest(&pinned, "").await?;
        debug_assert_eq!(d, digest);
        Ok(bytes)
    }

    /// The raw top-level manifest of `r` and its digest (no platform selection).
    pub async fn resolve_raw(&self, r: &ImageRef) -> Result<(Vec<u8>, String)> {
        self.top_manifest(r, "").await
    }

    /// A manifest by tag or digest, read with the manifest cap (no caching, no digest check):
    /// `None` when the registry answers 404. For callers that look a manifest up themselves.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
        accepted: &[&str],
    ) -> Result<Option<Vec<u8>>> {
        let auth = self.opts.credentials.for_host(reference.resolve_registry());
        let insecure = self
            .opts
            .insecure_registries
            .iter()
            .any(|h| h == reference.resolve_registry());
        let max = self.limits.max_manifest;
        match fetch::manifest(
            &self.http,
            &self.client,
            reference,
            &auth,
            accepted,
            insecure,
            max,
        )
        .await
        {
            Ok(b) => Ok(Some(b)),
            Err(FetchError::NotFound(_)) => Ok(None),
            Err(FetchError::TooLarge(limit)) => Err(Error::TooLarge {
                reference: reference.whole(),
                what: "manifest".into(),
                limit,
            }),
            Err(FetchError::Other(message)) => Err(Error::Registry {
                reference: reference.whole(),
                message,
            }),
        }
    }

    /// A config blob (read into memory, so capped at [`NetLimits::max_config`]).
    pub async fn config_blob(&self, r: &ImageRef, desc: &Descriptor) -> Result<Vec<u8>> {
        if desc.size > self.limits.max_config {
            return Err(Error::TooLarge {
                reference: r.to_string(),
                what: format!("config {} (its descriptor)", desc.digest),
                limit: self.limits.max_config,
            });
        }
        self.blob(r, desc).await
    }

    /// A verified blob of `r`, read into memory (see [`Sources::blob_file`]).
    pub async fn blob(&self, r: &ImageRef, desc: &Descriptor) -> Result<Vec<u8>> {
        if let ImageRef::Layout { dir, .. } = r {
            check_digest(r, &desc.digest)?;
            return read_layout_blob(dir, &desc.digest);
        }
        let path = self.blob_file(r, desc).await?;
        std::fs::read(&path).map_err(|e| Error::io(&path, e))
    }

    /// A verified blob of a registry image as a file in the cache: streamed to disk, never
    /// held in memory, and stopped at the first byte past the size its descriptor declares.
    /// For a local layout, the layout's own file (verified).
    pub async fn blob_file(&self, r: &ImageRef, desc: &Descriptor) -> Result<std::path::PathBuf> {
        let digest = desc.digest.as_str();
        check_digest(r, digest)?;
        if let ImageRef::Layout { dir, .. } = r {
            let hex = hex_part(digest).expect("checked");
            let p = dir.join("blobs/sha256").join(hex);
            read_layout_blob(dir, digest)?;
            return Ok(p);
        }
        if let Some(p) = self.cache.blob_file(digest)? {
            return Ok(p);
        }
        let ImageRef::Registry(reference) = r else {
            unreachable!("layouts returned above")
        };
        if self.opts.offline {
            return Err(Error::Unresolved {
                location: String::new(),
                reference: r.to_string(),
                reason: format!("blob {digest} not in the cache (offline)"),
            });
        }
        let auth = self.opts.credentials.for_host(reference.resolve_registry());
        let pinned = Reference::with_digest(
            reference.registry().to_string(),
            reference.repository().to_string(),
            digest.to_string(),
        );
        self.client
            .store_auth_if_needed(reference.resolve_registry(), &auth)
            .await;
        let tmp = self.cache.temp_file()?;
        let file = tmp.reopen().map_err(|e| Error::io(tmp.path(), e))?;
        let mut out = CappedFile::new(file, desc.size);
        let pulled = self.client.pull_blob(&pinned, digest, &mut out).await;
        if out.over {
            return Err(Error::TooLarge {
                reference: r.to_string(),
                what: format!("blob {digest}"),
                limit: desc.size,
            });
        }
        pulled.map_err(|e| Error::Registry {
            reference: r.to_string(),
            message: format!("blob {digest}: {e}"),
        })?;
        if out.written() != desc.size {
            return Err(Error::Malformed {
                reference: r.to_string(),
                what: "descriptor",
                reason: format!(
                    "blob {digest} is {} bytes, its descriptor says {}",
                    out.written(),
                    desc.size
                ),
            });
        }
        // oci-client verified the content digest while streaming.
        self.cache.persist_blob(tmp, digest)
    }

    /// The underlying registry client (for pushing).
    pub fn client(&self) -> &oci_client::Client {
        &self.client
    }
}

/// Picks a manifest from a layout's `index.json` by digest, tag, or (when it has only one) alone.
fn layout_select(dir: &Path, tag: Option<&str>, digest: Option<&str>) -> Result<String> {
    let err = |reason: String| Error::Layout {
        path: dir.to_path_buf(),
        reason,
    };
    let layout_file = dir.join("oci-layout");
    if !layout_file.exists() {
        return Err(err("no oci-layout file: not an OCI image layout".into()));
    }
    let idx_path = dir.join("index.json");
    let bytes = std::fs::read(&idx_path).map_err(|e| Error::io(&idx_path, e))?;
    let idx = Document::parse(&bytes, &idx_path.display().to_string())?;
    let manifests = idx.manifests.unwrap_or_default();
    if let Some(d) = digest {
        return Ok(d.to_string());
    }
    let name_of = |d: &Descriptor| {
        d.annotations
            .get("org.opencontainers.image.ref.name")
            .cloned()
    };
    match tag {
        Some(t) => manifests
            .iter()
            .find(|d| name_of(d).as_deref() == Some(t))
            .map(|d| d.digest.clone())
            .ok_or_else(|| err(format!("no manifest tagged {t:?} in index.json"))),
        None if manifests.len() == 1 => Ok(manifests[0].digest.clone()),
        None => Err(err(format!(
            "index.json lists {} manifests: name one with :TAG or @DIGEST",
            manifests.len()
        ))),
    }
}

fn check_digest(r: &ImageRef, digest: &str) -> Result<()> {
    if hex_part(digest).is_none() {
        return Err(Error::Malformed {
            reference: r.to_string(),
            what: "descriptor",
            reason: format!("unsupported digest {digest:?}"),
        });
    }
    Ok(())
}

fn read_layout_blob(dir: &Path, digest: &str) -> Result<Vec<u8>> {
    let hex = hex_part(digest).ok_or_else(|| Error::Layout {
        path: dir.to_path_buf(),
        reason: format!("unsupported digest {digest:?}"),
    })?;
    let p = dir.join("blobs/sha256").join(hex);
    let data = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
    let actual = sha256(&data);
    if actual != digest {
        return Err(Error::DigestMismatch {
            reference: format!("oci:{}", dir.display()),
            digest: digest.to_string(),
            actual,
        });
    }
    Ok(data)
}
