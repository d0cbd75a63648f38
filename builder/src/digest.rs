//! sha256 digests in OCI form (`sha256:<64 hex>`).

use sha2::{Digest as _, Sha256};

/// Returns the OCI digest string of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Returns the hex part of a valid `sha256:` digest, or `None` when it is not one.
pub fn hex_part(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

/// Streaming sha256 that yields an OCI digest string.
#[derive(Debug, Default, Clone)]
pub struct Hasher(Sha256);

impl Hasher {
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    /// Feeds a length-prefixed string, so concatenations cannot collide.
    pub fn field(&mut self, data: &[u8]) {
        self.0.update((data.len() as u64).to_le_bytes());
        self.0.update(data);
    }
    /// The `sha256:` digest.
    pub fn finish(self) -> String {
        format!("sha256:{}", hex::encode(self.0.finalize()))
    }
    /// The raw 32 bytes.
    pub fn finish_bytes(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_part_validates() {
        let d = sha256(b"abc");
        assert_eq!(hex_part(&d).map(str::len), Some(64));
        assert!(hex_part("sha256:ABC").is_none());
        assert!(hex_part("md5:00").is_none());
        assert!(hex_part(&d[..70]).is_none());
    }
}
