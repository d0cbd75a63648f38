//! Installing a filter on the calling thread.

use super::bpf::SockFilter;
use std::io;

/// `SECCOMP_SET_MODE_FILTER`.
const SET_MODE_FILTER: libc::c_uint = 1;
/// `SECCOMP_FILTER_FLAG_LOG`: log every action but `ALLOW`.
const FILTER_FLAG_LOG: libc::c_uint = 1 << 1;

/// Installs `prog` with `seccomp(2)`. `no_new_privs` must be set (or CAP_SYS_ADMIN held).
pub fn install(prog: &[SockFilter], log: bool) -> io::Result<()> {
    let len = u16::try_from(prog.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    let flags = if log { FILTER_FLAG_LOG } else { 0 };
    // SAFETY: `SockFilter` is `repr(C)` with the layout of `struct sock_filter`; `fprog` points at
    // `prog`, which outlives the call (the kernel copies the program).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
