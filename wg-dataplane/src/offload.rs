//! Offloads done in userspace around the TUN's virtio-net header: checksums, TCP segmentation of the
//! kernel's TSO super-packets (transmit), and TCP coalescing of decrypted segments into GSO packets
//! (receive), so the kernel handles one 64 KiB packet instead of ~45 small ones.

use super::tun::VNET_HDR_LEN;

pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_ECN: u8 = 0x80;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;
const PROTO_TCP: u8 = 6;

/// `struct virtio_net_hdr` (little-endian on x86 and every other little-endian host).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < VNET_HDR_LEN {
            return None;
        }
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

/// Adds `data` to a ones'-complement accumulator (big-endian 16-bit words; an odd tail byte is padded).
pub fn csum_add(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        sum += (v >> 32) + (v & 0xffff_ffff);
    }
    let mut rest = chunks.remainder();
    while rest.len() >= 2 {
        sum += u64::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let [b] = rest {
        sum += u64::from(*b) << 8;
    }
    sum
}

/// Folds an accumulator to 16 bits (not inverted).
pub fn csum_fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Pseudo-header sum for a TCP/UDP packet of `l4_len` bytes.
fn pseudo_sum(pkt: &[u8], proto: u8, l4_len: usize) -> u64 {
    let mut s = match pkt[0] >> 4 {
        4 => csum_add(0, &pkt[12..20]),
        _ => csum_add(0, &pkt[8..40]),
    };
    s += u64::from(proto) + l4_len as u64;
    s
}

fn ipv4_header_checksum(pkt: &mut [u8], ihl: usize) {
    pkt[10] = 0;
    pkt[11] = 0;
    let c = !csum_fold(csum_add(0, &pkt[..ihl]));
    pkt[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Layer-3 header length and L4 protocol of an IP packet (IPv6: no extension headers).
fn l3(pkt: &[u8]) -> Option<(usize, u8)> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => {
            let ihl = usize::from(pkt[0] & 0xf) * 4;
            (ihl >= 20 && pkt.len() >= ihl).then_some((ihl, pkt[9]))
        }
        6 if pkt.len() >= 40 => Some((40, pkt[6])),
        _ => None,
    }
}

/// Why a packet read from the TUN could not be turned into segments.
#[derive(Debug, PartialEq, Eq)]
pub enum SegmentError {
    Malformed,
    UnsupportedGso(u8),
}

/// Calls `emit` once per wire-ready IP packet contained in `pkt` (a packet read from the TUN, after its
/// virtio-net header `hdr`): completes a partial checksum, and cuts TSO super-packets into `gso_size`
/// segments with their own sequence numbers, lengths and full checksums. Works in place: segment `i`'s
/// headers are written over the tail of segment `i-1` once that one has been emitted.
pub fn segment(
    pkt: &mut [u8],
    hdr: &VnetHdr,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), SegmentError> {
    let gso = hdr.gso_type & !GSO_ECN;
    if gso == GSO_NONE || hdr.gso_size == 0 {
        if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            let start = usize::from(hdr.csum_start);
            let field = start + usize::from(hdr.csum_offset);
            if field + 2 > pkt.len() {
                return Err(SegmentError::Malformed);
            }
            let c = !csum_fold(csum_add(0, &pkt[start..]));
            pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
        }
        emit(pkt);
        return Ok(());
    }
    if gso != GSO_TCPV4 && gso != GSO_TCPV6 {
        return Err(SegmentError::UnsupportedGso(hdr.gso_type));
    }
    let (l3len, proto) = l3(pkt).ok_or(SegmentError::Malformed)?;
    if proto != PROTO_TCP || pkt.len() < l3len + 20 {
        return Err(SegmentError::Malformed);
    }
    let thl = usize::from(pkt[l3len + 12] >> 4) * 4;
    let hlen = l3len + thl;
    if thl < 20 || pkt.len() < hlen {
        return Err(SegmentError::Malformed);
    }
    let v4 = pkt[0] >> 4 == 4;
    let mss = usize::from(hdr.gso_size);
    let total = pkt.len() - hlen;
    let base_seq = u32::from_be_bytes(pkt[l3len + 4..l3len + 8].try_into().unwrap_or_default());
    let base_id = u16::from_be_bytes([pkt[4], pkt[5]]);
    let orig_flags = pkt[l3len + 13];
    let mut header = [0u8; 120];
    if hlen > header.len() {
        return Err(SegmentError::Malformed);
    }
    header[..hlen].copy_from_slice(&pkt[..hlen]);
    let nseg = total.div_ceil(mss).max(1);
    for i in 0..nseg {
        let off = i * mss;
        let len = mss.min(total - off);
        let start = hlen + off - hlen; // where this segment's headers go
        let seg = &mut pkt[start..hlen + off + len];
        seg[..hlen].copy_from_slice(&header[..hlen]);
        if v4 {
            seg[2..4].copy_from_slice(&((hlen + len) as u16).to_be_bytes());
            seg[4..6].copy_from_slice(&base_id.wrapping_add(i as u16).to_be_bytes());
            ipv4_header_checksum(seg, l3len);
        } else {
            seg[4..6].copy_from_slice(&((thl + len) as u16).to_be_bytes());
        }
        let t = l3len;
        seg[t + 4..t + 8].copy_from_slice(&base_seq.wrapping_add(off as u32).to_be_bytes());
        let mut flags = orig_flags;
        if i + 1 < nseg {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        seg[t + 13] = flags;
        seg[t + 16] = 0;
        seg[t + 17] = 0;
        let c = !csum_fold(csum_add(pseudo_sum(seg, PROTO_TCP, thl + len), &seg[t..]));
        seg[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
        emit(seg);
    }
    Ok(())
}

/// Sink for packets leaving the coalescer (the TUN in production, a Vec in tests).
pub trait PacketSink {
    /// `buf` starts with a virtio-net header.
    fn write_packet(&mut self, buf: &[u8]);
}

/// Merges consecutive in-order TCP segments of one flow into a GSO packet for the TUN (userspace GRO).
#[derive(Debug)]
pub struct Coalescer {
    buf: Vec<u8>,
    len: usize,
    l3len: usize,
    hlen: usize,
    mss: usize,
    segs: usize,
    next_seq: u32,
    closed: bool,
}

/// Largest coalesced IP packet.
const MAX_COALESCED: usize = 65_535;
const MAX_SEGS: usize = 64;

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer {
            buf: vec![0; VNET_HDR_LEN + MAX_COALESCED],
            len: 0,
            l3len: 0,
            hlen: 0,
            mss: 0,
            segs: 0,
            next_seq: 0,
            closed: false,
        }
    }
}

/// TCP segment facts needed to decide merging. `None` for anything that is not a plain data segment.
fn tcp_data(pkt: &[u8]) -> Option<(usize, usize, u32, u8)> {
    let (l3len, proto) = l3(pkt)?;
    if proto != PROTO_TCP
        || l3len != if pkt[0] >> 4 == 4 { 20 } else { 40 }
        || pkt.len() < l3len + 20
    {
        return None;
    }
    if pkt[0] >> 4 == 4 && u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
        return None; // fragment
    }
    let thl = usize::from(pkt[l3len + 12] >> 4) * 4;
    let hlen = l3len + thl;
    let flags = pkt[l3len + 13];
    if thl < 20
        || pkt.len() <= hlen
        || flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG) != 0
        || flags & TCP_ACK == 0
    {
        return None;
    }
    let seq = u32::from_be_bytes([
        pkt[l3len + 4],
        pkt[l3len + 5],
        pkt[l3len + 6],
        pkt[l3len + 7],
    ]);
    Some((l3len, hlen, seq, flags))
}

impl Coalescer {
    fn current(&self) -> &[u8] {
        &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.len]
    }

    fn can_merge(&self, pkt: &[u8], l3len: usize, hlen: usize, seq: u32, flags: u8) -> bool {
        if self.segs == 0
            || self.closed
            || l3len != self.l3len
            || hlen != self.hlen
            || seq != self.next_seq
        {
            return false;
        }
        let payload = pkt.len() - hlen;
        if payload > self.mss || self.len + payload > MAX_COALESCED || self.segs >= MAX_SEGS {
            return false;
        }
        let cur = self.current();
        let same_ip = if l3len == 20 {
            cur[0..2] == pkt[0..2]
                && cur[6] & 0x40 == pkt[6] & 0x40
                && cur[8..10] == pkt[8..10]
                && cur[12..20] == pkt[12..20]
        } else {
            cur[0..4] == pkt[0..4] && cur[6..40] == pkt[6..40]
        };
        let t = l3len;
        same_ip
            && cur[t..t + 4] == pkt[t..t + 4]
            && cur[t + 8..t + 12] == pkt[t + 8..t + 12]
            && flags & !TCP_PSH == cur[t + 13] & !TCP_PSH
            && cur[t + 20..hlen] == pkt[t + 20..hlen]
    }

    /// Adds one decrypted IP packet; writes out whatever can no longer grow.
    pub fn push(&mut self, pkt: &[u8], sink: &mut impl PacketSink) {
        let Some((l3len, hlen, seq, flags)) = tcp_data(pkt) else {
            self.flush(sink);
            write_single(pkt, sink);
            return;
        };
        if self.can_merge(pkt, l3len, hlen, seq, flags) {
            let payload = &pkt[hlen..];
            let at = VNET_HDR_LEN + self.len;
            self.buf[at..at + payload.len()].copy_from_slice(payload);
            self.len += payload.len();
            self.segs += 1;
            self.next_seq = seq.wrapping_add(payload.len() as u32);
            if flags & TCP_PSH != 0 {
                self.buf[VNET_HDR_LEN + l3len + 13] |= TCP_PSH;
            }
            if flags & TCP_PSH != 0 || payload.len() < self.mss {
                self.closed = true;
            }
            return;
        }
        self.flush(sink);
        let payload = pkt.len() - hlen;
        self.buf[VNET_HDR_LEN..VNET_HDR_LEN + pkt.len()].copy_from_slice(pkt);
        self.len = pkt.len();
        self.l3len = l3len;
        self.hlen = hlen;
        self.mss = payload;
        self.segs = 1;
        self.next_seq = seq.wrapping_add(payload as u32);
        self.closed = flags & TCP_PSH != 0;
    }

    /// Writes out the packet being built, if any.
    pub fn flush(&mut self, sink: &mut impl PacketSink) {
        if self.segs == 0 {
            return;
        }
        let segs = std::mem::take(&mut self.segs);
        let len = self.len;
        let (l3len, hlen) = (self.l3len, self.hlen);
        if segs == 1 {
            VnetHdr {
                flags: VIRTIO_NET_HDR_F_DATA_VALID,
                ..Default::default()
            }
            .write(&mut self.buf);
            sink.write_packet(&self.buf[..VNET_HDR_LEN + len]);
            return;
        }
        let v4 = self.buf[VNET_HDR_LEN] >> 4 == 4;
        {
            let pkt = &mut self.buf[VNET_HDR_LEN..VNET_HDR_LEN + len];
            if v4 {
                pkt[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                ipv4_header_checksum(pkt, l3len);
            } else {
                pkt[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
            }
            let partial = csum_fold(pseudo_sum(pkt, PROTO_TCP, len - l3len));
            pkt[l3len + 16..l3len + 18].copy_from_slice(&partial.to_be_bytes());
        }
        VnetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: if v4 { GSO_TCPV4 } else { GSO_TCPV6 },
            hdr_len: hlen as u16,
            gso_size: self.mss as u16,
            csum_start: l3len as u16,
            csum_offset: 16,
        }
        .write(&mut self.buf);
        sink.write_packet(&self.buf[..VNET_HDR_LEN + len]);
    }
}

/// Writes one packet that is not coalesced, marked as checksum-verified (WireGuard authenticated it).
pub fn write_single(pkt: &[u8], sink: &mut impl PacketSink) {
    let mut tmp = [0u8; 2048];
    if pkt.len() + VNET_HDR_LEN <= tmp.len() {
        VnetHdr {
            flags: VIRTIO_NET_HDR_F_DATA_VALID,
            ..Default::default()
        }
        .write(&mut tmp);
        tmp[VNET_HDR_LEN..VNET_HDR_LEN + pkt.len()].copy_from_slice(pkt);
        sink.write_packet(&tmp[..VNET_HDR_LEN + pkt.len()]);
    } else {
        let mut v = vec![0u8; VNET_HDR_LEN + pkt.len()];
        VnetHdr {
            flags: VIRTIO_NET_HDR_F_DATA_VALID,
            ..Default::default()
        }
        .write(&mut v);
        v[VNET_HDR_LEN..].copy_from_slice(pkt);
        sink.write_packet(&v);
    }
}

#[cfg(test)]
#[path = "offload_tests.rs"]
mod tests;
