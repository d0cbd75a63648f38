//! Reply parsing and validation (pure, no I/O): one receive buffer in, the messages that answer a request out.
//!
//! Every message in the buffer must carry the request's sequence number and the socket's port id; anything else is
//! refused (a stray or stale message would otherwise be taken for the answer, as the agent's old client did). The
//! answer ends with an `NLMSG_ERROR` (the ACK of a request, code 0, or its refusal) or an `NLMSG_DONE` (the end of a
//! dump, which carries an error code too). [`parse`] never panics, whatever the bytes (`fuzz/` runs it).

use netlink_packet_core::{NetlinkBuffer, NetlinkDeserializable, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use nix::errno::Errno;

/// Why a reply buffer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A message that does not decode (truncated, bad lengths, an attribute of the wrong size…).
    #[error("message at byte {offset} does not decode: {reason}")]
    Decode { offset: usize, reason: String },
    /// A message answering another request.
    #[error("message at byte {offset} has sequence number {got}, the request {want}")]
    Sequence { offset: usize, got: u32, want: u32 },
    /// A message for another socket.
    #[error("message at byte {offset} is addressed to port {got}, this socket is {want}")]
    Port { offset: usize, got: u32, want: u32 },
    /// The kernel dropped messages (`NLMSG_OVERRUN`).
    #[error("the kernel reported an overrun at byte {offset}")]
    Overrun { offset: usize },
    /// A message after the one that ended the answer.
    #[error("message at byte {offset} follows the end of the answer")]
    AfterEnd { offset: usize },
    /// An earlier exchange on this socket failed half-way: its leftovers could be taken for a later answer.
    #[error("the socket lost track of an earlier exchange; open a new one")]
    Desynchronised,
}

/// The messages of one receive buffer that answer a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<I> {
    /// Data messages (a `get`'s object, a dump's entries), in order.
    pub data: Vec<I>,
    /// How the answer ended, if it did in this buffer: `Ok(())` for an ACK or `NLMSG_DONE` with code 0, the errno
    /// of a refusal otherwise. `None`: more is to come (a dump spans several buffers).
    pub end: Option<Result<(), Errno>>,
}

/// Decodes one receive buffer of rtnetlink messages answering request `seq` on the socket with port id `port`.
pub fn parse_route(
    buf: &[u8],
    seq: u32,
    port: u32,
) -> Result<Batch<RouteNetlinkMessage>, ReplyError> {
    parse(buf, seq, port)
}

/// Decodes one receive buffer answering request `seq` on the socket with port id `port` (any netlink family `I`).
pub fn parse<I: NetlinkDeserializable>(
    buf: &[u8],
    seq: u32,
    port: u32,
) -> Result<Batch<I>, ReplyError> {
    let mut batch = Batch {
        data: Vec::new(),
        end: None,
    };
    let mut offset = 0;
    while offset < buf.len() {
        let rest = &buf[offset..];
        let decode = |reason: String| ReplyError::Decode { offset, reason };
        let len = NetlinkBuffer::new_checked(rest)
            .map_err(|e| decode(e.to_string()))?
            .length() as usize;
        let msg =
            NetlinkMessage::<I>::deserialize(&rest[..len]).map_err(|e| decode(e.to_string()))?;
        if batch.end.is_some() {
            return Err(ReplyError::AfterEnd { offset });
        }
        let h = msg.header;
        if h.sequence_number != seq {
            return Err(ReplyError::Sequence {
                offset,
                got: h.sequence_number,
                want: seq,
            });
        }
        if h.port_number != port {
            return Err(ReplyError::Port {
                offset,
                got: h.port_number,
                want: port,
            });
        }
        match msg.payload {
            NetlinkPayload::InnerMessage(m) => batch.data.push(m),
            NetlinkPayload::Error(e) => batch.end = Some(code(e.raw_code())),
            NetlinkPayload::Done(d) => batch.end = Some(code(d.code)),
            NetlinkPayload::Noop => {}
            NetlinkPayload::Overrun(_) => return Err(ReplyError::Overrun { offset }),
            _ => return Err(decode("unknown payload kind".into())),
        }
        // Messages are 4-byte aligned; the last one may lack its padding.
        offset = offset
            .saturating_add(len.next_multiple_of(4))
            .min(buf.len());
    }
    Ok(batch)
}

/// A netlink error code (0 or a negative errno) as a result.
fn code(raw: i32) -> Result<(), Errno> {
    match raw {
        0 => Ok(()),
        n => Err(Errno::from_raw(n.saturating_neg())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{DoneMessage, ErrorMessage, NetlinkHeader, NetlinkSerializable};
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};

    fn emit<I: NetlinkSerializable>(payload: NetlinkPayload<I>, seq: u32, port: u32) -> Vec<u8> {
        let mut h = NetlinkHeader::default();
        h.sequence_number = seq;
        h.port_number = port;
        let mut m = NetlinkMessage::new(h, payload);
        m.finalize();
        let mut b = vec![0; m.buffer_len()];
        m.serialize(&mut b);
        b
    }

    fn link(name: &str) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut l = LinkMessage::default();
        l.header.index = 7;
        l.attributes.push(LinkAttribute::IfName(name.into()));
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l))
    }

    fn ack(code: i32) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut e = ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(code);
        NetlinkPayload::Error(e)
    }

    fn done(code: i32) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut d = DoneMessage::default();
        d.code = code;
        NetlinkPayload::Done(d)
    }

    #[test]
    fn data_then_ack_is_an_answer() {
        let mut buf = emit(link("eth0"), 5, 99);
        buf.extend(emit(ack(0), 5, 99));
        let b = parse_route(&buf, 5, 99).unwrap();
        assert_eq!(b.data.len(), 1);
        assert_eq!(b.end, Some(Ok(())));
        let RouteNetlinkMessage::NewLink(l) = &b.data[0] else {
            panic!("{:?}", b.data[0])
        };
        assert!(l.attributes.contains(&LinkAttribute::IfName("eth0".into())));
    }

    #[test]
    fn refusals_and_dump_ends_carry_the_errno() {
        let b = parse_route(&emit(ack(-libc_enodev()), 1, 2), 1, 2).unwrap();
        assert_eq!(b.end, Some(Err(Errno::ENODEV)));
        let b = parse_route(&emit(done(0), 1, 2), 1, 2).unwrap();
        assert_eq!((b.data.len(), b.end), (0, Some(Ok(()))));
        let b = parse_route(&emit(done(-4), 1, 2), 1, 2).unwrap();
        assert_eq!(b.end, Some(Err(Errno::EINTR)));
        // A dump's first buffer: data, no end yet.
        let b = parse_route(&emit(link("a"), 1, 2), 1, 2).unwrap();
        assert_eq!((b.data.len(), b.end), (1, None));
    }

    fn libc_enodev() -> i32 {
        Errno::ENODEV as i32
    }

    #[test]
    fn a_message_for_another_request_or_socket_is_refused() {
        let mut buf = emit(link("eth0"), 5, 99);
        buf.extend(emit(ack(0), 4, 99));
        assert_eq!(
            parse_route(&buf, 5, 99).unwrap_err(),
            ReplyError::Sequence {
                offset: emit(link("eth0"), 5, 99).len(),
                got: 4,
                want: 5
            }
        );
        let e = parse_route(&emit(ack(0), 5, 98), 5, 99).unwrap_err();
        assert!(
            matches!(
                e,
                ReplyError::Port {
                    got: 98,
                    want: 99,
                    ..
                }
            ),
            "{e}"
        );
        let mut buf = emit(ack(0), 5, 99);
        buf.extend(emit(ack(0), 5, 99));
        assert!(matches!(
            parse_route(&buf, 5, 99),
            Err(ReplyError::AfterEnd { .. })
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let good = emit(link("eth0"), 5, 99);
        for cut in 0..good.len() {
            let r = parse_route(&good[..cut], 5, 99);
            assert!(cut == 0 || r.is_err(), "cut {cut}: {r:?}");
        }
        for junk in [
            &[255u8; 40][..],
            &[16, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            let _ = parse_route(junk, 0, 0);
        }
        // An overrun is never taken for an answer.
        let o: NetlinkPayload<RouteNetlinkMessage> = NetlinkPayload::Overrun(vec![0; 4]);
        assert!(matches!(
            parse_route(&emit(o, 1, 1), 1, 1),
            Err(ReplyError::Overrun { offset: 0 })
        ));
    }
}
