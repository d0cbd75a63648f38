//! The two nf_tables requests Kitfleet makes over `NETLINK_NETFILTER`: read a table's handle, delete a table.
//! `netlink-packet-route` has no nf_tables messages; [`NftMessage`] is the small typed message (an `nfgenmsg` and
//! attributes) that `netlink-packet-core` carries, so it shares the transport and the reply checks of rtnetlink.

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NLM_F_ACK, NetlinkDeserializable, NetlinkHeader,
    NetlinkSerializable, NlaBuffer, NlasIterator, Parseable,
};
use nix::errno::Errno;

use crate::socket::{Failure, Socket};
use crate::{NetlinkError, Result};

/// `NFNL_SUBSYS_NFTABLES` (`linux/netfilter/nfnetlink.h`): message types are `subsys << 8 | msg`.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFT_MSG_GETTABLE` (`linux/netfilter/nf_tables.h`).
const NFT_MSG_GETTABLE: u16 = 1;
/// `NFT_MSG_NEWTABLE`: the answer to a get.
const NFT_MSG_NEWTABLE: u16 = 0;
/// `NFT_MSG_DELTABLE`.
const NFT_MSG_DELTABLE: u16 = 2;
/// `NFNL_MSG_BATCH_BEGIN`: nf_tables changes travel in a batch.
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
/// `NFNL_MSG_BATCH_END`.
const NFNL_MSG_BATCH_END: u16 = 0x11;
/// `NFTA_TABLE_NAME`.
const NFTA_TABLE_NAME: u16 = 1;
/// `NFTA_TABLE_HANDLE` (big-endian u64).
const NFTA_TABLE_HANDLE: u16 = 4;
/// `NFPROTO_IPV4`.
const NFPROTO_IPV4: u8 = 2;

/// One nfnetlink message: type, `struct nfgenmsg` (family, version 0, resource id) and attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftMessage {
    /// `nlmsg_type`.
    pub message_type: u16,
    /// `nfgen_family`.
    pub family: u8,
    /// `res_id` (big-endian on the wire; the subsystem for batch delimiters).
    pub res_id: u16,
    /// Attributes.
    pub attributes: Vec<DefaultNla>,
}

impl NftMessage {
    fn table(msg: u16, name: &str) -> Self {
        let mut v = name.as_bytes().to_vec();
        v.push(0);
        Self {
            message_type: (NFNL_SUBSYS_NFTABLES << 8) | msg,
            family: NFPROTO_IPV4,
            res_id: 0,
            attributes: vec![DefaultNla::new(NFTA_TABLE_NAME, v)],
        }
    }

    fn batch(message_type: u16) -> Self {
        Self {
            message_type,
            family: 0,
            res_id: NFNL_SUBSYS_NFTABLES,
            attributes: Vec::new(),
        }
    }

    /// The table handle of a `NFT_MSG_NEWTABLE` message.
    pub fn table_handle(&self) -> Option<u64> {
        if self.message_type != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE {
            return None;
        }
        self.attributes.iter().find_map(|a| {
            let mut v = [0; 8];
            (netlink_packet_core::Nla::kind(a) == NFTA_TABLE_HANDLE && a.value_len() == 8).then(
                || {
                    a.emit_value(&mut v);
                    u64::from_be_bytes(v)
                },
            )
        })
    }
}

use netlink_packet_core::Nla as _;

impl NetlinkSerializable for NftMessage {
    fn message_type(&self) -> u16 {
        self.message_type
    }
    fn buffer_len(&self) -> usize {
        4 + self.attributes.as_slice().buffer_len()
    }
    fn serialize(&self, buffer: &mut [u8]) {
        buffer[0] = self.family;
        buffer[1] = 0;
        buffer[2..4].copy_from_slice(&self.res_id.to_be_bytes());
        self.attributes.as_slice().emit(&mut buffer[4..]);
    }
}

impl NetlinkDeserializable for NftMessage {
    type Error = DecodeError;
    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        let Some(head) = payload.get(..4) else {
            return Err(DecodeError::from("nfgenmsg shorter than 4 bytes"));
        };
        let mut attributes = Vec::new();
        for nla in NlasIterator::new(&payload[4..]) {
            let nla: NlaBuffer<&[u8]> = nla?;
            attributes.push(DefaultNla::parse(&nla)?);
        }
        Ok(Self {
            message_type: header.message_type,
            family: head[0],
            res_id: u16::from_be_bytes([head[2], head[3]]),
            attributes,
        })
    }
}

fn open(op: &'static str, name: &str) -> Result<Socket> {
    Socket::open(netlink_sys::protocols::NETLINK_NETFILTER).map_err(|source| NetlinkError::Socket {
        op,
        target: name.into(),
        source,
    })
}

/// The handle of nftables table `ip <name>` in the calling thread's network namespace, `None` when there is no
/// such table. A table that was deleted (e.g. `nft flush ruleset`) and created again gets a new handle.
pub fn nft_table_handle(name: &str) -> Result<Option<u64>> {
    const OP: &str = "get nft table";
    let mut s = open(OP, name)?;
    match s.request(NftMessage::table(NFT_MSG_GETTABLE, name), NLM_F_ACK) {
        Ok(replies) => Ok(replies.iter().find_map(NftMessage::table_handle)),
        Err(Failure::Kernel(Errno::ENOENT)) => Ok(None),
        Err(f) => Err(NetlinkError::new(OP, name.into(), f)),
    }
}

/// Deletes nftables table `ip <name>` in the calling thread's network namespace (one batch, as nf_tables requires
/// for changes). `false` when there was no such table.
pub fn nft_delete_table(name: &str) -> Result<bool> {
    const OP: &str = "delete nft table";
    let mut s = open(OP, name)?;
    let (begin, del, end) = (s.next_seq(), s.next_seq(), s.next_seq());
    let mut batch = Socket::encode(NftMessage::batch(NFNL_MSG_BATCH_BEGIN), 0, begin);
    batch.extend(Socket::encode(
        NftMessage::table(NFT_MSG_DELTABLE, name),
        NLM_F_ACK,
        del,
    ));
    batch.extend(Socket::encode(
        NftMessage::batch(NFNL_MSG_BATCH_END),
        0,
        end,
    ));
    let r = s.send(&batch).and_then(|()| s.answer::<NftMessage>(del));
    match r {
        Ok(_) => Ok(true),
        Err(Failure::Kernel(Errno::ENOENT)) => Ok(false),
        Err(f) => Err(NetlinkError::new(OP, name.into(), f)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};

    #[test]
    fn table_messages_round_trip_and_read_the_handle() {
        let mut m = NftMessage::table(NFT_MSG_NEWTABLE, "kitfleet-x");
        (m.attributes).push(DefaultNla::new(
            NFTA_TABLE_HANDLE,
            42u64.to_be_bytes().to_vec(),
        ));
        let bytes = Socket::encode(m.clone(), 0, 3);
        let back = NetlinkMessage::<NftMessage>::deserialize(&bytes).unwrap();
        assert_eq!(back.payload, NetlinkPayload::InnerMessage(m.clone()));
        assert_eq!(m.table_handle(), Some(42));
        assert_eq!(
            NftMessage::table(NFT_MSG_GETTABLE, "x").table_handle(),
            None
        );
        let b = NftMessage::batch(NFNL_MSG_BATCH_BEGIN);
        let bytes = Socket::encode(b, 0, 1);
        assert_eq!(&bytes[16..20], &[0, 0, 0, 10]);
    }
}
