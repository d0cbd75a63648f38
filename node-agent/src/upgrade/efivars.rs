//! EFI variables through efivarfs (`/sys/firmware/efi/efivars`), or a plain directory laid out the same way
//! (tests): one file `<Name>-<vendor GUID>` per variable, holding the 4-byte little-endian attributes, then
//! the data. A variable is written in one `write(2)` (efivarfs requires it); efivarfs marks most variables
//! immutable, so that flag is cleared (`FS_IOC_SETFLAGS`) before a write or a delete.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Result, UpgradeError, efi, io};

/// Where the kernel mounts efivarfs.
pub const DEFAULT_EFIVARS: &str = "/sys/firmware/efi/efivars";
/// `EFI_VARIABLE_NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS`.
pub const ATTR_NV_BS_RT: u32 = 0x7;
const EFIVARFS_MAGIC: i64 = 0xde5e_81e4;
const FS_IMMUTABLE_FL: libc::c_long = 0x10;

/// A directory of EFI variables (global-variable GUID).
#[derive(Debug, Clone)]
pub struct EfiVars {
    dir: PathBuf,
}

impl EfiVars {
    /// Variables in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EfiVars { dir: dir.into() }
    }

    /// The file of variable `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir
            .join(format!("{name}-{}", efi::GLOBAL_VARIABLE_GUID))
    }

    /// The data of `name` (attributes stripped), `None` when it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let p = self.path(name);
        match std::fs::read(&p) {
            Ok(b) if b.len() < 4 => Err(UpgradeError::BadVariable {
                name: name.into(),
                reason: format!("{} bytes has no attributes word", b.len()),
            }),
            Ok(b) => Ok(Some(b[4..].to_vec())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(p)(e)),
        }
    }

    /// Writes `name` = `data` with attributes NV|BS|RT.
    pub fn write(&self, name: &str, data: &[u8]) -> Result<()> {
        let p = self.path(name);
        clear_immutable(&p)?;
        let mut buf = ATTR_NV_BS_RT.to_le_bytes().to_vec();
        buf.extend_from_slice(data);
        let efivarfs = is_efivarfs(&self.dir);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(!efivarfs)
            .mode(0o644)
            .open(&p)
            .map_err(io(&p))?;
        // One write: efivarfs sets the variable from exactly the bytes of a single write(2).
        let n = f.write(&buf).map_err(io(&p))?;
        if n != buf.len() {
            return Err(io(&p)(std::io::Error::other(format!(
                "short write of {n} of {} bytes",
                buf.len()
            ))));
        }
        if !efivarfs {
            f.sync_all().map_err(io(&p))?;
        }
        tracing::info!(variable = name, bytes = data.len(), "EFI variable written");
        Ok(())
    }

    /// Deletes `name`; absent is fine.
    pub fn delete(&self, name: &str) -> Result<()> {
        let p = self.path(name);
        clear_immutable(&p)?;
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(p)(e)),
            _ => Ok(()),
        }
    }

    /// The numbers of every `Boot####` variable, sorted.
    pub fn boot_numbers(&self) -> Result<Vec<u16>> {
        let suffix = format!("-{}", efi::GLOBAL_VARIABLE_GUID);
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let e = e.map_err(io(&self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_suffix(&suffix).and_then(efi::parse_boot_name) {
                v.push(n);
            }
        }
        v.sort_unstable();
        Ok(v)
    }
}

fn is_efivarfs(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated path and `st` a properly sized, writable statfs buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; statfs only writes into `st`.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == EFIVARFS_MAGIC
}

/// Clears `FS_IMMUTABLE_FL` on `path` if it exists and the file system has flags (a temp dir on tmpfs has none).
fn clear_immutable(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(path)(e)),
    };
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long into `flags`, which lives for the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL) => Ok(()),
            _ => Err(io(path)(e)),
        };
    }
    if flags & FS_IMMUTABLE_FL == 0 {
        return Ok(());
    }
    flags &= !FS_IMMUTABLE_FL;
    // SAFETY: FS_IOC_SETFLAGS reads one long from `flags`, which lives for the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) };
    if rc != 0 {
        return Err(io(path)(std::io::Error::last_os_error()));
    }
    Ok(())
}
