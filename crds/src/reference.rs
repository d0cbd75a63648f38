//! Image references as Kubernetes and the distribution spec write them: `[host[:port]/]path[:tag][@digest]`.

use std::fmt;

/// A parsed image reference. Docker Hub names are expanded (`alpine` → `docker.io/library/alpine`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// Why a reference is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("is empty")]
    Empty,
    #[error("{0:?} is not a valid image reference: {1}")]
    Invalid(String, &'static str),
    #[error("{0:?} has no tag or digest")]
    Unpinned(String),
}

impl Reference {
    /// Parses a reference that may lack a tag and digest (a repository, say).
    pub fn parse_loose(s: &str) -> Result<Self, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let bad = |why| ReferenceError::Invalid(s.to_string(), why);
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (s, None),
        };
        if let Some(d) = digest {
            let (algo, hex) = d
                .split_once(':')
                .ok_or_else(|| bad("digest must be ALGORITHM:HEX"))?;
            let valid = match algo {
                "sha256" => hex.len() == 64,
                "sha512" => hex.len() == 128,
                _ => false,
            };
            if !valid
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(bad("digest must be sha256:<64 hex> or sha512:<128 hex>"));
            }
        }
        // A tag is the part after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(bad(
                    "tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -",
                ));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), path)
            }
            _ => ("docker.io".to_string(), name),
        };
        if path.is_empty() {
            return Err(bad("repository is empty"));
        }
        for comp in path.split('/') {
            let ok = !comp.is_empty()
                && comp
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && comp.as_bytes()[0].is_ascii_alphanumeric()
                && comp.as_bytes()[comp.len() - 1].is_ascii_alphanumeric();
            if !ok {
                return Err(bad(
                    "repository components are lowercase [a-z0-9] separated by '.', '_' or '-'",
                ));
            }
        }
        let repository = if registry == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        Ok(Self {
            registry,
            repository,
            tag: tag.map(str::to_string),
            digest: digest.map(str::to_string),
        })
    }

    /// Parses a reference that must carry a tag or a digest.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let r = Self::parse_loose(s)?;
        if r.tag.is_none() && r.digest.is_none() {
            return Err(ReferenceError::Unpinned(s.to_string()));
        }
        Ok(r)
    }

    /// `registry/repository`, without tag or digest.
    pub fn repository_url(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same reference pinned to `digest`, tag kept for the reader.
    pub fn with_digest(&self, digest: &str) -> Self {
        Self {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_kubernetes_accepts() {
        let cases = [
            (
                "alpine:3.20",
                "docker.io",
                "library/alpine",
                Some("3.20"),
                false,
            ),
            (
                "linuxkit/init:b5506cc74a6812dc40982cacfd2f4328f8a4b12a",
                "docker.io",
                "linuxkit/init",
                Some("b5506cc74a6812dc40982cacfd2f4328f8a4b12a"),
                false,
            ),
            (
                "127.0.0.1:5000/kitfleet/kernel:6.1",
                "127.0.0.1:5000",
                "kitfleet/kernel",
                Some("6.1"),
                false,
            ),
            (
                "localhost/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "localhost",
                "a/b",
                None,
                true,
            ),
            (
                "ghcr.io/x/y:v1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "ghcr.io",
                "x/y",
                Some("v1"),
                true,
            ),
        ];
        for (s, reg, repo, tag, has_digest) in cases {
            let r = Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(
                (
                    r.registry.as_str(),
                    r.repository.as_str(),
                    r.tag.as_deref(),
                    r.digest.is_some()
                ),
                (reg, repo, tag, has_digest),
                "{s}"
            );
        }
    }

    #[test]
    fn rejects_what_a_registry_would() {
        assert_eq!(
            Reference::parse("linuxkit/sysctl"),
            Err(ReferenceError::Unpinned("linuxkit/sysctl".into()))
        );
        for s in [
            "",
            "UPPER/case:1",
            "a//b:1",
            "a:",
            "a@sha256:abc",
            "a:-x",
            "127.0.0.1:5000/:1",
        ] {
            assert!(Reference::parse(s).is_err(), "{s} accepted");
        }
    }
}
