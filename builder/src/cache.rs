//! The content-addressed cache on disk, shared safely by concurrent builds.
//!
//! Layout under the cache root:
//! - `blobs/sha256/<hex>`: manifests, configs and layers as pulled (verified on write and read);
//! - `flat/<hex>.tar`: an image's layers flattened (whiteouts applied, hostile entries rejected),
//!   keyed by the platform manifest digest and the builder version;
//! - `members/<hex>.<ext>`: derived build products (compressed initrd members, kernels), keyed by
//!   the hash of everything that determines their bytes.
//!
//! Every write goes to a unique temporary file under `tmp/` and is renamed into place: a reader
//! sees either nothing or a complete file, and two builds writing the same key write the same
//! bytes, so the last rename wins harmlessly.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::digest::{hex_part, sha256};
use crate::error::{Error, Result};

/// A cache rooted at a directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Opens (creating) the cache at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for sub in ["blobs/sha256", "flat", "members", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        Ok(Cache { root })
    }

    /// The default cache directory: `$KITFLEET_CACHE`, `$XDG_CACHE_HOME/kitfleet`, `~/.cache/kitfleet`.
    pub fn default_dir() -> PathBuf {
        if let Some(p) = std::env::var_os("KITFLEET_CACHE") {
            return p.into();
        }
        if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
            return Path::new(&p).join("kitfleet");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
        Path::new(&home).join(".cache/kitfleet")
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        hex_part(digest).map(|h| self.root.join("blobs/sha256").join(h))
    }

    /// Reads a blob, verifying its digest; a corrupt entry is removed and reported as absent.
    pub fn get_blob(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        let Some(path) = self.blob_path(digest) else {
            return Ok(None);
        };
        match fs::read(&path) {
            Ok(data) if sha256(&data) == digest => Ok(Some(data)),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "corrupt cache blob removed");
                let _ = fs::remove_file(&path);
                Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Stores a blob whose content was verified against `digest` by the caller.
    pub fn put_blob(&self, digest: &str, data: &[u8]) -> Result<()> {
        let Some(path) = self.blob_path(digest) else {
            return Ok(());
        };
        if path.exists() {
            return Ok(());
        }
        self.write_atomic(&path, data)
    }

    /// The cached blob's path, its digest verified by streaming the file; a corrupt entry is
    /// removed and reported as absent.
    pub fn blob_file(&self, digest: &str) -> Result<Option<PathBuf>> {
        let Some(path) = self.blob_path(digest) else {
            return Ok(None);
        };
        let mut f = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        let mut h = sha2::Sha256::default();
        std::io::copy(&mut f, &mut h).map_err(|e| Error::io(&path, e))?;
        if format!("sha256:{}", hex::encode(sha2::Digest::finalize(h))) == digest {
            Ok(Some(path))
        } else {
            tracing::warn!(path = %path.display(), "corrupt cache blob removed");
            let _ = fs::remove_file(&path);
            Ok(None)
        }
    }

    /// A temporary file inside the cache (same filesystem as the blobs, for an atomic rename).
    pub fn temp_file(&self) -> Result<tempfile::NamedTempFile> {
        let tmpdir = self.root.join("tmp");
        tempfile::NamedTempFile::new_in(&tmpdir).map_err(|e| Error::io(&tmpdir, e))
    }

    /// Moves a verified download into place as the blob `digest`; returns its path.
    pub fn persist_blob(&self, tmp: tempfile::NamedTempFile, digest: &str) -> Result<PathBuf> {
        let path = self.blob_path(digest).ok_or_else(|| Error::Malformed {
            reference: digest.to_string(),
            what: "descriptor",
            reason: "unsupported digest".into(),
        })?;
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        Ok(path)
    }

    /// Path of a derived member (`members/<key-hex>.<ext>`).
    pub fn member_path(&self, key: &str, ext: &str) -> PathBuf {
        let hex = key.strip_prefix("sha256:").unwrap_or(key);
        self.root.join("members").join(format!("{hex}.{ext}"))
    }

    /// Path of a flattened image (`flat/<key-hex>.tar`).
    pub fn flat_path(&self, key: &str) -> PathBuf {
        let hex = key.strip_prefix("sha256:").unwrap_or(key);
        self.root.join("flat").join(format!("{hex}.tar"))
    }

    /// Reads a derived file, `None` when absent.
    pub fn get_file(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        match fs::read(path) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Writes `data` to `path` (inside the cache) atomically.
    pub fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<()> {
        let tmpdir = self.root.join("tmp");
        let mut tmp =
            tempfile::NamedTempFile::new_in(&tmpdir).map_err(|e| Error::io(&tmpdir, e))?;
        tmp.write_all(data).map_err(|e| Error::io(tmp.path(), e))?;
        tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path()).unwrap();
        let d = sha256(b"hello");
        assert!(c.get_blob(&d).unwrap().is_none());
        c.put_blob(&d, b"hello").unwrap();
        assert_eq!(c.get_blob(&d).unwrap().as_deref(), Some(&b"hello"[..]));
        std::fs::write(c.blob_path(&d).unwrap(), b"evil").unwrap();
        assert!(c.get_blob(&d).unwrap().is_none());
        assert!(!c.blob_path(&d).unwrap().exists());
    }

    #[test]
    fn concurrent_writers_of_one_key_leave_one_complete_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::open(dir.path()).unwrap();
        let data = vec![7u8; 1 << 20];
        let p = c.member_path("sha256:abc", "gz");
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| c.write_atomic(&p, &data).unwrap());
            }
        });
        assert_eq!(std::fs::read(&p).unwrap(), data);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
