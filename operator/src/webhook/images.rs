//! Image run configurations (`Entrypoint`, `Cmd`) for containers without `command`, read from the registry with
//! `kitfleet-builder`'s client (the operator's own credentials and insecure-registry list) and cached:
//!
//! - in memory by reference: a digest-pinned reference forever, a tag for [`RegistryImages::tag_ttl`] (a re-pushed
//!   tag is seen after at most that long);
//! - manifests and config blobs on disk by digest (the builder's content cache), so a tag that moved to a digest
//!   seen before costs one manifest request.
//!
//! The pod's `imagePullSecrets` are **not** read (that would need `get` on every Secret of every namespace): an image
//! only reachable with them must be given a `command` in the pod spec; the refusal says so.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kitfleet_builder::auth::Credentials;
use kitfleet_builder::cache::Cache;
use kitfleet_builder::reference::ImageRef;
use kitfleet_builder::source::{SourceOptions, Sources};

use super::mutate::{ImageArgv, ImageLookup};

/// Failures to set the client up.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("image lookups: {0}")]
    Builder(#[from] kitfleet_builder::Error),
}

/// Reads image configurations from registries, cached.
pub struct RegistryImages {
    sources: Sources,
    cache: Mutex<HashMap<String, (ImageArgv, Option<Instant>)>>,
    /// How long a tag's argv is reused.
    pub tag_ttl: Duration,
}

impl std::fmt::Debug for RegistryImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryImages")
            .field("tag_ttl", &self.tag_ttl)
            .finish()
    }
}

impl RegistryImages {
    /// A client with its blob cache in `cache_dir`.
    pub fn new(
        cache_dir: &Path,
        arch: &str,
        insecure_registries: Vec<String>,
        docker_config: Option<&Path>,
        tag_ttl: Duration,
    ) -> Result<Self, ImagesError> {
        kitfleet_builder::source::install_crypto_provider();
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
        Ok(RegistryImages {
            sources: Sources::new(Cache::open(cache_dir.to_path_buf())?, opts),
            cache: Mutex::new(HashMap::new()),
            tag_ttl,
        })
    }

    /// The argv of one image, or why it cannot be read.
    pub async fn argv(&self, image: &str) -> ImageLookup {
        if let Some((argv, expires)) = self.cache.lock().expect("lock").get(image)
            && expires.is_none_or(|t| Instant::now() < t)
        {
            return Ok(argv.clone());
        }
        let r = ImageRef::parse(image, "image").map_err(|e| e.to_string())?;
        if !matches!(r, ImageRef::Registry(_)) {
            return Err("not a registry reference".into());
        }
        let resolved = self
            .sources
            .resolve(&r, "image")
            .await
            .map_err(|e| e.to_string())?;
        let run = resolved.config.run();
        let argv = ImageArgv {
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
        };
        let expires = match r.pinned_digest() {
            Some(_) => None,
            None => Some(Instant::now() + self.tag_ttl),
        };
        self.cache
            .lock()
            .expect("lock")
            .insert(image.to_string(), (argv.clone(), expires));
        Ok(argv)
    }

    /// Looks up every image of `images`.
    pub async fn look_up(&self, images: &[String]) -> BTreeMap<String, ImageLookup> {
        let mut out = BTreeMap::new();
        for i in images {
            out.insert(i.clone(), self.argv(i).await);
        }
        out
    }
}
