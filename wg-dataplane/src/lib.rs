//! kitfleet-dataplane: the userspace WireGuard data plane the node agent runs (design and limits in
//! `NOTES.md` beside this crate's Cargo.toml): boringtun's pure `noise::Tunn` driven by our own I/O loop.
//!
//! One thread polls a persistent TUN (virtio-net header, TSO) and one UDP socket (GRO, GSO, 16 MiB
//! buffers). Transmit: one read returns a TCP super-packet of up to 64 KiB; it is cut into segments in
//! place, each is encrypted, and the whole train leaves in one `sendmmsg` with `UDP_SEGMENT`. Receive:
//! `recvmmsg` returns GRO-coalesced trains; each datagram is decrypted and in-order TCP segments are
//! merged back into one GSO packet written to the TUN. Peers are changed through [`DataPlane`] commands
//! while the loop runs; the TUN stays (TUNSETPERSIST) when the process exits, so a restarted agent
//! re-attaches to it with its addresses and routes intact.

mod event_loop;
use ipnet::IpNet;

pub mod handshake;
pub mod keys;
pub mod offload;
mod peers;
pub mod tun;
pub mod udp;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use keys::{PrivateKey, PublicKey};

/// Errors of the data plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface name {name:?}: must be 1-15 bytes without '/', space or NUL")]
    InterfaceName { name: String },
    #[error("opening /dev/net/tun: {source}")]
    OpenTun { source: io::Error },
    #[error("{what}: {source}")]
    Ioctl {
        what: &'static str,
        source: io::Error,
    },
    #[error("binding UDP port {port}: {source}")]
    BindUdp { port: u16, source: io::Error },
    #[error("{what}: {reason}")]
    Key { what: &'static str, reason: String },
    #[error("reading random bytes: {source}")]
    Random { source: io::Error },
    #[error("peer {peer}: {reason}")]
    Peer { peer: PublicKey, reason: String },
    #[error("creating the wake-up eventfd: {source}")]
    EventFd { source: io::Error },
    #[error("the data-plane loop has stopped")]
    Stopped,
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the data plane needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// TUN interface name (created, or re-attached if it exists).
    pub interface: String,
    /// UDP listen port (51820 by default in the agent).
    pub listen_port: u16,
    /// This node's private key.
    pub private_key: PrivateKey,
    /// MTU set on the TUN interface.
    pub mtu: u32,
}

/// One WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    /// Inner source/destination prefixes routed to and accepted from this peer.
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
}

/// Per-peer counters, as `wg show` would print them.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStats {
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<Duration>,
    pub tx_bytes: usize,
    pub rx_bytes: usize,
}

/// Counters of the loop itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoopStats {
    pub tun_reads: u64,
    pub udp_sends: u64,
    pub udp_recv_buffers: u64,
    pub udp_datagrams_in: u64,
    pub tun_writes: u64,
    pub dropped_no_peer: u64,
    pub dropped_bad_source: u64,
    /// Datagrams that are no WireGuard message (wrong type or length).
    pub dropped_invalid: u64,
    /// Handshake messages whose mac1 (or, under load, mac2 source) did not verify.
    pub dropped_bad_mac: u64,
    /// Cookie replies sent instead of processing a handshake (under load, no valid mac2).
    pub cookie_replies: u64,
    /// Handshake messages that needed a cookie reply when their source had been sent its share
    /// (`handshake::COOKIE_REPLIES_PER_SOURCE` per second): dropped, nothing sent.
    pub dropped_cookie_rate: u64,
    /// Handshake messages that passed the mac checks when their source had spent its share of the
    /// handshake budget (`handshake::HANDSHAKES_PER_SOURCE` per second).
    pub dropped_source_budget: u64,
    /// Handshake messages dropped because the per-second handshake budget was spent.
    pub dropped_handshake_budget: u64,
    /// Handshake messages admitted to Diffie-Hellman.
    pub handshakes: u64,
    pub gso: bool,
    pub gro: bool,
}

/// A snapshot of the running data plane.
#[derive(Debug, Clone)]
pub struct Stats {
    pub interface: String,
    pub public_key: PublicKey,
    pub listen_port: u16,
    pub peers: Vec<PeerStats>,
    pub counters: LoopStats,
}

enum Command {
    SetPeers(Vec<PeerConfig>, mpsc::Sender<Result<()>>),
    SetPrivateKey(PrivateKey, mpsc::Sender<Result<()>>),
    Stats(mpsc::Sender<Stats>),
    Stop,
}

/// Handle on the running data-plane thread.
#[derive(Debug)]
pub struct DataPlane {
    tx: mpsc::Sender<Command>,
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
    interface: String,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::SetPeers(..) => "SetPeers",
            Command::SetPrivateKey(..) => "SetPrivateKey",
            Command::Stats(_) => "Stats",
            Command::Stop => "Stop",
        })
    }
}

impl DataPlane {
    /// Opens (or re-attaches) the TUN, binds the socket and starts the loop thread.
    pub fn start(config: Config) -> Result<Self> {
        let tun = tun::Tun::open_persistent(&config.interface)?;
        tun::set_mtu(tun.name(), config.mtu)?;
        tun::set_up(tun.name())?;
        let udp = udp::Udp::bind(config.listen_port)?;
        // SAFETY: plain eventfd(2); the fd is wrapped in an OwnedFd right away.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(Error::EventFd {
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let wake = unsafe { OwnedFd::from_raw_fd(raw) };
        let wake_loop = wake
            .try_clone()
            .map_err(|source| Error::EventFd { source })?;
        let (tx, rx) = mpsc::channel();
        let interface = tun.name().to_string();
        let mut lp = event_loop::Loop::new(tun, udp, config, rx, wake_loop);
        let thread = std::thread::Builder::new()
            .name(format!("wg-{interface}"))
            .spawn(move || lp.run())
            .map_err(|source| Error::EventFd { source })?;
        Ok(DataPlane {
            tx,
            wake,
            thread: Some(thread),
            interface,
        })
    }

    /// The TUN interface name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    fn send(&self, cmd: Command) -> Result<()> {
        self.tx.send(cmd).map_err(|_| Error::Stopped)?;
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        Ok(())
    }

    /// Replaces the peer set. Peers whose public key stays keep their sessions; endpoint and allowed-IP
    /// changes apply in place; new keys get fresh tunnels; missing ones are dropped.
    pub fn set_peers(&self, peers: Vec<PeerConfig>) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::SetPeers(peers, tx))?;
        rx.recv().map_err(|_| Error::Stopped)?
    }

    /// Rotates this node's private key: every session is dropped and re-handshaken with the new key.
    pub fn set_private_key(&self, key: PrivateKey) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::SetPrivateKey(key, tx))?;
        rx.recv().map_err(|_| Error::Stopped)?
    }

    /// A snapshot of peers and counters.
    pub fn stats(&self) -> Result<Stats> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Stats(tx))?;
        rx.recv().map_err(|_| Error::Stopped)
    }

    /// Whether the loop thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the loop. The TUN interface stays (persistent) for the next start to re-attach.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let _ = self.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Deletes a persistent TUN interface left by an earlier run (no-op when it does not exist as a TUN).
pub fn delete_interface(name: &str) -> Result<()> {
    let t = tun::Tun::open_persistent(name)?;
    t.remove_on_close()
}
