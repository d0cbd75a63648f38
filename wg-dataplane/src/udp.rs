//! The underlay UDP socket: large buffers, `recvmmsg` with UDP GRO, `sendmmsg` with UDP GSO (`UDP_SEGMENT`).

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::{Error, Result};

const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Largest UDP payload one GSO send may carry.
pub const MAX_GSO_BYTES: usize = 65_000;
/// Largest number of segments in one GSO send (kernel `UDP_MAX_SEGMENTS`).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Socket buffer size asked for (forced when the process may).
pub const SOCKET_BUFFER: usize = 16 << 20;

/// One datagram or GSO train to send: `len` bytes at `off` in the caller's buffer, cut in `seg`-byte
/// datagrams by the kernel (the last may be shorter).
#[derive(Debug, Clone, Copy)]
pub struct Outgoing {
    pub dst: SocketAddr,
    pub off: usize,
    pub len: usize,
    pub seg: usize,
}

/// One received buffer: a datagram, or several of `seg` bytes each coalesced by GRO.
#[derive(Debug, Clone, Copy)]
pub struct Incoming {
    pub src: SocketAddr,
    pub len: usize,
    pub seg: usize,
}

/// Dual-stack UDP socket (IPv4 peers as mapped addresses).
#[derive(Debug)]
pub struct Udp {
    fd: OwnedFd,
    gso: bool,
    gro: bool,
    recv: RecvScratch,
}

/// The `recvmmsg` headers, addresses and control buffers, allocated once and re-pointed at the
/// caller's buffers on every call, so a receive (whatever arrives: a flood of forged datagrams takes
/// one slot each) allocates nothing.
struct RecvScratch {
    names: Vec<libc::sockaddr_in6>,
    ctrl: Vec<[u64; CMSG_SPACE / 8]>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside `iovs` and `msgs` are rewritten right before every `recvmmsg` and
// never read otherwise; they do not tie the struct to a thread.
unsafe impl Send for RecvScratch {}

impl std::fmt::Debug for RecvScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecvScratch({} slots)", self.msgs.len())
    }
}

impl RecvScratch {
    fn new() -> Self {
        RecvScratch {
            names: Vec::new(),
            ctrl: Vec::new(),
            iovs: Vec::new(),
            msgs: Vec::new(),
        }
    }

    /// Points `n` headers at `bufs` (growing the tables only when `n` grows).
    fn prepare(&mut self, bufs: &mut [Vec<u8>]) {
        let n = bufs.len();
        if self.msgs.len() < n {
            // SAFETY: these C structs are plain old data; zero is valid for all of them.
            let (name, msg) = unsafe { (mem::zeroed(), mem::zeroed()) };
            self.names.resize(n, name);
            self.ctrl.resize(n, [0u64; CMSG_SPACE / 8]);
            self.iovs.resize(
                n,
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
            );
            self.msgs.resize(n, msg);
        }
        for (i, b) in bufs.iter_mut().enumerate() {
            self.iovs[i] = libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            };
            let h = &mut self.msgs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in6).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_in6>() as u32;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.ctrl[i].as_mut_ptr().cast();
            h.msg_controllen = CMSG_SPACE;
            h.msg_flags = 0;
            self.msgs[i].msg_len = 0;
        }
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_in6, libc::socklen_t) {
    let (ip, port, scope) = match addr {
        SocketAddr::V4(a) => (a.ip().to_ipv6_mapped(), a.port(), 0),
        SocketAddr::V6(a) => (*a.ip(), a.port(), a.scope_id()),
    };
    // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = port.to_be();
    sa.sin6_addr.s6_addr = ip.octets();
    sa.sin6_scope_id = scope;
    (sa, mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
}

fn from_sockaddr(sa: &libc::sockaddr_in6) -> SocketAddr {
    let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
    let port = u16::from_be(sa.sin6_port);
    match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
        None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, sa.sin6_scope_id)),
    }
}

/// Space for one `int`/`u16` control message.
const CMSG_SPACE: usize = 32;

impl Udp {
    /// Binds `[::]:port` (dual-stack), sets large buffers and enables GRO.
    pub fn bind(port: u16) -> Result<Self> {
        let bind_err = |source| Error::BindUdp { port, source };
        // SAFETY: plain socket(2); the fd is wrapped in an OwnedFd right away.
        let raw = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(bind_err(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt_int(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0).map_err(bind_err)?;
        let (sa, len) = to_sockaddr(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
        // SAFETY: `sa` is a valid sockaddr_in6 of `len` bytes.
        let rc = unsafe { libc::bind(raw, (&sa as *const libc::sockaddr_in6).cast(), len) };
        if rc < 0 {
            return Err(bind_err(io::Error::last_os_error()));
        }
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            if setsockopt_int(raw, libc::SOL_SOCKET, force, SOCKET_BUFFER as i32).is_err() {
                let _ = setsockopt_int(raw, libc::SOL_SOCKET, plain, SOCKET_BUFFER as i32);
            }
        }
        let gro = setsockopt_int(raw, libc::SOL_UDP, UDP_GRO, 1).is_ok();
        Ok(Udp {
            fd,
            gso: true,
            gro,
            recv: RecvScratch::new(),
        })
    }

    /// Raw fd for polling.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether GSO sends are still in use (they are switched off after the kernel refuses one).
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Whether GRO receives are on.
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Receives up to `bufs.len()` buffers without blocking; returns how many were filled.
    /// Allocates nothing: the headers are kept between calls.
    pub fn recv_batch(
        &mut self,
        bufs: &mut [Vec<u8>],
        out: &mut Vec<Incoming>,
    ) -> io::Result<usize> {
        out.clear();
        let n = bufs.len();
        let fd = self.fd();
        let scratch = &mut self.recv;
        scratch.prepare(bufs);
        // SAFETY: `prepare` pointed the first `n` headers at live buffers (names, iovs → bufs, ctrl)
        // sized as declared; none of them moves before the call returns.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                scratch.msgs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        for (i, m) in scratch.msgs.iter().take(rc as usize).enumerate() {
            let len = m.msg_len as usize;
            let mut seg = len;
            // SAFETY: the kernel filled msg_control; CMSG_* walk it within msg_controllen.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                        if v > 0 {
                            seg = v as usize;
                        }
                    }
                    c = libc::CMSG_NXTHDR(&m.msg_hdr, c);
                }
            }
            out.push(Incoming {
                src: from_sockaddr(&scratch.names[i]),
                len,
                seg,
            });
        }
        Ok(rc as usize)
    }

    /// Sends every item (blocking when the socket buffer is full: back-pressure instead of drops).
    pub fn send_batch(&mut self, buf: &[u8], items: &[Outgoing]) -> io::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        if !self.gso {
            return self.send_split(buf, items);
        }
        match self.send_mmsg(buf, items) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) => {
                tracing::warn!(error = %e, "UDP GSO refused; sending datagrams one by one");
                self.gso = false;
                self.send_split(buf, items)
            }
            Err(e) => Err(e),
        }
    }

    fn send_split(&self, buf: &[u8], items: &[Outgoing]) -> io::Result<()> {
        let mut single = Vec::new();
        for it in items {
            let mut off = it.off;
            let end = it.off + it.len;
            while off < end {
                let len = it.seg.min(end - off);
                single.push(Outgoing {
                    dst: it.dst,
                    off,
                    len,
                    seg: len,
                });
                off += len;
            }
        }
        for chunk in single.chunks(64) {
            self.send_mmsg(buf, chunk)?;
        }
        Ok(())
    }

    fn send_mmsg(&self, buf: &[u8], items: &[Outgoing]) -> io::Result<()> {
        let n = items.len();
        let mut names = Vec::with_capacity(n);
        let mut iovs = Vec::with_capacity(n);
        let mut ctrl = vec![[0u64; CMSG_SPACE / 8]; n];
        for it in items {
            names.push(to_sockaddr(it.dst));
            iovs.push(libc::iovec {
                iov_base: buf[it.off..].as_ptr() as *mut libc::c_void,
                iov_len: it.len,
            });
        }
        // SAFETY: plain old data; zero is valid.
        let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { mem::zeroed() }; n];
        for (i, it) in items.iter().enumerate() {
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut names[i].0 as *mut libc::sockaddr_in6).cast();
            h.msg_namelen = names[i].1;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            if it.len > it.seg {
                h.msg_control = ctrl[i].as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE is a pure size computation.
                h.msg_controllen =
                    unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
                // SAFETY: msg_control points at CMSG_SPACE zeroed bytes owned by `ctrl[i]`, enough for one u16 cmsg.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, it.seg as u16);
                }
            }
        }
        let mut sent = 0;
        while sent < n {
            // SAFETY: msgs[sent..] point at live names, iovecs (into `buf`) and control buffers.
            let rc = unsafe {
                libc::sendmmsg(self.fd(), msgs[sent..].as_mut_ptr(), (n - sent) as u32, 0)
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // Unreachable peers or transient ICMP errors must not stop the others.
                    Some(libc::ECONNREFUSED)
                    | Some(libc::EHOSTUNREACH)
                    | Some(libc::ENETUNREACH) => {
                        sent += 1;
                        continue;
                    }
                    _ => return Err(e),
                }
            }
            sent += rc as usize;
        }
        Ok(())
    }
}

/// The unspecified IPv4 address, for tests and defaults.
pub const ANY_V4: Ipv4Addr = Ipv4Addr::UNSPECIFIED;
