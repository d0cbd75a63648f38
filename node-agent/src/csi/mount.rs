//! The mount syscalls publish needs: a read-only bind mount (bind, then remount read-only: the kernel ignores
//! `MS_RDONLY` on the first bind call), unmount, and "is this path a mount point".

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bind-mounts `src` at `target` read-only, `nosuid`, `nodev` (executables stay executable). On a failed remount
/// the bind is undone, so nothing stays mounted.
pub fn bind_read_only(src: &Path, target: &Path) -> io::Result<()> {
    let (s, t) = (cpath(src)?, cpath(target)?);
    // SAFETY: both pointers are valid NUL-terminated strings for the call; fstype and data may be NULL for a bind.
    check(unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })?;
    let flags =
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: as above; a remount takes the target only.
    let remount = check(unsafe {
        libc::mount(
            std::ptr::null(),
            t.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    });
    if let Err(e) = remount {
        let _ = unmount(target);
        return Err(e);
    }
    Ok(())
}

/// Unmounts `target` (lazily if it is busy).
pub fn unmount(target: &Path) -> io::Result<()> {
    let t = cpath(target)?;
    // SAFETY: valid NUL-terminated path.
    match check(unsafe { libc::umount2(t.as_ptr(), libc::UMOUNT_NOFOLLOW) }) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            // SAFETY: as above.
            check(unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) })
        }
        r => r,
    }
}

const STATX_ATTR_MOUNT_ROOT: u64 = 0x2000;

/// Whether `path` is the root of a mount (`statx`'s `STATX_ATTR_MOUNT_ROOT`, which also sees bind mounts
/// within one filesystem). A missing path is not a mount point.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let p = cpath(path)?;
    // SAFETY: an all-zero statx is a valid value of this plain C struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and a writable statx buffer that outlives the call.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            p.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS,
            &mut stx,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::NotFound {
            Ok(false)
        } else {
            Err(e)
        };
    }
    if stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel does not report STATX_ATTR_MOUNT_ROOT (Linux < 5.8)",
        ));
    }
    Ok(stx.stx_attributes & STATX_ATTR_MOUNT_ROOT != 0)
}
