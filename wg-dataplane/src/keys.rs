//! WireGuard keys: generation from the kernel's CSPRNG and the base64 form `wg` uses.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use boringtun::x25519;

use super::{Error, Result};

/// A Curve25519 private key. `Debug` never prints the key.
#[derive(Clone)]
pub struct PrivateKey(x25519::StaticSecret);

/// A Curve25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PrivateKey {
    /// A fresh key from the kernel's CSPRNG (`getrandom(2)`, through the `getrandom` crate).
    pub fn generate() -> Result<Self> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|e| Error::Random {
            source: std::io::Error::from(e),
        })?;
        Ok(PrivateKey(x25519::StaticSecret::from(b)))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.0).to_bytes())
    }

    /// Base64, as `wg genkey` prints it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.to_bytes())
    }

    pub(crate) fn secret(&self) -> &x25519::StaticSecret {
        &self.0
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public={})", self.public_key())
    }
}

fn decode32(what: &'static str, s: &str) -> Result<[u8; 32]> {
    let bytes = STANDARD.decode(s.trim()).map_err(|e| Error::Key {
        what,
        reason: format!("not base64: {e}"),
    })?;
    bytes.try_into().map_err(|b: Vec<u8>| Error::Key {
        what,
        reason: format!("{} bytes, want 32", b.len()),
    })
}

impl FromStr for PrivateKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(PrivateKey(x25519::StaticSecret::from(decode32(
            "private key",
            s,
        )?)))
    }
}

impl FromStr for PublicKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(PublicKey(decode32("public key", s)?))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_base64() {
        let k = PrivateKey::generate().unwrap();
        let again: PrivateKey = k.to_base64().parse().unwrap();
        assert_eq!(again.public_key(), k.public_key());
        let p: PublicKey = k.public_key().to_string().parse().unwrap();
        assert_eq!(p, k.public_key());
        assert_ne!(PrivateKey::generate().unwrap().public_key(), k.public_key());
    }

    #[test]
    fn known_vector_matches_wg_pubkey() {
        // RFC 7748 section 6.1: Alice's private key and public key.
        let sk = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .unwrap();
        let pk = hex::decode("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
            .unwrap();
        let k: PrivateKey = STANDARD.encode(&sk).parse().unwrap();
        assert_eq!(k.public_key().0.to_vec(), pk);
    }

    #[test]
    fn bad_keys_say_why() {
        let e = "abc".parse::<PublicKey>().unwrap_err().to_string();
        assert!(e.contains("public key"), "{e}");
        let e = STANDARD
            .encode([1u8; 31])
            .parse::<PrivateKey>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("31 bytes"), "{e}");
    }
}
