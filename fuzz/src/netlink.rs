//! Fuzz checks for `kitfleet-netlink`: kernel replies (one receive buffer) through `reply::parse`,
//! for rtnetlink and nf_tables messages.
//!
//! Input: the request's sequence number and the socket's port id (4 bytes each, little-endian),
//! then the receive buffer. Properties: no panic; what is accepted carries the request's sequence
//! number and port id in every message header, and nothing follows the message that ended it.

use kitfleet_netlink::nft::NftMessage;
use kitfleet_netlink::reply::{parse, parse_route};

/// A fuzz target: its name and its check.
pub type Target = (&'static str, fn(&[u8]));

/// Every target of this file, for the corpus replay.
pub const TARGETS: &[Target] = &[("netlink_reply", netlink_reply)];

pub fn netlink_reply(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let seq = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let port = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    let buf = &data[8..];
    let route = parse_route(buf, seq, port);
    let nft = parse::<NftMessage>(buf, seq, port);
    if route.is_ok() || nft.is_ok() {
        check_headers(buf, seq, port);
    }
}

/// Walks the accepted buffer's message headers by hand (16 bytes: length, type, flags, sequence,
/// port; 4-byte aligned) and checks each against the request; an `NLMSG_ERROR` (2) or
/// `NLMSG_DONE` (3) must be the last message.
fn check_headers(buf: &[u8], seq: u32, port: u32) {
    let mut off = 0;
    let mut ended = false;
    while off < buf.len() {
        let h = &buf[off..];
        assert!(
            h.len() >= 16,
            "accepted a trailing {} bytes at {off}",
            h.len()
        );
        let u32_at = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let len = u32_at(0) as usize;
        assert!(
            (16..=h.len()).contains(&len),
            "accepted length {len} at {off}"
        );
        assert!(
            !ended,
            "accepted a message after the end of the answer, at {off}"
        );
        assert_eq!(
            (u32_at(8), u32_at(12)),
            (seq, port),
            "accepted another request's message at {off}"
        );
        let ty = u16::from_ne_bytes([h[4], h[5]]);
        ended = ty == 2 || ty == 3;
        off = off.saturating_add(len.next_multiple_of(4)).min(buf.len());
    }
}
