//! The synchronous transport: one `netlink-sys` socket, requests numbered in order, every reply checked by
//! [`crate::reply::parse`] against its request.

use std::io;

use netlink_packet_core::{
    NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable,
};
use nix::errno::Errno;

use crate::reply::{self, ReplyError};

/// How one exchange failed (the caller adds the operation and its target: [`crate::NetlinkError`]).
#[derive(Debug)]
pub(crate) enum Failure {
    Io(io::Error),
    Kernel(Errno),
    Reply(ReplyError),
}

/// A netlink socket bound to the network namespace it was opened in.
#[derive(Debug)]
pub(crate) struct Socket {
    sock: netlink_sys::Socket,
    port: u32,
    seq: u32,
    buf: Vec<u8>,
    /// An exchange stopped before its end: what is left of it could be read as a later answer.
    desynchronised: bool,
}

impl Socket {
    /// Opens and binds a socket of `protocol` (`netlink_sys::protocols::*`) in the calling thread's namespace.
    pub(crate) fn open(protocol: isize) -> io::Result<Self> {
        let mut sock = netlink_sys::Socket::new(protocol)?;
        let addr = sock.bind_auto()?;
        Ok(Self {
            sock,
            port: addr.port_number(),
            seq: 0,
            buf: vec![0; 64 * 1024],
            desynchronised: false,
        })
    }

    /// The next sequence number.
    pub(crate) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Encodes `msg` with `flags` (`NLM_F_REQUEST` is added) and sequence number `seq`.
    pub(crate) fn encode<I: NetlinkSerializable>(msg: I, flags: u16, seq: u32) -> Vec<u8> {
        let mut h = NetlinkHeader::default();
        h.flags = flags | NLM_F_REQUEST;
        h.sequence_number = seq;
        let mut m = NetlinkMessage::new(h, NetlinkPayload::InnerMessage(msg));
        m.finalize();
        let mut b = vec![0; m.buffer_len()];
        m.serialize(&mut b);
        b
    }

    /// Sends one request and returns the data messages of its answer.
    pub(crate) fn request<I>(&mut self, msg: I, flags: u16) -> Result<Vec<I>, Failure>
    where
        I: NetlinkSerializable + NetlinkDeserializable,
    {
        let seq = self.next_seq();
        self.send(&Self::encode(msg, flags, seq))?;
        self.answer(seq)
    }

    /// Sends bytes already encoded (e.g. an nf_tables batch).
    pub(crate) fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        if self.desynchronised {
            return Err(Failure::Reply(ReplyError::Desynchronised));
        }
        self.sock.send(bytes, 0).map(drop).map_err(Failure::Io)
    }

    /// Reads until the answer to `seq` ends.
    pub(crate) fn answer<I: NetlinkDeserializable>(&mut self, seq: u32) -> Result<Vec<I>, Failure> {
        let mut data = Vec::new();
        loop {
            let n = match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) => {
                    self.desynchronised = true;
                    return Err(Failure::Io(e));
                }
            };
            let batch = match reply::parse::<I>(&self.buf[..n.min(self.buf.len())], seq, self.port)
            {
                Ok(b) => b,
                Err(e) => {
                    self.desynchronised = true;
                    return Err(Failure::Reply(e));
                }
            };
            data.extend(batch.data);
            match batch.end {
                None => continue,
                Some(Ok(())) => return Ok(data),
                Some(Err(errno)) => return Err(Failure::Kernel(errno)),
            }
        }
    }
}
