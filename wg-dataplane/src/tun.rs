//! The TUN device: created (or re-attached) persistent, with `IFF_VNET_HDR` and TCP segmentation offloads,
//! plus the few interface ioctls the data plane needs (MTU, up).

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{Error, Result};

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_UP: libc::c_short = 0x1;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

/// Size of `struct virtio_net_hdr` (no `num_buffers`), the header in front of every packet on the fd.
pub const VNET_HDR_LEN: usize = 10;

/// `struct ifreq` with the union member we use (flags, or an int for MTU).
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
            return Err(Error::InterfaceName {
                name: name.to_string(),
            });
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        for (d, s) in req.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        Ok(req)
    }

    fn set_short(&mut self, v: libc::c_short) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }

    fn short(&self) -> libc::c_short {
        libc::c_short::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_int(&mut self, v: libc::c_int) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }

    fn int(&self) -> libc::c_int {
        libc::c_int::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }
}

/// An open TUN queue in vnet-header mode.
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
}

fn ioctl_ptr<T>(fd: RawFd, req: libc::c_ulong, arg: *mut T, what: &'static str) -> Result<()> {
    // SAFETY: every caller passes a request number whose argument is `T` (an ifreq or an int) living on
    // the caller's stack for the duration of the call.
    let rc = unsafe { libc::ioctl(fd, req, arg) };
    if rc < 0 {
        return Err(Error::Ioctl {
            what,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn ioctl_val(fd: RawFd, req: libc::c_ulong, arg: libc::c_ulong, what: &'static str) -> Result<()> {
    // SAFETY: these requests (TUNSETPERSIST, TUNSETOFFLOAD) take their argument by value.
    let rc = unsafe { libc::ioctl(fd, req, arg) };
    if rc < 0 {
        return Err(Error::Ioctl {
            what,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl Tun {
    /// Creates the TUN interface `name`, or attaches to it when a persistent one already exists
    /// (agent restart: routes and addresses on it survive). Sets it persistent, enables vnet headers
    /// and TSO/checksum offloads, and makes the fd non-blocking.
    pub fn open_persistent(name: &str) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| Error::OpenTun { source })?;
        let fd = file.as_raw_fd();
        let mut req = IfReq::new(name)?;
        req.set_short(IFF_TUN | IFF_NO_PI | IFF_VNET_HDR);
        ioctl_ptr(fd, TUNSETIFF, &mut req, "TUNSETIFF")?;
        // SAFETY: TUNSETIFF wrote a NUL-terminated name into the fixed-size buffer.
        let actual = unsafe { CStr::from_ptr(req.name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let mut hdr_len: libc::c_int = VNET_HDR_LEN as libc::c_int;
        ioctl_ptr(fd, TUNSETVNETHDRSZ, &mut hdr_len, "TUNSETVNETHDRSZ")?;
        ioctl_val(
            fd,
            TUNSETOFFLOAD,
            (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) as libc::c_ulong,
            "TUNSETOFFLOAD",
        )?;
        ioctl_val(fd, TUNSETPERSIST, 1, "TUNSETPERSIST")?;
        Ok(Tun { file, name: actual })
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Raw fd for polling.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Reads one packet (vnet header included); `Ok(None)` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: `buf` is a valid writable slice of `buf.len()` bytes.
        let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(n as usize))
    }

    /// Writes one packet (vnet header included).
    pub fn write(&self, buf: &[u8]) -> io::Result<()> {
        // SAFETY: `buf` is a valid readable slice of `buf.len()` bytes.
        let n = unsafe { libc::write(self.fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Clears the persist flag so the interface disappears when the fd closes.
    pub fn remove_on_close(&self) -> Result<()> {
        ioctl_val(self.fd(), TUNSETPERSIST, 0, "TUNSETPERSIST(0)")
    }
}

fn ctl_socket() -> Result<File> {
    // SAFETY: plain socket(2) call; the returned fd is owned by the File below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::Ioctl {
            what: "socket",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Sets the MTU of interface `name`.
pub fn set_mtu(name: &str, mtu: u32) -> Result<()> {
    let s = ctl_socket()?;
    let mut req = IfReq::new(name)?;
    req.set_int(mtu as libc::c_int);
    ioctl_ptr(s.as_raw_fd(), libc::SIOCSIFMTU, &mut req, "SIOCSIFMTU")
}

/// Reads the MTU of interface `name`.
pub fn mtu(name: &str) -> Result<u32> {
    let s = ctl_socket()?;
    let mut req = IfReq::new(name)?;
    ioctl_ptr(s.as_raw_fd(), libc::SIOCGIFMTU, &mut req, "SIOCGIFMTU")?;
    Ok(req.int() as u32)
}

/// Brings interface `name` up.
pub fn set_up(name: &str) -> Result<()> {
    let s = ctl_socket()?;
    let mut req = IfReq::new(name)?;
    ioctl_ptr(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req, "SIOCGIFFLAGS")?;
    let flags = req.short() | IFF_UP;
    req.set_short(flags);
    ioctl_ptr(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req, "SIOCSIFFLAGS")
}
