//! The kubelet's `Localhost` seccomp profiles: one file per policy set, `<dir>/<set hash>.json` (by default
//! `/var/lib/kubelet/seccomp/kitfleet/<hash>.json`, which a pod names as `localhostProfile: kitfleet/<hash>.json`).
//! Written atomically (temporary file in the same directory, `fsync`, `rename`, `fsync` of the directory) before
//! the sandbox volume's publish succeeds, so the profile exists before the kubelet creates any container of the pod;
//! removed when no published volume uses it any more.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A profile-store failure, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A hash that cannot be a file name.
    #[error("set hash {0:?} is not 64 lowercase hex digits")]
    BadHash(String),
}

/// The profile directory.
#[derive(Debug, Clone)]
pub struct ProfileStore {
    dir: PathBuf,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ProfileError {
    let path = path.to_path_buf();
    move |source| ProfileError::Io { op, path, source }
}

fn valid_hash(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

impl ProfileStore {
    /// Profiles live in `dir` (created on first write, mode 0755: the kubelet and the runtime read them).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The profile file of a set.
    pub fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.json"))
    }

    /// Writes the profile of a set unless the same bytes are already there. Atomic: a reader sees the old file,
    /// no file, or the whole new one.
    pub fn write(&self, hash: &str, json: &str) -> Result<PathBuf, ProfileError> {
        if !valid_hash(hash) {
            return Err(ProfileError::BadHash(hash.to_string()));
        }
        let path = self.path(hash);
        if fs::read(&path).is_ok_and(|old| old == json.as_bytes()) {
            return Ok(path);
        }
        fs::create_dir_all(&self.dir).map_err(io_err("creating", &self.dir))?;
        let tmp = self
            .dir
            .join(format!(".{hash}.json.tmp-{}", std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)
                .map_err(io_err("creating", &tmp))?;
            f.write_all(json.as_bytes())
                .map_err(io_err("writing", &tmp))?;
            f.set_permissions(fs::Permissions::from_mode(0o644))
                .map_err(io_err("chmod", &tmp))?;
            f.sync_all().map_err(io_err("fsync", &tmp))?;
            fs::rename(&tmp, &path).map_err(io_err("renaming into", &path))?;
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("fsync", &self.dir))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| path)
    }

    /// Removes the profile of a set (fine if absent).
    pub fn remove(&self, hash: &str) -> Result<(), ProfileError> {
        if !valid_hash(hash) {
            return Err(ProfileError::BadHash(hash.to_string()));
        }
        let path = self.path(hash);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &path)(e)),
            _ => Ok(()),
        }
    }

    /// The hashes of the profiles present.
    pub fn list(&self) -> Result<BTreeSet<String>, ProfileError> {
        let entries = match fs::read_dir(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            r => r.map_err(io_err("reading", &self.dir))?,
        };
        Ok(entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let hash = name.strip_suffix(".json")?;
                valid_hash(hash).then(|| hash.to_string())
            })
            .collect())
    }

    /// Removes every profile (and leftover temporary file) whose hash is not in `in_use`. Returns the hashes removed.
    pub fn gc(&self, in_use: &BTreeSet<String>) -> Result<Vec<String>, ProfileError> {
        let mut removed = Vec::new();
        for hash in self.list()? {
            if !in_use.contains(&hash) {
                self.remove(&hash)?;
                removed.push(hash);
            }
        }
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.filter_map(|e| e.ok()) {
                if e.file_name().to_string_lossy().contains(".json.tmp-") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_lists_and_collects() {
        let t = tempfile::tempdir().unwrap();
        let store = ProfileStore::new(t.path().join("seccomp/kitfleet"));
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        assert!(store.list().unwrap().is_empty());
        let p = store.write(&a, "{\"x\":1}\n").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "{\"x\":1}\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        // Same bytes: not rewritten (same inode); new bytes: replaced by rename (new inode).
        use std::os::unix::fs::MetadataExt;
        let ino = fs::metadata(&p).unwrap().ino();
        store.write(&a, "{\"x\":1}\n").unwrap();
        assert_eq!(fs::metadata(&p).unwrap().ino(), ino);
        store.write(&a, "{\"x\":2}\n").unwrap();
        assert_ne!(fs::metadata(&p).unwrap().ino(), ino);
        store.write(&b, "{}").unwrap();
        fs::write(store.dir().join(".zz.json.tmp-1"), "x").unwrap();
        fs::write(store.dir().join("foreign.json"), "x").unwrap();
        assert_eq!(
            store.list().unwrap(),
            BTreeSet::from([a.clone(), b.clone()])
        );
        let removed = store.gc(&BTreeSet::from([b.clone()])).unwrap();
        assert_eq!(removed, vec![a.clone()]);
        assert!(!store.path(&a).exists());
        assert!(store.path(&b).exists());
        assert!(!store.dir().join(".zz.json.tmp-1").exists());
        assert!(store.dir().join("foreign.json").exists(), "not ours: kept");
        store.remove(&a).unwrap();
        assert!(matches!(
            store.write("../x", "{}"),
            Err(ProfileError::BadHash(_))
        ));
    }
}
