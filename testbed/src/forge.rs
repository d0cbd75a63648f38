//! Forged WireGuard handshake initiations, for the namespace tests and the flood benchmark (test
//! scaffolding, like [`crate::netns`]). Built from the WireGuard paper's message-1 formulas (§5.4.2):
//! anyone who knows a node's public key (it is published on its Node) can make an initiation whose
//! mac1 is valid and whose encrypted static key names any peer; only the timestamp needs the claimed
//! peer's private key, so a forged one carries random bytes there.

use blake2::digest::{FixedOutput, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};
use boringtun::x25519;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag, XChaCha20Poly1305, XNonce};
use kitfleet_dataplane::PublicKey;

const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
const LABEL_MAC1: &[u8] = b"mac1----";
const LABEL_COOKIE: &[u8] = b"cookie--";
/// Size of a handshake initiation on the wire.
pub const INITIATION_LEN: usize = 148;

fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <hmac::SimpleHmac<Blake2s256> as KeyInit>::new_from_slice(key)
        .expect("HMAC takes any key length");
    for p in parts {
        Mac::update(&mut m, p);
    }
    m.finalize_fixed().into()
}

/// KDF2 of the paper: two 32-byte outputs chained from HMAC(key, input).
fn kdf2(key: &[u8], input: &[u8]) -> ([u8; 32], [u8; 32]) {
    let t0 = hmac(key, &[input]);
    let t1 = hmac(&t0, &[&[1]]);
    let t2 = hmac(&t0, &[&t1, &[2]]);
    (t1, t2)
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("getrandom(2)");
    b
}

/// Makes initiations addressed to one responder.
#[derive(Debug, Clone)]
pub struct Forger {
    responder: [u8; 32],
    mac1_key: [u8; 32],
}

impl Forger {
    /// Initiations for the node whose public key is `responder`.
    pub fn new(responder: &PublicKey) -> Self {
        Forger {
            responder: responder.0,
            mac1_key: hash(&[LABEL_MAC1, &responder.0]),
        }
    }

    /// An initiation that claims to come from `claimed` (its static key decrypts to it), with a valid
    /// mac1, a random timestamp (the responder finds out only after two Diffie-Hellman operations)
    /// and no mac2.
    pub fn claiming(&self, claimed: &PublicKey, sender_index: u32) -> [u8; INITIATION_LEN] {
        let mut m = [0u8; INITIATION_LEN];
        m[0] = 1;
        m[4..8].copy_from_slice(&sender_index.to_le_bytes());
        let eph = x25519::StaticSecret::from(random::<32>());
        let eph_public = x25519::PublicKey::from(&eph).to_bytes();
        let ck = hash(&[CONSTRUCTION]);
        let h = hash(&[&hash(&[&ck, IDENTIFIER]), &self.responder]);
        m[8..40].copy_from_slice(&eph_public);
        let h = hash(&[&h, &eph_public]);
        let ck = hmac(&hmac(&ck, &[&eph_public]), &[&[1]]);
        let shared = eph.diffie_hellman(&x25519::PublicKey::from(self.responder));
        let (_, key) = kdf2(&ck, shared.as_bytes());
        let mut stat = claimed.0;
        let tag = ChaCha20Poly1305::new(Key::from_slice(&key))
            .encrypt_in_place_detached(Nonce::from_slice(&[0; 12]), &h, &mut stat)
            .expect("32 bytes always seal");
        m[40..72].copy_from_slice(&stat);
        m[72..88].copy_from_slice(&tag);
        m[88..116].copy_from_slice(&random::<28>());
        self.seal_mac1(&mut m);
        m
    }

    /// Random bytes shaped like an initiation (type 1, right length): mac1 does not verify.
    pub fn garbage(&self) -> [u8; INITIATION_LEN] {
        let mut m: [u8; INITIATION_LEN] = random();
        m[..4].copy_from_slice(&[1, 0, 0, 0]);
        m
    }

    /// Rewrites the sender index of an initiation and recomputes its mac1 (cheap: one keyed BLAKE2s),
    /// so a pool of forged initiations can be replayed as distinct ones.
    pub fn reindex(&self, m: &mut [u8; INITIATION_LEN], sender_index: u32) {
        m[4..8].copy_from_slice(&sender_index.to_le_bytes());
        self.seal_mac1(m);
    }

    /// Opens a cookie reply (type 3, 64 bytes) that answered `answered`, as an initiator that owns
    /// its source address can (the key derives from the responder's public key, the additional data
    /// is the answered message's mac1). The cookie stays valid for that address for two minutes.
    pub fn open_cookie(&self, answered: &[u8; INITIATION_LEN], reply: &[u8]) -> Option<[u8; 16]> {
        if reply.len() != 64 || reply[0] != 3 || reply[4..8] != answered[4..8] {
            return None;
        }
        let key = hash(&[LABEL_COOKIE, &self.responder]);
        let mut cookie = [0u8; 16];
        cookie.copy_from_slice(&reply[32..48]);
        XChaCha20Poly1305::new(Key::from_slice(&key))
            .decrypt_in_place_detached(
                XNonce::from_slice(&reply[8..32]),
                &answered[116..132],
                &mut cookie,
                Tag::from_slice(&reply[48..64]),
            )
            .ok()?;
        Some(cookie)
    }

    /// Seals mac2 (keyed with a cookie from [`Forger::open_cookie`]) into an initiation whose mac1 is
    /// final: what a responder under load demands.
    pub fn seal_mac2(&self, m: &mut [u8; INITIATION_LEN], cookie: &[u8; 16]) {
        let mut mac = <Blake2sMac<blake2::digest::consts::U16> as KeyInit>::new_from_slice(cookie)
            .expect("a 16-byte key");
        Mac::update(&mut mac, &m[..132]);
        m[132..].copy_from_slice(&mac.finalize_fixed());
    }

    fn seal_mac1(&self, m: &mut [u8; INITIATION_LEN]) {
        let mut mac =
            <Blake2sMac<blake2::digest::consts::U16> as KeyInit>::new_from_slice(&self.mac1_key)
                .expect("a 32-byte key");
        Mac::update(&mut mac, &m[..116]);
        m[116..132].copy_from_slice(&mac.finalize_fixed());
        m[132..].fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boringtun::noise::handshake::parse_handshake_anon;
    use boringtun::noise::rate_limiter::RateLimiter;
    use boringtun::noise::{Packet, Tunn};

    #[test]
    fn boringtun_reads_the_claimed_key_and_accepts_mac1() {
        let secret = x25519::StaticSecret::from(random::<32>());
        let public = x25519::PublicKey::from(&secret);
        let claimed = PublicKey(random());
        let f = Forger::new(&PublicKey(public.to_bytes()));
        let mut m = f.claiming(&claimed, 7);
        f.reindex(&mut m, 9);
        let limiter = RateLimiter::new(&public, 100);
        let mut cookie = [0u8; 64];
        let Ok(Packet::HandshakeInit(p)) = limiter.verify_packet(None, &m, &mut cookie) else {
            panic!("mac1 rejected");
        };
        let half = parse_handshake_anon(&secret, &public, &p).unwrap();
        assert_eq!(half.peer_static_public, claimed.0);
        assert_eq!(half.peer_index, 9);
        assert!(
            limiter
                .verify_packet(None, &f.garbage(), &mut cookie)
                .is_err()
        );
        assert!(matches!(
            Tunn::parse_incoming_packet(&f.garbage()),
            Ok(Packet::HandshakeInit(_))
        ));
    }

    #[test]
    fn an_opened_cookie_passes_the_under_load_check() {
        let secret = x25519::StaticSecret::from(random::<32>());
        let public = x25519::PublicKey::from(&secret);
        let f = Forger::new(&PublicKey(public.to_bytes()));
        let limiter = RateLimiter::new(&public, 0); // always under load
        let src = Some("192.0.2.7".parse().unwrap());
        let mut m = f.claiming(&PublicKey(random()), 1);
        let mut reply = [0u8; 64];
        let n = match limiter.verify_packet(src, &m, &mut reply) {
            Err(boringtun::noise::TunnResult::WriteToNetwork(r)) => r.len(),
            _ => panic!("no cookie reply under load"),
        };
        assert!(
            f.open_cookie(&f.garbage(), &reply[..n]).is_none(),
            "another message's reply"
        );
        let cookie = f.open_cookie(&m, &reply[..n]).expect("the cookie opens");
        f.reindex(&mut m, 2);
        f.seal_mac2(&mut m, &cookie);
        assert!(matches!(
            limiter.verify_packet(src, &m, &mut reply),
            Ok(Packet::HandshakeInit(_))
        ));
        let other = Some("192.0.2.8".parse().unwrap());
        assert!(
            limiter.verify_packet(other, &m, &mut reply).is_err(),
            "the cookie is bound to its address"
        );
    }
}
