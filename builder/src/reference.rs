//! Image references: registry references (as in Kubernetes) and local OCI layouts
//! (`oci:DIR[:TAG|@sha256:…]`, CLI only).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::digest::hex_part;
use crate::error::{Error, Result};

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// A registry reference, normalised (`alpine` → `docker.io/library/alpine:latest`).
    Registry(oci_client::Reference),
    /// A local OCI image layout directory.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// `org.opencontainers.image.ref.name` to select in `index.json`.
        tag: Option<String>,
        /// Digest to select.
        digest: Option<String>,
    },
}

impl ImageRef {
    /// Parses `reference` as written at `location` (a YAML path used in errors).
    pub fn parse(reference: &str, location: &str) -> Result<Self> {
        let bad = |reason: &str| Error::BadReference {
            location: location.to_string(),
            reference: reference.to_string(),
            reason: reason.to_string(),
        };
        if reference.trim() != reference || reference.is_empty() {
            return Err(bad("empty or surrounded by whitespace"));
        }
        if let Some(rest) = reference.strip_prefix("oci:") {
            return parse_layout(rest).map_err(|r| bad(&r));
        }
        let parsed = oci_client::Reference::from_str(reference).map_err(|e| bad(&e.to_string()))?;
        if let Some(d) = parsed.digest()
            && hex_part(d).is_none()
        {
            return Err(bad("only sha256 digests are supported"));
        }
        Ok(ImageRef::Registry(parsed))
    }

    /// The pinned digest written in the reference, if any.
    pub fn pinned_digest(&self) -> Option<&str> {
        match self {
            ImageRef::Registry(r) => r.digest(),
            ImageRef::Layout { digest, .. } => digest.as_deref(),
        }
    }

    /// The registry host (`None` for layouts).
    pub fn registry(&self) -> Option<&str> {
        match self {
            ImageRef::Registry(r) => Some(r.resolve_registry()),
            ImageRef::Layout { .. } => None,
        }
    }

    /// The same reference pinned to `digest` (`repo@sha256:…` / `oci:DIR@sha256:…`).
    pub fn with_digest(&self, digest: &str) -> String {
        match self {
            ImageRef::Registry(r) => format!("{}/{}@{}", r.registry(), r.repository(), digest),
            ImageRef::Layout { dir, .. } => format!("oci:{}@{}", dir.display(), digest),
        }
    }
}

fn parse_layout(rest: &str) -> std::result::Result<ImageRef, String> {
    if let Some((dir, digest)) = rest.rsplit_once('@') {
        if hex_part(digest).is_none() {
            return Err("digest must be sha256:<64 lowercase hex>".into());
        }
        return layout(dir, None, Some(digest.to_string()));
    }
    // A tag follows the last ':' when that ':' is after the last '/'.
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[slash..].rfind(':') {
        Some(i) => {
            let (dir, tag) = (&rest[..slash + i], &rest[slash + i + 1..]);
            if tag.is_empty() {
                return Err("empty tag".into());
            }
            layout(dir, Some(tag.to_string()), None)
        }
        None => layout(rest, None, None),
    }
}

fn layout(
    dir: &str,
    tag: Option<String>,
    digest: Option<String>,
) -> std::result::Result<ImageRef, String> {
    if dir.is_empty() {
        return Err("missing layout directory".into());
    }
    Ok(ImageRef::Layout {
        dir: PathBuf::from(dir),
        tag,
        digest,
    })
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => write!(f, "{}", r.whole()),
            ImageRef::Layout { dir, tag, digest } => {
                write!(f, "oci:{}", dir.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                if let Some(d) = digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalises_docker_hub_names() {
        let r = ImageRef::parse("linuxkit/init:v1.2.0", "init[0]").unwrap();
        assert_eq!(r.to_string(), "docker.io/linuxkit/init:v1.2.0");
        assert_eq!(r.registry(), Some("index.docker.io"));
        let r = ImageRef::parse("alpine", "x").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
    }

    #[test]
    fn local_registry_with_port_and_digest() {
        let r = ImageRef::parse(&format!("127.0.0.1:5000/k/init@{D}"), "x").unwrap();
        assert_eq!(r.registry(), Some("127.0.0.1:5000"));
        assert_eq!(r.pinned_digest(), Some(D));
        assert_eq!(r.with_digest(D), format!("127.0.0.1:5000/k/init@{D}"));
    }

    #[test]
    fn layouts() {
        assert_eq!(
            ImageRef::parse("oci:/tmp/a:b/img:v1", "x").unwrap(),
            ImageRef::Layout {
                dir: "/tmp/a:b/img".into(),
                tag: Some("v1".into()),
                digest: None
            }
        );
        assert_eq!(
            ImageRef::parse(&format!("oci:rel/dir@{D}"), "x").unwrap(),
            ImageRef::Layout {
                dir: "rel/dir".into(),
                tag: None,
                digest: Some(D.into())
            }
        );
        assert!(ImageRef::parse("oci:", "x").is_err());
        assert!(ImageRef::parse("oci:dir@sha256:12", "x").is_err());
    }

    #[test]
    fn bad_references_name_location() {
        let e = ImageRef::parse("Bad Ref", "onboot[2].image").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("onboot[2].image: invalid image reference"),
            "{e}"
        );
    }
}
