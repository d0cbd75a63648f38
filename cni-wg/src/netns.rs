//! Entering a network namespace: only ever in a dedicated thread, which ends afterwards, so the
//! main thread never changes namespace.
#![forbid(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{OFlag, open as open_at};
use nix::sched::{CloneFlags, setns};
use nix::sys::stat::{Mode, SFlag, fstat};
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};

/// Why a namespace file was refused.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// It cannot be opened (e.g. it does not exist).
    #[error("{path}: {source}")]
    Open {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// It is not a namespace file (a FIFO, a device, a plain file…).
    #[error("{path} is {what}, not a network namespace file")]
    NotNamespace {
        /// The path.
        path: String,
        /// What it is instead.
        what: &'static str,
    },
}

/// Opens a network namespace file (e.g. `/run/netns/x` or `/proc/PID/ns/net`). The path is
/// first opened with `O_PATH` (which never blocks and has no side effects, unlike opening a FIFO
/// or a device for reading) and checked with `fstat`/`fstatfs`: only a regular file on nsfs is
/// then opened for real, through `/proc/self/fd`, so the checked file is the one opened.
pub fn open(path: &Path) -> Result<File, NetnsError> {
    let shown = path.display().to_string();
    let errno = |e: nix::errno::Errno| NetnsError::Open {
        path: shown.clone(),
        source: e.into(),
    };
    let fd: OwnedFd =
        open_at(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()).map_err(errno)?;
    let st = fstat(&fd).map_err(errno)?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    let what = match kind {
        SFlag::S_IFREG => None,
        SFlag::S_IFIFO => Some("a FIFO"),
        SFlag::S_IFCHR => Some("a character device"),
        SFlag::S_IFBLK => Some("a block device"),
        SFlag::S_IFSOCK => Some("a socket"),
        SFlag::S_IFDIR => Some("a directory"),
        _ => Some("not a regular file"),
    };
    if let Some(what) = what {
        return Err(NetnsError::NotNamespace { path: shown, what });
    }
    if fstatfs(&fd).map_err(errno)?.filesystem_type() != NSFS_MAGIC {
        return Err(NetnsError::NotNamespace {
            path: shown,
            what: "a file outside nsfs",
        });
    }
    File::open(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|source| NetnsError::Open {
        path: shown,
        source,
    })
}

/// Runs `f` in a new thread that first joins the network namespace `ns`. Sockets created by
/// `f` stay bound to that namespace after the thread has ended.
pub fn run_in<T: Send + 'static>(
    ns: &File,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let ns = ns.try_clone()?;
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || -> std::io::Result<T> {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            Ok(f())
        })?
        .join()
        .map_err(|_| std::io::Error::other("thread in the network namespace panicked"))?
}
