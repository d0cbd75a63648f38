//! rtnetlink wire format: message building and attribute parsing (pure, no I/O).
//!
//! Layouts from `linux/netlink.h`, `linux/rtnetlink.h`, `linux/if_link.h`, `linux/neighbour.h`.

/// `struct nlmsghdr` length.
pub const NLMSG_HDRLEN: usize = 16;
/// `NLMSG_ERROR`.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`.
pub const NLMSG_DONE: u16 = 3;

/// Request flags.
pub const NLM_F_REQUEST: u16 = 0x1;
/// Multi-part reply.
pub const NLM_F_MULTI: u16 = 0x2;
/// Ask for an ACK.
pub const NLM_F_ACK: u16 = 0x4;
/// Fail if the object exists.
pub const NLM_F_EXCL: u16 = 0x200;
/// Create if missing.
pub const NLM_F_CREATE: u16 = 0x400;
/// Replace an existing object.
pub const NLM_F_REPLACE: u16 = 0x100;
/// Dump everything.
pub const NLM_F_DUMP: u16 = 0x300;

/// Message types.
pub const RTM_NEWLINK: u16 = 16;
/// Delete a link.
pub const RTM_DELLINK: u16 = 17;
/// Get a link.
pub const RTM_GETLINK: u16 = 18;
/// Add an address.
pub const RTM_NEWADDR: u16 = 20;
/// Dump addresses.
pub const RTM_GETADDR: u16 = 22;
/// Add a route.
pub const RTM_NEWROUTE: u16 = 24;
/// Delete a route.
pub const RTM_DELROUTE: u16 = 25;
/// Dump routes.
pub const RTM_GETROUTE: u16 = 26;
/// Add a neighbour.
pub const RTM_NEWNEIGH: u16 = 28;

/// `IFLA_*` link attributes.
pub const IFLA_ADDRESS: u16 = 1;
/// Interface name.
pub const IFLA_IFNAME: u16 = 3;
/// MTU.
pub const IFLA_MTU: u16 = 4;
/// Nested link info.
pub const IFLA_LINKINFO: u16 = 18;
/// Move into the netns behind this fd.
pub const IFLA_NET_NS_FD: u16 = 28;
/// `IFLA_INFO_KIND`.
pub const IFLA_INFO_KIND: u16 = 1;
/// `IFLA_INFO_DATA`.
pub const IFLA_INFO_DATA: u16 = 2;
/// `VETH_INFO_PEER`.
pub const VETH_INFO_PEER: u16 = 1;
/// `IFF_UP`.
pub const IFF_UP: u32 = 1;

/// `IFA_ADDRESS`.
pub const IFA_ADDRESS: u16 = 1;
/// `IFA_LOCAL`.
pub const IFA_LOCAL: u16 = 2;

/// `RTA_DST`.
pub const RTA_DST: u16 = 1;
/// `RTA_OIF`.
pub const RTA_OIF: u16 = 4;
/// `RTA_GATEWAY`.
pub const RTA_GATEWAY: u16 = 5;
/// `RTA_METRICS`.
pub const RTA_METRICS: u16 = 8;
/// `RTA_TABLE`.
pub const RTA_TABLE: u16 = 15;
/// `RTAX_MTU`.
pub const RTAX_MTU: u16 = 2;
/// `RTAX_ADVMSS`.
pub const RTAX_ADVMSS: u16 = 8;
/// The main routing table.
pub const RT_TABLE_MAIN: u8 = 254;
/// `RTPROT_BOOT` (what `ip route add` uses).
pub const RTPROT_BOOT: u8 = 3;
/// Scope universe.
pub const RT_SCOPE_UNIVERSE: u8 = 0;
/// Scope "nowhere": matches any scope when deleting routes.
pub const RT_SCOPE_NOWHERE: u8 = 255;
/// Scope link.
pub const RT_SCOPE_LINK: u8 = 253;
/// `RTN_UNICAST`.
pub const RTN_UNICAST: u8 = 1;

/// `NDA_DST`.
pub const NDA_DST: u16 = 1;
/// `NDA_LLADDR`.
pub const NDA_LLADDR: u16 = 2;
/// `NUD_PERMANENT`.
pub const NUD_PERMANENT: u16 = 0x80;

/// `AF_INET`.
pub const AF_INET: u8 = 2;
/// `AF_UNSPEC`.
pub const AF_UNSPEC: u8 = 0;

/// `NFNL_SUBSYS_NFTABLES` (`linux/netfilter/nfnetlink.h`): message types are `subsys << 8 | msg`.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFT_MSG_GETTABLE` (`linux/netfilter/nf_tables.h`).
pub const NFT_MSG_GETTABLE: u16 = 1;
/// `NFT_MSG_DELTABLE`.
pub const NFT_MSG_DELTABLE: u16 = 2;
/// `NFNL_MSG_BATCH_BEGIN` (`linux/netfilter/nfnetlink.h`): nf_tables changes travel in a batch.
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
/// `NFNL_MSG_BATCH_END`.
pub const NFNL_MSG_BATCH_END: u16 = 0x11;
/// `NFTA_TABLE_NAME`.
pub const NFTA_TABLE_NAME: u16 = 1;
/// `NFTA_TABLE_HANDLE` (big-endian u64).
pub const NFTA_TABLE_HANDLE: u16 = 4;
/// `NFPROTO_IPV4`.
pub const NFPROTO_IPV4: u8 = 2;

/// Builds one netlink message.
#[derive(Debug)]
pub struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    /// Starts a message of type `ty` with `flags` (NLM_F_REQUEST is added).
    pub fn new(ty: u16, flags: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0; 4]); // length, filled by finish()
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&[0; 8]); // seq, pid
        Self { buf }
    }
    /// `struct ifinfomsg`.
    pub fn ifinfomsg(mut self, index: i32, flags: u32, change: u32) -> Self {
        self.buf.extend_from_slice(&[AF_UNSPEC, 0, 0, 0]);
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&change.to_ne_bytes());
        self
    }
    /// `struct ifaddrmsg`.
    pub fn ifaddrmsg(mut self, prefix: u8, scope: u8, index: u32) -> Self {
        self.buf.extend_from_slice(&[AF_INET, prefix, 0, scope]);
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self
    }
    /// `struct rtmsg` (IPv4, main table, unicast).
    pub fn rtmsg(mut self, dst_len: u8, scope: u8) -> Self {
        self.buf.extend_from_slice(&[
            AF_INET,
            dst_len,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            scope,
            RTN_UNICAST,
        ]);
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self
    }
    /// `struct nfgenmsg` (nfnetlink): family, version `NFNETLINK_V0`, resource id 0.
    pub fn nfgenmsg(mut self, family: u8) -> Self {
        self.buf.extend_from_slice(&[family, 0, 0, 0]);
        self
    }
    /// `struct nfgenmsg` of a batch delimiter: resource id = the subsystem (big-endian).
    pub fn nfgenmsg_batch(mut self, subsys: u16) -> Self {
        self.buf.extend_from_slice(&[AF_UNSPEC, 0]);
        self.buf.extend_from_slice(&subsys.to_be_bytes());
        self
    }
    /// `struct ndmsg`.
    pub fn ndmsg(mut self, index: i32, state: u16) -> Self {
        self.buf.extend_from_slice(&[AF_INET, 0, 0, 0]);
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self.buf.extend_from_slice(&state.to_ne_bytes());
        self.buf.extend_from_slice(&[0, 0]);
        self
    }
    /// An attribute with raw payload.
    pub fn attr(mut self, ty: u16, data: &[u8]) -> Self {
        self.push_attr(ty, data);
        self
    }
    fn push_attr(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
    /// A NUL-terminated string attribute.
    pub fn attr_str(self, ty: u16, s: &str) -> Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v)
    }
    /// A u32 attribute.
    pub fn attr_u32(self, ty: u16, v: u32) -> Self {
        self.attr(ty, &v.to_ne_bytes())
    }
    /// Opens a nested attribute; close it with [`Builder::end`].
    pub fn begin(mut self, ty: u16) -> (Self, usize) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        (self, at)
    }
    /// Closes the nested attribute opened at `at`.
    pub fn end(mut self, at: usize) -> Self {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }
    /// Raw bytes inside a nest (e.g. the peer's `ifinfomsg` in `VETH_INFO_PEER`).
    pub fn raw(mut self, f: impl FnOnce(Builder) -> Builder) -> Self {
        let inner = f(Builder { buf: Vec::new() });
        self.buf.extend_from_slice(&inner.buf);
        self
    }
    /// Finishes with sequence number `seq`.
    pub fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// One parsed message header and payload.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    /// Type.
    pub ty: u16,
    /// Flags.
    pub flags: u16,
    /// Sequence number.
    pub seq: u32,
    /// Payload after the header.
    pub payload: &'a [u8],
}

/// Splits a receive buffer into messages (stops at the first malformed one).
pub fn messages(mut buf: &[u8]) -> Vec<Msg<'_>> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        out.push(Msg {
            ty: u16_at(buf, 4),
            flags: u16_at(buf, 6),
            seq: u32_at(buf, 8),
            payload: &buf[NLMSG_HDRLEN..len],
        });
        buf = &buf[align(len).min(buf.len())..];
    }
    out
}

/// Iterates `(type, payload)` over attributes (type with the nested/byte-order bits masked).
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16_at(buf, 0) as usize;
        if len < 4 || len > buf.len() {
            return None;
        }
        let item = (u16_at(buf, 2) & 0x3fff, &buf[4..len]);
        buf = &buf[align(len).min(buf.len())..];
        Some(item)
    })
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Reads a native-endian u16 at `at` (0 when out of range).
pub fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_ne_bytes([s[0], s[1]]))
}

/// Reads a native-endian u32 at `at` (0 when out of range).
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_nested_attributes() {
        let (b, at) = Builder::new(RTM_NEWLINK, NLM_F_ACK)
            .ifinfomsg(0, 0, 0)
            .attr_str(IFLA_IFNAME, "abc")
            .begin(IFLA_LINKINFO);
        let msg = b.attr_str(IFLA_INFO_KIND, "veth").end(at).finish(7);
        let parsed = messages(&msg);
        assert_eq!(parsed.len(), 1);
        assert_eq!((parsed[0].ty, parsed[0].seq), (RTM_NEWLINK, 7));
        assert_eq!(parsed[0].flags, NLM_F_ACK | NLM_F_REQUEST);
        let top: Vec<_> = attrs(&parsed[0].payload[16..]).collect();
        assert_eq!(top[0], (IFLA_IFNAME, &b"abc\0"[..]));
        assert_eq!(top[1].0, IFLA_LINKINFO);
        let inner: Vec<_> = attrs(top[1].1).collect();
        assert_eq!(inner, vec![(IFLA_INFO_KIND, &b"veth\0"[..])]);
        assert_eq!(msg.len() % 4, 0);
    }

    #[test]
    fn malformed_input_does_not_panic() {
        for junk in [&[][..], &[1, 2, 3], &[255; 40], &[4, 0, 0, 0, 0, 0, 0, 0]] {
            let _ = messages(junk);
            let _ = attrs(junk).count();
        }
    }
}
