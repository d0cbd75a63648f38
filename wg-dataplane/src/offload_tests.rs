use super::*;

/// A TCP/IPv4 packet with timestamps option, `payload` bytes of data, checksum partial as the kernel
/// hands it to a TUN with TSO.
fn tso_packet(payload: &[u8], seq: u32, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 32];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((52 + payload.len()) as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 0, 1, 2]);
    p[16..20].copy_from_slice(&[10, 0, 2, 3]);
    let t = 20;
    p[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
    p[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
    p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    p[t + 8..t + 12].copy_from_slice(&77u32.to_be_bytes());
    p[t + 12] = 8 << 4;
    p[t + 13] = flags;
    p[t + 14..t + 16].copy_from_slice(&512u16.to_be_bytes());
    p[t + 20..t + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    p.extend_from_slice(payload);
    ipv4_header_checksum(&mut p, 20);
    p
}

fn tcp_checksum_ok(seg: &[u8]) -> bool {
    let l4 = seg.len() - 20;
    csum_fold(csum_add(pseudo_sum(seg, 6, l4), &seg[20..])) == 0xffff
}

fn ip_checksum_ok(seg: &[u8]) -> bool {
    csum_fold(csum_add(0, &seg[..20])) == 0xffff
}

#[test]
fn checksum_matches_rfc1071_example() {
    // RFC 1071 section 3 example: words 0001 f203 f4f5 f6f7 sum to ddf2.
    let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(csum_fold(csum_add(0, &data)), 0xddf2);
    // Odd length pads with a zero byte.
    assert_eq!(csum_fold(csum_add(0, &[0x12])), 0x1200);
}

#[test]
fn vnet_header_round_trips() {
    let h = VnetHdr {
        flags: 1,
        gso_type: 4,
        hdr_len: 72,
        gso_size: 1368,
        csum_start: 40,
        csum_offset: 16,
    };
    let mut b = [0u8; 10];
    h.write(&mut b);
    assert_eq!(VnetHdr::parse(&b), Some(h));
    assert_eq!(VnetHdr::parse(&b[..9]), None);
}

#[test]
fn segments_tso_packet_with_valid_headers_and_checksums() {
    let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut pkt = tso_packet(&payload, 1000, TCP_ACK | TCP_PSH);
    let hdr = VnetHdr {
        flags: 1,
        gso_type: GSO_TCPV4,
        hdr_len: 52,
        gso_size: 1368,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut segs: Vec<Vec<u8>> = Vec::new();
    segment(&mut pkt, &hdr, |s| segs.push(s.to_vec())).unwrap();
    assert_eq!(segs.len(), 4);
    let mut joined = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        assert!(ip_checksum_ok(s), "segment {i} ip checksum");
        assert!(tcp_checksum_ok(s), "segment {i} tcp checksum");
        assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
        assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0x1234 + i as u16);
        assert_eq!(
            u32::from_be_bytes(s[24..28].try_into().unwrap()),
            1000 + 1368 * i as u32
        );
        let psh = s[33] & TCP_PSH != 0;
        assert_eq!(psh, i == 3, "only the last segment keeps PSH");
        joined.extend_from_slice(&s[52..]);
    }
    assert_eq!(joined, payload);
    assert_eq!(segs[3].len(), 52 + 5000 - 3 * 1368);
}

#[test]
fn completes_partial_checksum_of_single_packet() {
    let mut pkt = tso_packet(b"hello", 1, TCP_ACK);
    let partial = csum_fold(pseudo_sum(&pkt, 6, pkt.len() - 20));
    pkt[36..38].copy_from_slice(&partial.to_be_bytes());
    let hdr = VnetHdr {
        flags: 1,
        gso_type: 0,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut out = Vec::new();
    segment(&mut pkt, &hdr, |s| out.push(s.to_vec())).unwrap();
    assert_eq!(out.len(), 1);
    assert!(tcp_checksum_ok(&out[0]));
}

#[test]
fn rejects_bad_packets_without_panicking() {
    let hdr = VnetHdr {
        gso_type: GSO_TCPV4,
        gso_size: 100,
        ..Default::default()
    };
    for bad in [vec![], vec![0x45; 10], vec![0x60; 39], vec![0x45; 30]] {
        let mut b = bad.clone();
        assert!(segment(&mut b, &hdr, |_| {}).is_err(), "{bad:?}");
    }
    let mut p = tso_packet(b"x", 1, TCP_ACK);
    let udp = VnetHdr {
        gso_type: 5,
        gso_size: 100,
        ..Default::default()
    };
    assert_eq!(
        segment(&mut p, &udp, |_| {}),
        Err(SegmentError::UnsupportedGso(5))
    );
    let csum = VnetHdr {
        flags: 1,
        csum_start: 2000,
        ..Default::default()
    };
    assert_eq!(segment(&mut p, &csum, |_| {}), Err(SegmentError::Malformed));
}

#[derive(Default)]
struct Sink(Vec<Vec<u8>>);

impl PacketSink for Sink {
    fn write_packet(&mut self, buf: &[u8]) {
        self.0.push(buf.to_vec());
    }
}

#[test]
fn coalesces_in_order_segments_back_into_one_gso_packet() {
    let payload: Vec<u8> = (0..5000u32).map(|i| (i % 13) as u8).collect();
    let mut pkt = tso_packet(&payload, 1000, TCP_ACK | TCP_PSH);
    let hdr = VnetHdr {
        flags: 1,
        gso_type: GSO_TCPV4,
        gso_size: 1368,
        ..Default::default()
    };
    let mut segs = Vec::new();
    segment(&mut pkt, &hdr, |s| segs.push(s.to_vec())).unwrap();
    let mut c = Coalescer::default();
    let mut sink = Sink::default();
    for s in &segs {
        c.push(s, &mut sink);
    }
    c.flush(&mut sink);
    assert_eq!(sink.0.len(), 1);
    let out = &sink.0[0];
    let h = VnetHdr::parse(out).unwrap();
    assert_eq!(
        (h.flags, h.gso_type, h.gso_size, h.csum_start, h.csum_offset),
        (1, GSO_TCPV4, 1368, 20, 16)
    );
    assert_eq!(h.hdr_len, 52);
    let ip = &out[10..];
    assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
    assert!(ip_checksum_ok(ip));
    assert_eq!(&ip[52..], &payload[..]);
    assert!(ip[33] & TCP_PSH != 0);
    // The partial checksum plus the payload sum gives a valid full checksum.
    let full = !csum_fold(csum_add(0, &ip[20..]));
    let mut fixed = ip.to_vec();
    fixed[36..38].copy_from_slice(&full.to_be_bytes());
    assert!(tcp_checksum_ok(&fixed));
}

#[test]
fn does_not_merge_gaps_other_flows_or_control_segments() {
    let a = tso_packet(&[1; 100], 1, TCP_ACK);
    let gap = tso_packet(&[2; 100], 500, TCP_ACK);
    let syn = tso_packet(&[], 9, TCP_SYN);
    let mut other = tso_packet(&[3; 100], 101, TCP_ACK);
    other[19] = 9;
    let mut c = Coalescer::default();
    let mut sink = Sink::default();
    for p in [&a, &gap, &other, &syn] {
        c.push(p, &mut sink);
    }
    c.flush(&mut sink);
    assert_eq!(sink.0.len(), 4);
    for (out, orig) in sink.0.iter().zip([&a, &gap, &other, &syn]) {
        let h = VnetHdr::parse(out).unwrap();
        assert_eq!(
            (h.flags, h.gso_type),
            (VIRTIO_NET_HDR_F_DATA_VALID, GSO_NONE)
        );
        assert_eq!(&out[10..], &orig[..]);
    }
}

#[test]
fn short_segment_closes_the_train() {
    let a = tso_packet(&[1; 100], 1, TCP_ACK);
    let b = tso_packet(&[2; 50], 101, TCP_ACK);
    let c2 = tso_packet(&[3; 100], 151, TCP_ACK);
    let mut c = Coalescer::default();
    let mut sink = Sink::default();
    for p in [&a, &b, &c2] {
        c.push(p, &mut sink);
    }
    c.flush(&mut sink);
    assert_eq!(sink.0.len(), 2);
    assert_eq!(sink.0[0].len(), 10 + 52 + 150);
}
