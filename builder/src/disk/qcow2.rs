//! `qcow2-efi`: the raw disk converted by `qemu-img convert`.
//!
//! qcow2 headers carry no timestamps and `qemu-img convert` writes clusters in order (no
//! `-W`), so the output is a function of the raw disk and the qemu-img version. Every
//! creation option that affects the bytes is given explicitly, so a change of qemu's
//! defaults does not change the output.

use std::path::Path;
use std::process::Command;

use super::FileDigest;
use super::error::{Error, Result};

const CREATE_OPTIONS: &str =
    "compat=1.1,cluster_size=65536,lazy_refcounts=off,refcount_bits=16,preallocation=off";

/// Converts `raw` to qcow2 at `out` (through a temporary file renamed into place).
pub(crate) fn convert(qemu_img: &Path, raw: &Path, out: &Path) -> Result<FileDigest> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".kitfleet-qcow2-")
        .tempfile_in(dir)
        .map_err(Error::io(dir))?;
    let output = Command::new(qemu_img)
        .args([
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            CREATE_OPTIONS,
        ])
        .arg(raw)
        .arg(tmp.path())
        .output()
        .map_err(|e| Error::QemuImg {
            program: qemu_img.to_path_buf(),
            reason: format!("cannot run it: {e}"),
        })?;
    if !output.status.success() {
        return Err(Error::QemuImg {
            program: qemu_img.to_path_buf(),
            reason: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    tmp.as_file()
        .set_permissions(super::output_permissions())
        .map_err(Error::io(out))?;
    tmp.persist(out).map_err(|e| Error::Io {
        path: out.to_path_buf(),
        source: e.error,
    })?;
    super::file_digest(out)
}
