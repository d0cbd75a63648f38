//! The node's private key file: created on first start with mode 0600, replaced atomically on rotation.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kitfleet_dataplane::PrivateKey;

/// Errors reading or writing the key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.into(),
        source,
    }
}

/// Reads the key at `path`, or generates one there when the file does not exist. A key file readable
/// by group or others is tightened to 0600 (and logged).
pub fn load_or_create(path: &Path) -> Result<PrivateKey, KeyFileError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let mode = fs::metadata(path).map_err(io(path))?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "key file was readable by others; setting 0600");
                fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io(path))?;
            }
            text.parse().map_err(|e| KeyFileError::Invalid {
                path: path.into(),
                reason: format!("{e}"),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = PrivateKey::generate().map_err(|e| KeyFileError::Invalid {
                path: path.into(),
                reason: e.to_string(),
            })?;
            write(path, &key)?;
            tracing::info!(path = %path.display(), public_key = %key.public_key(), "generated a new WireGuard key");
            Ok(key)
        }
        Err(e) => Err(io(path)(e)),
    }
}

/// Writes `key` to `path` atomically with mode 0600 (parent directories are created with 0700).
pub fn write(path: &Path, key: &PrivateKey) -> Result<(), KeyFileError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("key");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(key.to_base64().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(path)(e)
    })
}

/// Replaces the key at `path` with a fresh one and returns it.
pub fn rotate(path: &Path) -> Result<PrivateKey, KeyFileError> {
    let key = PrivateKey::generate().map_err(|e| KeyFileError::Invalid {
        path: path.into(),
        reason: e.to_string(),
    })?;
    write(path, &key)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_0600_key_then_reuses_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/wg.key");
        let k1 = load_or_create(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(p.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let k2 = load_or_create(&p).unwrap();
        assert_eq!(k1.public_key(), k2.public_key());
        let k3 = rotate(&p).unwrap();
        assert_ne!(k3.public_key(), k1.public_key());
        assert_eq!(load_or_create(&p).unwrap().public_key(), k3.public_key());
        assert_eq!(
            fs::read_dir(p.parent().unwrap()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn loose_permissions_are_tightened_and_garbage_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("wg.key");
        let k = PrivateKey::generate().unwrap();
        fs::write(&p, k.to_base64()).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create(&p).unwrap().public_key(), k.public_key());
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::write(&p, "not a key").unwrap();
        let e = load_or_create(&p).unwrap_err().to_string();
        assert!(e.contains("wg.key") && e.contains("private key"), "{e}");
    }
}
