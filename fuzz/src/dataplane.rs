//! Fuzz checks for `kitfleet-dataplane`: WireGuard datagrams into the receive path. Two boringtun
//! `Tunn`s (the node's and a peer's) complete a real handshake; the input then drives datagrams at
//! the node: hostile bytes from the network, replays, and packets the authenticated peer chose
//! (encrypted by the peer's `Tunn`). What the node decrypts goes through the data plane's receive
//! coalescer (`offload::Coalescer`, userspace GRO) into a recording TUN sink.
//!
//! Properties: nothing unauthenticated (garbage, a replayed datagram) reaches the TUN; every packet
//! written to the TUN has a consistent virtio-net header; cutting each GSO packet at `gso_size` as
//! the kernel does gives back exactly the decrypted packets, in order (IP ID and checksums aside,
//! which the kernel rewrites).

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use kitfleet_dataplane::offload::{
    Coalescer, GSO_NONE, GSO_TCPV4, GSO_TCPV6, PacketSink, VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VnetHdr,
};
use kitfleet_dataplane::tun::VNET_HDR_LEN;

/// A fuzz target: its name and its check.
pub type Target = (&'static str, fn(&[u8]));

/// Every target of this file, for the corpus replay.
pub const TARGETS: &[Target] = &[("wg_receive", wg_receive)];

struct Sink(Vec<Vec<u8>>);

impl PacketSink for Sink {
    fn write_packet(&mut self, buf: &[u8]) {
        self.0.push(buf.to_vec());
    }
}

/// The node (`rx`) and its peer (`tx`) after a full handshake.
fn handshaken() -> (Tunn, Tunn) {
    let (node, peer) = (StaticSecret::from([7u8; 32]), StaticSecret::from([9u8; 32]));
    let mut rx = Tunn::new(node.clone(), PublicKey::from(&peer), None, None, 1, None);
    let mut tx = Tunn::new(peer, PublicKey::from(&node), None, None, 2, None);
    let mut buf = vec![0u8; 2048];
    let to_net = |r: TunnResult<'_>| match r {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("handshake step produced no message"),
    };
    let init = to_net(tx.format_handshake_initiation(&mut buf, false));
    let resp = to_net(rx.decapsulate(None, &init, &mut buf));
    let keepalive = to_net(tx.decapsulate(None, &resp, &mut buf));
    assert!(matches!(
        rx.decapsulate(None, &keepalive, &mut buf),
        TunnResult::Done
    ));
    (rx, tx)
}

/// A byte cursor that yields zeros once the input is exhausted.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// IP header length and TCP header length of a plain TCP data packet the coalescer may merge.
fn tcp_headers(p: &[u8]) -> Option<(usize, usize)> {
    let l3 = match p.first()? >> 4 {
        4 if p.len() >= 40 && p[0] & 0xf == 5 && p[9] == 6 => 20,
        6 if p.len() >= 60 && p[6] == 6 => 40,
        _ => return None,
    };
    let thl = usize::from(p[l3 + 12] >> 4) * 4;
    (thl >= 20 && p.len() > l3 + thl).then_some((l3, thl))
}

/// The next in-order segment of `prev`'s flow (same headers, sequence advanced) with `payload`.
fn next_segment(prev: &[u8], payload: &[u8], flags: u8) -> Option<Vec<u8>> {
    let (l3, thl) = tcp_headers(prev)?;
    let h = l3 + thl;
    let seq = u32::from_be_bytes(prev[l3 + 4..l3 + 8].try_into().ok()?);
    let seq = seq.wrapping_add((prev.len() - h) as u32);
    let mut p = prev[..h].to_vec();
    p.extend_from_slice(payload);
    p[l3 + 4..l3 + 8].copy_from_slice(&seq.to_be_bytes());
    p[l3 + 13] = flags;
    if l3 == 20 {
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
    } else {
        let len = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&len.to_be_bytes());
    }
    Some(p)
}

/// Input: a list of operations. `0`: a datagram of raw bytes from the network; `1`: a packet the
/// peer sends (length, bytes); `2`: the next TCP segment of the peer's last packet (payload length,
/// TCP flags, payload); `3`: the peer's last datagram again (a replay).
pub fn wg_receive(data: &[u8]) {
    let (mut rx, mut tx) = handshaken();
    let mut input = Input(data);
    let mut plain = vec![0u8; 65_536];
    let mut cipher = vec![0u8; 65_536 + 64];
    let mut coalescer = Coalescer::default();
    let mut sink = Sink(Vec::new());
    let mut delivered: Vec<Vec<u8>> = Vec::new();
    let mut last_sent: Vec<u8> = Vec::new();
    let mut last_datagram: Vec<u8> = Vec::new();
    let src = Some(std::net::IpAddr::from([192, 0, 2, 1]));
    for _ in 0..64 {
        if input.0.is_empty() {
            break;
        }
        let op = input.u8() % 4;
        let (datagram, authentic) = match op {
            0 => {
                let n = usize::from(input.u8()) * 8;
                (input.take(n).to_vec(), false)
            }
            3 => (last_datagram.clone(), false),
            _ => {
                let pkt = if op == 1 {
                    let n = usize::from(input.u8()) * 8 + usize::from(input.u8() % 8);
                    input.take(n).to_vec()
                } else {
                    let n = usize::from(input.u8()) * 8;
                    let flags = input.u8();
                    match next_segment(&last_sent, input.take(n), flags) {
                        Some(p) => p,
                        None => continue,
                    }
                };
                let datagram = match tx.encapsulate(&pkt, &mut cipher) {
                    TunnResult::WriteToNetwork(d) => d.to_vec(),
                    _ => continue,
                };
                last_sent = pkt;
                last_datagram = datagram.clone();
                (datagram, true)
            }
        };
        if datagram.is_empty() {
            continue;
        }
        match rx.decapsulate(src, &datagram, &mut plain) {
            TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
                assert!(
                    authentic,
                    "an unauthenticated datagram (op {op}) was decrypted to the TUN"
                );
                delivered.push(p.to_vec());
                coalescer.push(p, &mut sink);
            }
            TunnResult::WriteToNetwork(_) | TunnResult::Done | TunnResult::Err(_) => {}
        }
    }
    coalescer.flush(&mut sink);
    let got = resegment(&sink.0);
    assert_eq!(
        got.len(),
        delivered.len(),
        "packets in and out of the coalescer"
    );
    for (i, (g, want)) in got.iter().zip(&delivered).enumerate() {
        assert_eq!(
            masked(g),
            masked(want),
            "packet {i} differs after the coalescer"
        );
    }
}

/// Cuts every TUN write back into IP packets as the kernel's GSO would (headers copied, lengths and
/// sequence numbers per segment, PSH only on the last), checking each virtio-net header.
fn resegment(writes: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for w in writes {
        let hdr = VnetHdr::parse(w).expect("a virtio-net header");
        let pkt = &w[VNET_HDR_LEN..];
        if hdr.gso_type == GSO_NONE {
            assert_eq!(hdr.flags, VIRTIO_NET_HDR_F_DATA_VALID, "{hdr:?}");
            out.push(pkt.to_vec());
            continue;
        }
        let (l3, thl) = tcp_headers(pkt).expect("a GSO packet is TCP");
        let h = l3 + thl;
        let want_type = if l3 == 20 { GSO_TCPV4 } else { GSO_TCPV6 };
        assert_eq!(
            (
                hdr.flags,
                hdr.gso_type,
                usize::from(hdr.hdr_len),
                usize::from(hdr.csum_start),
                hdr.csum_offset
            ),
            (VIRTIO_NET_HDR_F_NEEDS_CSUM, want_type, h, l3, 16),
            "virtio-net header of a GSO packet"
        );
        let mss = usize::from(hdr.gso_size);
        assert!(
            mss > 0 && pkt.len() > h + mss,
            "a GSO packet of {} bytes with gso_size {mss}",
            pkt.len()
        );
        if l3 == 20 {
            assert_eq!(
                usize::from(u16::from_be_bytes([pkt[2], pkt[3]])),
                pkt.len(),
                "IPv4 total length"
            );
            let sum = kitfleet_dataplane::offload::csum_fold(
                kitfleet_dataplane::offload::csum_add(0, &pkt[..20]),
            );
            assert_eq!(sum, 0xffff, "IPv4 header checksum");
        } else {
            assert_eq!(
                usize::from(u16::from_be_bytes([pkt[4], pkt[5]])) + 40,
                pkt.len(),
                "IPv6 payload length"
            );
        }
        let seq0 = u32::from_be_bytes(pkt[l3 + 4..l3 + 8].try_into().expect("4 bytes"));
        let chunks: Vec<&[u8]> = pkt[h..].chunks(mss).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut s = pkt[..h].to_vec();
            s.extend_from_slice(chunk);
            let seq = seq0.wrapping_add((i * mss) as u32);
            s[l3 + 4..l3 + 8].copy_from_slice(&seq.to_be_bytes());
            if i + 1 < chunks.len() {
                s[l3 + 13] &= !0x08; // PSH only on the last segment
            }
            out.push(s);
        }
    }
    out
}

/// A packet with the fields the kernel rewrites per segment zeroed: IPv4 length, ID and header
/// checksum, IPv6 payload length, TCP checksum.
fn masked(p: &[u8]) -> Vec<u8> {
    let mut p = p.to_vec();
    if let Some((l3, _)) = tcp_headers(&p) {
        if l3 == 20 {
            p[2..6].fill(0);
            p[10..12].fill(0);
        } else {
            p[4..6].fill(0);
        }
        p[l3 + 16..l3 + 18].fill(0);
    }
    p
}
