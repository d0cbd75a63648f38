//! Handshake admission and roaming rules (pure): what an incoming datagram must prove before it costs
//! a Diffie-Hellman operation, and which datagrams may move a peer's endpoint.
//!
//! Order for handshake messages (initiation, response), cheapest first: parse → mac1 (keyed BLAKE2s
//! with this node's public key) → under load, mac2 with a cookie bound to the source address (else a
//! cookie reply, at most [`COOKIE_REPLIES_PER_SOURCE`] per second to one source address, and nothing
//! else) → the source's share of the handshake budget ([`HANDSHAKES_PER_SOURCE`]) → the global
//! handshake budget → only then X25519.

#![forbid(unsafe_code)]

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;

use boringtun::noise::Packet;

/// Handshake messages per second (counted at every mac1 check: the loop's and the tunnel's, so an
/// admitted message counts twice) above which a valid mac2 (a cookie) is demanded.
pub const UNDER_LOAD: u64 = 128;
/// Handshake messages per second that may reach Diffie-Hellman, whatever their cookies say: the
/// bound on handshake CPU (each costs 2–5 X25519 operations).
pub const HANDSHAKE_BUDGET: u32 = 256;
/// Handshake messages per second one source address may take from [`HANDSHAKE_BUDGET`] (and at most
/// as many saved up): one address that answers cookies cannot spend the budget of the real peers.
pub const HANDSHAKES_PER_SOURCE: u32 = 16;
/// Cookie replies per second to one source address (and at most as many saved up). A real initiator
/// needs one per cookie lifetime (2 minutes); beyond this, a message without a valid mac2 is dropped
/// after the mac checks, before the cookie is encrypted or anything is sent.
pub const COOKIE_REPLIES_PER_SOURCE: u32 = 4;
/// Slots of the per-source tables: addresses hash (keyed, seeded per process) into this many token
/// buckets, so the tables never grow; addresses that share a slot share its tokens. With every slot
/// drained (a flood from spoofed addresses), at most `SOURCE_SLOTS × COOKIE_REPLIES_PER_SOURCE`
/// cookie replies leave per second.
pub const SOURCE_SLOTS: usize = 4096;

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

/// One token bucket per source address (hashed into [`SOURCE_SLOTS`] slots), refilled lazily from
/// the caller's clock (milliseconds since any fixed start): `rate` tokens per second, at most `rate`
/// saved up. Pure: no clock, no I/O; a fixed-size table allocated once.
#[derive(Debug, Clone)]
pub struct SourceBuckets {
    rate: u32,
    hasher: RandomState,
    /// Per slot: millitokens and the clock (ms) of its last refill.
    slots: Vec<(u32, u64)>,
}

impl SourceBuckets {
    pub fn new(rate: u32) -> Self {
        SourceBuckets {
            rate,
            hasher: RandomState::new(),
            slots: vec![(rate * 1000, 0); SOURCE_SLOTS],
        }
    }

    fn slot(&mut self, ip: IpAddr, now_ms: u64) -> &mut (u32, u64) {
        // IPv4 and IPv4-mapped IPv6 are one source.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let i = (self.hasher.hash_one(ip) % SOURCE_SLOTS as u64) as usize;
        let full = self.rate * 1000;
        let slot = &mut self.slots[i];
        let earned = now_ms.saturating_sub(slot.1).min(10_000) * u64::from(self.rate);
        slot.0 = (u64::from(slot.0) + earned).min(u64::from(full)) as u32;
        slot.1 = slot.1.max(now_ms);
        slot
    }

    /// Whether `ip` has a token now (takes none).
    pub fn has(&mut self, ip: IpAddr, now_ms: u64) -> bool {
        self.slot(ip, now_ms).0 >= 1000
    }

    /// Takes one of `ip`'s tokens; `false` when it has none.
    pub fn take(&mut self, ip: IpAddr, now_ms: u64) -> bool {
        let slot = self.slot(ip, now_ms);
        if slot.0 < 1000 {
            return false;
        }
        slot.0 -= 1000;
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

    #[test]
    fn each_source_has_its_own_bucket() {
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let mut t = SourceBuckets::new(4);
        assert_eq!((0..10).filter(|_| t.take(a, 0)).count(), 4, "a's burst");
        assert!(!t.has(a, 0), "a is spent");
        // Unless the two addresses share a slot (1 in SOURCE_SLOTS), b is untouched.
        let collide = t.hasher.hash_one(a) % SOURCE_SLOTS as u64
            == t.hasher.hash_one(b) % SOURCE_SLOTS as u64;
        assert_eq!(t.has(b, 0), !collide);
        assert!(
            !t.take(a, 249),
            "a quarter second earns one token only at 250 ms"
        );
        assert!(t.take(a, 250));
        assert!(!t.take(a, 250));
        assert_eq!(
            (0..10).filter(|_| t.take(a, 60_000)).count(),
            4,
            "capped at one second's worth"
        );
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(
            !t.has(mapped, 60_000),
            "a v4-mapped address is the same source"
        );
    }

    #[test]
    fn a_clock_going_back_earns_nothing() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let mut t = SourceBuckets::new(2);
        assert!(t.take(a, 5_000) && t.take(a, 5_000));
        assert!(!t.take(a, 1_000));
        assert!(!t.take(a, 5_400));
        assert!(t.take(a, 5_500));
    }
}
