//! The single-threaded I/O loop: poll(TUN, UDP, wake-up eventfd), batch both directions, tick timers.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::{self, TryRecvError};
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;

use super::handshake::{self, Budget, Kind, Outcome, SourceBuckets};
use super::offload::{self, Coalescer, PacketSink, VnetHdr};
use super::peers::{Peer, Peers};
use super::tun::{Tun, VNET_HDR_LEN};
use super::udp::{Incoming, MAX_GSO_BYTES, MAX_GSO_SEGMENTS, Outgoing, Udp};
use super::{Command, Config, LoopStats, PeerStats, PrivateKey, PublicKey, Stats};

const TIMER_TICK: Duration = Duration::from_millis(100);
/// Receive buffers per `recvmmsg`: a flood of single forged datagrams takes one buffer each, so a
/// larger batch keeps the syscalls per data byte down when it interleaves with data trains.
const RECV_BATCH: usize = 32;
const RECV_BUF: usize = 65_536;
const SEND_BUF: usize = 512 * 1024;
/// Room one TUN packet may need once encrypted: 64 KiB plus per-segment headers and tags.
const SEND_HEADROOM: usize = 96 * 1024;
const TUN_BURST: usize = 32;
/// `recvmmsg` calls per wake-up before the TUN gets its turn (`UDP_BURST × RECV_BATCH` buffers).
const UDP_BURST: usize = 2;

pub(super) struct Loop {
    tun: Tun,
    udp: Udp,
    private: PrivateKey,
    /// `private`'s public key, computed once (an X25519 operation) per key.
    public: x25519::PublicKey,
    /// mac1/cookie checks and the under-load state, shared by every tunnel.
    limiter: Arc<RateLimiter>,
    /// Handshake messages that may still reach Diffie-Hellman this second.
    budget: Budget,
    /// Each source address's share of `budget`.
    handshake_sources: SourceBuckets,
    /// Cookie replies each source address may still get.
    cookie_sources: SourceBuckets,
    /// Start of the loop's millisecond clock, and its reading at this wake-up.
    started: Instant,
    now_ms: u64,
    listen_port: u16,
    rx: mpsc::Receiver<Command>,
    wake: OwnedFd,
    peers: Peers,
    tun_buf: Vec<u8>,
    tx: TxBatch,
    recv_bufs: Vec<Vec<u8>>,
    incoming: Vec<Incoming>,
    plain: Vec<u8>,
    coalescer: Coalescer,
    counters: LoopStats,
}

/// Encrypted datagrams waiting to be sent, grouped into GSO trains.
struct TxBatch {
    buf: Vec<u8>,
    pos: usize,
    items: Vec<Outgoing>,
    open: bool,
}

impl TxBatch {
    /// Records a datagram just written at `buf[pos..pos+len]`.
    fn commit(&mut self, dst: SocketAddr, len: usize) {
        let off = self.pos;
        self.pos += len;
        if self.open
            && let Some(last) = self.items.last_mut()
            && last.dst == dst
            && last.off + last.len == off
            && len <= last.seg
            && last.len + len <= MAX_GSO_BYTES
            && last.len / last.seg < MAX_GSO_SEGMENTS
        {
            last.len += len;
            self.open = len == last.seg;
            return;
        }
        self.items.push(Outgoing {
            dst,
            off,
            len,
            seg: len,
        });
        self.open = true;
    }
}

struct TunSink<'a> {
    tun: &'a Tun,
    writes: &'a mut u64,
}

impl PacketSink for TunSink<'_> {
    fn write_packet(&mut self, buf: &[u8]) {
        *self.writes += 1;
        if let Err(e) = self.tun.write(buf) {
            tracing::debug!(error = %e, "TUN write failed");
        }
    }
}

fn limiter_for(public: &x25519::PublicKey) -> Arc<RateLimiter> {
    Arc::new(RateLimiter::new(public, handshake::UNDER_LOAD))
}

fn random_seed() -> u32 {
    // The first session index (on the wire in every datagram). A failure (no getrandom(2)) only makes it
    // predictable, which WireGuard does not rely on.
    getrandom::u32().unwrap_or(0x9e37_79b9)
}

impl Loop {
    pub fn new(
        tun: Tun,
        udp: Udp,
        cfg: Config,
        rx: mpsc::Receiver<Command>,
        wake: OwnedFd,
    ) -> Self {
        let public = x25519::PublicKey::from(cfg.private_key.public_key().0);
        Loop {
            tun,
            udp,
            private: cfg.private_key,
            public,
            limiter: limiter_for(&public),
            budget: Budget::new(handshake::HANDSHAKE_BUDGET),
            handshake_sources: SourceBuckets::new(handshake::HANDSHAKES_PER_SOURCE),
            cookie_sources: SourceBuckets::new(handshake::COOKIE_REPLIES_PER_SOURCE),
            started: Instant::now(),
            now_ms: 0,
            listen_port: cfg.listen_port,
            rx,
            wake,
            peers: Peers::new(random_seed()),
            tun_buf: vec![0; VNET_HDR_LEN + 65_536],
            tx: TxBatch {
                buf: vec![0; SEND_BUF],
                pos: 0,
                items: Vec::new(),
                open: false,
            },
            recv_bufs: (0..RECV_BATCH).map(|_| vec![0; RECV_BUF]).collect(),
            incoming: Vec::with_capacity(RECV_BATCH),
            plain: vec![0; RECV_BUF],
            coalescer: Coalescer::default(),
            counters: LoopStats::default(),
        }
    }

    pub fn run(&mut self) {
        tracing::info!(
            interface = self.tun.name(),
            port = self.listen_port,
            gro = self.udp.gro(),
            "data plane running"
        );
        let mut last_tick = Instant::now();
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.tun.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.udp.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a live array of 3 pollfd structs.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 3, TIMER_TICK.as_millis() as i32) };
            if rc < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                tracing::error!(error = %std::io::Error::last_os_error(), "poll failed; data plane stops");
                return;
            }
            if fds[2].revents != 0 && !self.handle_commands() {
                tracing::info!(interface = self.tun.name(), "data plane stopped");
                return;
            }
            self.now_ms = self.started.elapsed().as_millis() as u64;
            if fds[1].revents != 0 {
                self.handle_udp();
            }
            if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                tracing::error!(
                    interface = self.tun.name(),
                    "TUN device gone; data plane stops"
                );
                return;
            }
            if fds[0].revents != 0 && !self.handle_tun() {
                return;
            }
            let elapsed = last_tick.elapsed();
            if elapsed >= TIMER_TICK {
                last_tick = Instant::now();
                self.tick_timers(elapsed);
            }
        }
    }

    /// Returns false when the loop must stop.
    fn handle_commands(&mut self) -> bool {
        let mut counter = [0u8; 8];
        // SAFETY: reads 8 bytes into a live array from our non-blocking eventfd.
        unsafe { libc::read(self.wake.as_raw_fd(), counter.as_mut_ptr().cast(), 8) };
        loop {
            match self.rx.try_recv() {
                Ok(Command::SetPeers(peers, reply)) => {
                    let r = self.peers.apply(&self.private, &self.limiter, peers);
                    if let Ok(fresh) = &r {
                        self.initiate(fresh);
                    }
                    let _ = reply.send(r.map(drop));
                }
                Ok(Command::SetPrivateKey(key, reply)) => {
                    let public = x25519::PublicKey::from(key.public_key().0);
                    let limiter = limiter_for(&public);
                    let r = self.peers.set_private(&key, &limiter);
                    if r.is_ok() {
                        tracing::info!(public_key = %key.public_key(), "private key rotated");
                        self.private = key;
                        self.public = public;
                        self.limiter = limiter;
                        self.initiate(&self.peers.indices());
                    }
                    let _ = reply.send(r);
                }
                Ok(Command::Stats(reply)) => {
                    let _ = reply.send(self.stats());
                }
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn stats(&self) -> Stats {
        let mut counters = self.counters.clone();
        counters.gso = self.udp.gso();
        counters.gro = self.udp.gro();
        let mut peers: Vec<PeerStats> = self
            .peers
            .iter()
            .map(|p| {
                let (hs, tx, rx, _, _) = p.tunn.stats();
                PeerStats {
                    public_key: p.key,
                    endpoint: p.endpoint,
                    last_handshake: hs,
                    tx_bytes: tx,
                    rx_bytes: rx,
                }
            })
            .collect();
        peers.sort_by_key(|p| p.public_key);
        Stats {
            interface: self.tun.name().to_string(),
            public_key: PublicKey(self.public.to_bytes()),
            listen_port: self.listen_port,
            peers,
            counters,
        }
    }

    fn flush_tx(&mut self) {
        flush(&mut self.udp, &mut self.tx, &mut self.counters);
    }

    /// Returns false when the TUN is gone (interface deleted): the loop stops.
    fn handle_tun(&mut self) -> bool {
        for _ in 0..TUN_BURST {
            let n = match self.tun.read(&mut self.tun_buf) {
                Ok(Some(n)) if n > VNET_HDR_LEN => n,
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, interface = self.tun.name(), "TUN read failed; data plane stops");
                    return false;
                }
            };
            self.counters.tun_reads += 1;
            if self.tx.pos + SEND_HEADROOM > self.tx.buf.len() {
                self.flush_tx();
            }
            let Some(hdr) = VnetHdr::parse(&self.tun_buf) else {
                continue;
            };
            let pkt = &mut self.tun_buf[VNET_HDR_LEN..n];
            let peer = Tunn::dst_address(pkt)
                .and_then(|d| self.peers.route(d))
                .and_then(|i| self.peers.get_mut(i));
            let Some(peer) = peer else {
                self.counters.dropped_no_peer += 1;
                continue;
            };
            let Some(dst) = peer.endpoint else {
                self.counters.dropped_no_peer += 1;
                continue;
            };
            let tx = &mut self.tx;
            let r = offload::segment(pkt, &hdr, |seg| encrypt_one(peer, dst, seg, tx));
            if let Err(e) = r {
                tracing::debug!(error = ?e, "dropping packet from the TUN");
            }
        }
        self.flush_tx();
        true
    }

    fn handle_udp(&mut self) {
        for _ in 0..UDP_BURST {
            let got = match self.udp.recv_batch(&mut self.recv_bufs, &mut self.incoming) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                    break;
                }
            };
            self.counters.udp_recv_buffers += got as u64;
            let incoming = std::mem::take(&mut self.incoming);
            for (i, inc) in incoming.iter().enumerate() {
                let mut off = 0;
                while off < inc.len {
                    let end = (off + inc.seg).min(inc.len);
                    self.counters.udp_datagrams_in += 1;
                    self.handle_datagram(i, off, end, inc.src);
                    off = end;
                }
            }
            self.incoming = incoming;
            let mut sink = TunSink {
                tun: &self.tun,
                writes: &mut self.counters.tun_writes,
            };
            self.coalescer.flush(&mut sink);
            if got < RECV_BATCH {
                break;
            }
        }
        self.flush_tx();
    }

    /// Finds the peer a datagram is for. Handshake messages pass mac1, then (under load) the cookie
    /// check, then their source's share of the handshake budget and the budget itself, before the
    /// one X25519 that finds an initiator's key. `None`: dropped and counted, or answered with a
    /// cookie reply (already queued).
    fn admit(
        &mut self,
        buf: usize,
        off: usize,
        end: usize,
        src: SocketAddr,
    ) -> Option<(u32, Kind)> {
        let data = &self.recv_bufs[buf][off..end];
        let Ok(packet) = Tunn::parse_incoming_packet(data) else {
            self.counters.dropped_invalid += 1;
            return None;
        };
        let kind = Kind::of(&packet);
        let found = match packet {
            Packet::PacketData(p) => self.peers.by_receiver(p.receiver_idx),
            Packet::PacketCookieReply(p) => self.peers.by_receiver(p.receiver_idx),
            Packet::HandshakeInit(_) | Packet::HandshakeResponse(_) => {
                let (ip, now) = (src.ip(), self.now_ms);
                let tx = &mut self.tx;
                // A source whose cookie replies are spent gets no room for one: boringtun then
                // stops before encrypting a cookie (buffer too small), after the mac checks.
                let room: &mut [u8] = if self.cookie_sources.has(ip, now) {
                    &mut tx.buf[tx.pos..]
                } else {
                    &mut []
                };
                let packet = match self.limiter.verify_packet(Some(ip), data, room) {
                    Ok(p) => p,
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        let len = cookie.len();
                        tx.commit(src, len);
                        self.cookie_sources.take(ip, now);
                        self.counters.cookie_replies += 1;
                        return None;
                    }
                    Err(TunnResult::Err(WireGuardError::DestinationBufferTooSmall)) => {
                        self.counters.dropped_cookie_rate += 1;
                        return None;
                    }
                    Err(_) => {
                        self.counters.dropped_bad_mac += 1;
                        return None;
                    }
                };
                if !self.handshake_sources.take(ip, now) {
                    self.counters.dropped_source_budget += 1;
                    return None;
                }
                if !self.budget.take() {
                    self.counters.dropped_handshake_budget += 1;
                    return None;
                }
                self.counters.handshakes += 1;
                match packet {
                    Packet::HandshakeInit(p) => {
                        parse_handshake_anon(self.private.secret(), &self.public, &p)
                            .ok()
                            .and_then(|half| self.peers.by_key(&PublicKey(half.peer_static_public)))
                    }
                    Packet::HandshakeResponse(p) => self.peers.by_receiver(p.receiver_idx),
                    _ => None,
                }
            }
        };
        if found.is_none() {
            self.counters.dropped_no_peer += 1;
        }
        found.map(|i| (i, kind))
    }

    fn handle_datagram(&mut self, buf: usize, off: usize, end: usize, src: SocketAddr) {
        if self.tx.pos + SEND_HEADROOM > self.tx.buf.len() {
            self.flush_tx();
        }
        let Some((idx, kind)) = self.admit(buf, off, end, src) else {
            return;
        };
        let data = &self.recv_bufs[buf][off..end];
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        let mut sink = TunSink {
            tun: &self.tun,
            writes: &mut self.counters.tun_writes,
        };
        let outcome = match peer.tunn.decapsulate(Some(src.ip()), data, &mut self.plain) {
            TunnResult::WriteToNetwork(out) => {
                // A handshake response or cookie reply goes back where the message came from.
                let len = out.len();
                let ty = out[0];
                self.tx.buf[self.tx.pos..self.tx.pos + len].copy_from_slice(out);
                self.tx.commit(src, len);
                Outcome::Sent(ty)
            }
            TunnResult::WriteToTunnelV4(pkt, ip) => {
                let bad = &mut self.counters.dropped_bad_source;
                deliver(peer, pkt, ip.into(), &mut self.coalescer, &mut sink, bad)
            }
            TunnResult::WriteToTunnelV6(pkt, ip) => {
                let bad = &mut self.counters.dropped_bad_source;
                deliver(peer, pkt, ip.into(), &mut self.coalescer, &mut sink, bad)
            }
            TunnResult::Done => Outcome::Done,
            TunnResult::Err(e) => {
                tracing::trace!(error = ?e, %src, "datagram rejected");
                Outcome::Rejected
            }
        };
        if handshake::authenticates(kind, outcome) && peer.endpoint != Some(src) {
            tracing::debug!(peer = %peer.key, from = ?peer.endpoint, to = %src, "peer endpoint roamed");
            peer.endpoint = Some(src);
        }
        if let Outcome::Sent(_) = outcome {
            // Packets queued while the handshake was pending leave now, to the peer's endpoint.
            let dst = peer.endpoint.unwrap_or(src);
            loop {
                if self.tx.pos + SEND_HEADROOM > self.tx.buf.len() {
                    flush(&mut self.udp, &mut self.tx, &mut self.counters);
                }
                let tx = &mut self.tx;
                let TunnResult::WriteToNetwork(out) =
                    peer.tunn.decapsulate(None, &[], &mut tx.buf[tx.pos..])
                else {
                    break;
                };
                let len = out.len();
                tx.commit(dst, len);
            }
        }
    }

    /// Starts a handshake with each of `peers` now, instead of waiting for traffic: a restarted or
    /// re-keyed node replaces the sessions its peers still hold within one round trip.
    fn initiate(&mut self, peers: &[u32]) {
        for &idx in peers {
            if self.tx.pos + SEND_HEADROOM > self.tx.buf.len() {
                self.flush_tx();
            }
            let Some(peer) = self.peers.get_mut(idx) else {
                continue;
            };
            let Some(dst) = peer.endpoint else { continue };
            let tx = &mut self.tx;
            if let TunnResult::WriteToNetwork(out) = peer
                .tunn
                .format_handshake_initiation(&mut tx.buf[tx.pos..], false)
            {
                let len = out.len();
                tx.commit(dst, len);
            }
        }
        self.flush_tx();
    }

    fn tick_timers(&mut self, elapsed: Duration) {
        self.limiter.reset_count();
        self.budget.refill(elapsed);
        for idx in self.peers.indices() {
            if self.tx.pos + SEND_HEADROOM > self.tx.buf.len() {
                self.flush_tx();
            }
            let Some(peer) = self.peers.get_mut(idx) else {
                continue;
            };
            let Some(dst) = peer.endpoint else { continue };
            let tx = &mut self.tx;
            if let TunnResult::WriteToNetwork(out) = peer.tunn.update_timers(&mut tx.buf[tx.pos..])
            {
                let len = out.len();
                tx.commit(dst, len);
            }
        }
        self.flush_tx();
    }
}

fn flush(udp: &mut Udp, tx: &mut TxBatch, counters: &mut LoopStats) {
    if tx.items.is_empty() {
        return;
    }
    counters.udp_sends += tx.items.len() as u64;
    if let Err(e) = udp.send_batch(&tx.buf[..tx.pos], &tx.items) {
        tracing::debug!(error = %e, "UDP send failed");
    }
    tx.items.clear();
    tx.pos = 0;
    tx.open = false;
}

fn encrypt_one(peer: &mut Peer, dst: SocketAddr, seg: &[u8], tx: &mut TxBatch) {
    let room = &mut tx.buf[tx.pos..];
    if room.len() < seg.len() + 32 + 148 {
        return;
    }
    if let TunnResult::WriteToNetwork(out) = peer.tunn.encapsulate(seg, room) {
        let len = out.len();
        tx.commit(dst, len);
    }
}

/// Hands a decrypted packet to the coalescer if its inner source is one the peer may use.
fn deliver(
    peer: &mut Peer,
    pkt: &[u8],
    inner_src: std::net::IpAddr,
    coalescer: &mut Coalescer,
    sink: &mut TunSink<'_>,
    dropped: &mut u64,
) -> Outcome {
    if !peer.allowed.iter().any(|c| c.contains(&inner_src)) {
        *dropped += 1;
        return Outcome::Rejected;
    }
    coalescer.push(pkt, sink);
    Outcome::Delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> TxBatch {
        TxBatch {
            buf: vec![0; SEND_BUF],
            pos: 0,
            items: Vec::new(),
            open: false,
        }
    }

    fn trains(b: &TxBatch) -> Vec<(SocketAddr, usize, usize, usize)> {
        b.items
            .iter()
            .map(|o| (o.dst, o.off, o.len, o.seg))
            .collect()
    }

    #[test]
    fn equal_datagrams_to_one_peer_form_one_gso_train() {
        let a: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let mut b = batch();
        for _ in 0..3 {
            b.commit(a, 1452);
        }
        b.commit(a, 700); // a shorter last datagram ends the train
        b.commit(a, 1452);
        assert_eq!(
            trains(&b),
            [
                (a, 0, 3 * 1452 + 700, 1452),
                (a, 3 * 1452 + 700, 1452, 1452)
            ]
        );
    }

    #[test]
    fn other_peer_or_larger_datagram_starts_a_new_train() {
        let (a, c): (SocketAddr, SocketAddr) = (
            "192.0.2.1:51820".parse().unwrap(),
            "[2001:db8::1]:51820".parse().unwrap(),
        );
        let mut b = batch();
        b.commit(a, 148); // handshake initiation
        b.commit(a, 1452);
        b.commit(c, 1452);
        b.commit(c, 1452);
        assert_eq!(
            trains(&b),
            [
                (a, 0, 148, 148),
                (a, 148, 1452, 1452),
                (c, 1600, 2904, 1452)
            ]
        );
    }

    #[test]
    fn trains_respect_the_kernel_limits() {
        let a: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let mut b = batch();
        for _ in 0..100 {
            b.commit(a, 1452);
        }
        assert!(
            b.items
                .iter()
                .all(|t| t.len <= MAX_GSO_BYTES && t.len / t.seg <= MAX_GSO_SEGMENTS)
        );
        assert_eq!(b.items.iter().map(|t| t.len).sum::<usize>(), 100 * 1452);
        assert_eq!(
            b.items[0].len,
            44 * 1452,
            "65 000 bytes fit 44 datagrams of 1452"
        );
        let mut b = batch();
        for _ in 0..100 {
            b.commit(a, 100);
        }
        assert_eq!(b.items[0].len / 100, MAX_GSO_SEGMENTS);
    }
}
