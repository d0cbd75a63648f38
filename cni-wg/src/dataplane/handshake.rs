//! Handshake admission and roaming rules (pure): what an incoming datagram must prove before it costs
//! a Diffie-Hellman operation, and which datagrams may move a peer's endpoint.
//!
//! Order for handshake messages (initiation, response), cheapest first: parse → mac1 (keyed BLAKE2s
//! with this node's public key) → under load, mac2 with a cookie bound to the source address (else a
//! cookie reply, and nothing else) → the global handshake budget → only then X25519.

#![forbid(unsafe_code)]

use boringtun::noise::Packet;

/// Handshake messages per second (counted at every mac1 check: the loop's and the tunnel's, so an
/// admitted message counts twice) above which a valid mac2 (a cookie) is demanded.
pub const UNDER_LOAD: u64 = 128;
/// Handshake messages per second that may reach Diffie-Hellman, whatever their cookies say: the
/// bound on handshake CPU (each costs 2–5 X25519 operations).
pub const HANDSHAKE_BUDGET: u32 = 256;

/// The four WireGuard message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Initiation,
    Response,
    CookieReply,
    Data,
}

impl Kind {
    pub fn of(p: &Packet<'_>) -> Kind {
        match p {
            Packet::HandshakeInit(_) => Kind::Initiation,
            Packet::HandshakeResponse(_) => Kind::Response,
            Packet::PacketCookieReply(_) => Kind::CookieReply,
            Packet::PacketData(_) => Kind::Data,
        }
    }
}

/// What the tunnel made of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered with a message of this type (2 response, 3 cookie reply, 4 data/keepalive).
    Sent(u8),
    /// A decrypted packet whose inner source the peer may use.
    Delivered,
    /// Accepted, nothing to send or deliver (a keepalive, a cookie reply taken in).
    Done,
    /// Refused (bad MAC, replay, wrong key, inner source not allowed…).
    Rejected,
}

/// Whether the datagram proves that its sender holds the peer's key *now*, so the peer's endpoint
/// may move to its source address: an authenticated data packet or keepalive, or a handshake
/// response that completed our own initiation (answered with a keepalive). An initiation proves
/// nothing yet (it can be a replay, or a forgery answered with a cookie); a cookie reply is made
/// with public values only.
pub fn authenticates(kind: Kind, outcome: Outcome) -> bool {
    matches!(
        (kind, outcome),
        (Kind::Data, Outcome::Delivered | Outcome::Done) | (Kind::Response, Outcome::Sent(4))
    )
}

/// A token bucket: `rate` tokens per second, at most `rate` saved up.
#[derive(Debug, Clone)]
pub struct Budget {
    rate: u32,
    tokens: u32,
    /// Fractions of a token carried between refills, in millitokens.
    carry: u64,
}

impl Budget {
    pub fn new(rate: u32) -> Self {
        Budget {
            rate,
            tokens: rate,
            carry: 0,
        }
    }

    /// Adds what `elapsed` earns.
    pub fn refill(&mut self, elapsed: std::time::Duration) {
        let milli = u64::from(self.rate) * elapsed.as_millis().min(10_000) as u64 + self.carry;
        let whole = milli / 1000;
        self.carry = milli % 1000;
        self.tokens = (u64::from(self.tokens) + whole).min(u64::from(self.rate)) as u32;
        if self.tokens == self.rate {
            self.carry = 0;
        }
    }

    /// Takes one token; `false` when the budget is spent.
    pub fn take(&mut self) -> bool {
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_authenticated_traffic_roams() {
        use Kind::*;
        use Outcome::*;
        let table = [
            (Data, Delivered, true),
            (Data, Done, true),
            (Data, Rejected, false),
            (Response, Sent(4), true),
            (Response, Sent(3), false),
            (Response, Rejected, false),
            (Initiation, Sent(2), false),
            (Initiation, Sent(3), false),
            (Initiation, Rejected, false),
            (CookieReply, Done, false),
            (CookieReply, Rejected, false),
        ];
        for (kind, outcome, want) in table {
            assert_eq!(authenticates(kind, outcome), want, "{kind:?} {outcome:?}");
        }
    }

    #[test]
    fn budget_refills_at_its_rate_and_caps() {
        let mut b = Budget::new(10);
        assert_eq!((0..20).filter(|_| b.take()).count(), 10, "starts full");
        b.refill(Duration::from_millis(150));
        assert_eq!((0..20).filter(|_| b.take()).count(), 1, "1.5 tokens → 1");
        b.refill(Duration::from_millis(50));
        assert_eq!(
            (0..20).filter(|_| b.take()).count(),
            1,
            "the carried half counts"
        );
        b.refill(Duration::from_secs(60));
        assert_eq!(
            (0..20).filter(|_| b.take()).count(),
            10,
            "capped at one second"
        );
    }
}
