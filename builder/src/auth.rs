//! Registry credentials: anonymous, or basic auth from a Docker config file
//! (`$DOCKER_CONFIG/config.json`, `~/.docker/config.json`, or `$REGISTRY_AUTH_FILE`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Credentials per registry host.
#[derive(Clone, Default)]
pub struct Credentials {
    by_host: BTreeMap<String, (String, String)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("hosts", &self.by_host.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Reduces a Docker config key (`https://index.docker.io/v1/`, `host:5000`) to a host.
fn host_of(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "docker.io" | "registry-1.docker.io" => "index.docker.io".to_string(),
        h => h.to_string(),
    }
}

impl Credentials {
    /// No credentials: every registry is accessed anonymously.
    pub fn anonymous() -> Self {
        Credentials::default()
    }

    /// Loads the Docker config at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let cfg: DockerConfig = serde_json::from_slice(&text).map_err(|e| Error::Input {
            path: path.to_path_buf(),
            reason: format!("not a Docker config file: {e}"),
        })?;
        let mut by_host = BTreeMap::new();
        for (key, entry) in cfg.auths {
            let pair = match (entry.username, entry.password, entry.auth) {
                (Some(u), Some(p), _) => (u, p),
                (_, _, Some(a)) => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .map_err(|e| Error::Input {
                            path: path.to_path_buf(),
                            reason: format!("auths.{key}.auth: not base64: {e}"),
                        })?;
                    let s = String::from_utf8(raw).map_err(|_| Error::Input {
                        path: path.to_path_buf(),
                        reason: format!("auths.{key}.auth: not UTF-8"),
                    })?;
                    let (u, p) = s.split_once(':').ok_or_else(|| Error::Input {
                        path: path.to_path_buf(),
                        reason: format!("auths.{key}.auth: expected base64(user:password)"),
                    })?;
                    (u.to_string(), p.to_string())
                }
                _ => continue,
            };
            by_host.insert(host_of(&key), pair);
        }
        Ok(Credentials { by_host })
    }

    /// The default Docker config, when one exists.
    pub fn discover() -> Result<Self> {
        let candidates: Vec<PathBuf> = [
            std::env::var_os("REGISTRY_AUTH_FILE").map(PathBuf::from),
            std::env::var_os("DOCKER_CONFIG").map(|d| Path::new(&d).join("config.json")),
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker/config.json")),
        ]
        .into_iter()
        .flatten()
        .collect();
        for c in candidates {
            if c.exists() {
                return Self::from_file(&c);
            }
        }
        Ok(Self::anonymous())
    }

    /// The credentials for a registry host.
    pub fn for_host(&self, host: &str) -> RegistryAuth {
        match self.by_host.get(host) {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            None => RegistryAuth::Anonymous,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auth_and_username_forms() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},
                "127.0.0.1:5000":{"username":"a","password":"b"}}}"#,
        )
        .unwrap();
        let c = Credentials::from_file(&p).unwrap();
        assert!(
            matches!(c.for_host("index.docker.io"), RegistryAuth::Basic(u, p) if u == "u" && p == "p")
        );
        assert!(matches!(c.for_host("127.0.0.1:5000"), RegistryAuth::Basic(u, _) if u == "a"));
        assert!(matches!(c.for_host("quay.io"), RegistryAuth::Anonymous));
    }

    #[test]
    fn bad_base64_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, r#"{"auths":{"h":{"auth":"***"}}}"#).unwrap();
        let e = Credentials::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("auths.h.auth"), "{e}");
    }
}
