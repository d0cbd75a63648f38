//! Entering a network namespace: only ever in a dedicated thread, which ends afterwards, so the
//! main thread never changes namespace.
#![forbid(unsafe_code)]

use std::fs::File;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

/// Opens a network namespace file (e.g. `/run/netns/x` or `/proc/PID/ns/net`).
pub fn open(path: &Path) -> std::io::Result<File> {
    File::open(path)
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
