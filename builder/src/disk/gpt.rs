//! GPT disks with one EFI system partition, GUIDs derived from the build key.

use std::fmt;

use sha2::{Digest, Sha256};

use super::content::{Sink, write_zeros};
use super::fat_geometry::SECTOR;

/// The ESP starts at 1 MiB, as partitioning tools align it.
pub(crate) const ESP_START_LBA: u64 = 2048;
/// Space kept after the ESP for the backup GPT (1 MiB keeps the disk MiB-aligned).
const TAIL_SECTORS: u64 = 2048;
const ENTRIES: u32 = 128;
const ENTRY_SIZE: u32 = 128;
const ENTRY_SECTORS: u64 = (ENTRIES * ENTRY_SIZE) as u64 / SECTOR;
/// C12A7328-F81F-11D2-BA4B-00A0C93EC93B
const ESP_TYPE: Guid = Guid([
    0xc1, 0x2a, 0x73, 0x28, 0xf8, 0x1f, 0x11, 0xd2, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
]);

/// A GUID in its textual (RFC 4122, big-endian) byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// A version-4-shaped GUID derived from the build key and a purpose label, so that
    /// the same key always gives the same GUID and different purposes different ones.
    pub fn derive(build_key: &[u8; 32], purpose: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"kitfleet-disk-guid\0");
        h.update(purpose.as_bytes());
        h.update([0]);
        h.update(build_key);
        let digest = h.finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&digest[..16]);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }

    /// The mixed-endian form GPT stores on disk.
    pub(crate) fn to_disk(self) -> [u8; 16] {
        let b = self.0;
        [
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The partition table of a disk holding one ESP of `esp_sectors` at [`ESP_START_LBA`].
#[derive(Debug, Clone)]
pub(crate) struct GptLayout {
    pub(crate) disk_guid: Guid,
    pub(crate) esp_guid: Guid,
    pub(crate) esp_sectors: u64,
}

impl GptLayout {
    pub(crate) fn total_sectors(&self) -> u64 {
        ESP_START_LBA + self.esp_sectors + TAIL_SECTORS
    }

    fn last_lba(&self) -> u64 {
        self.total_sectors() - 1
    }

    fn entries(&self) -> Vec<u8> {
        let mut e = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
        e[..16].copy_from_slice(&ESP_TYPE.to_disk());
        e[16..32].copy_from_slice(&self.esp_guid.to_disk());
        e[32..40].copy_from_slice(&ESP_START_LBA.to_le_bytes());
        e[40..48].copy_from_slice(&(ESP_START_LBA + self.esp_sectors - 1).to_le_bytes());
        for (i, unit) in "EFI System Partition".encode_utf16().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
        e
    }

    fn header(&self, primary: bool, entries_crc: u32) -> Vec<u8> {
        let (my, alternate, entries_lba) = if primary {
            (1, self.last_lba(), 2)
        } else {
            (self.last_lba(), 1, self.last_lba() - ENTRY_SECTORS)
        };
        let mut h = vec![0u8; SECTOR as usize];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alternate.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + ENTRY_SECTORS).to_le_bytes());
        h[48..56].copy_from_slice(&(self.last_lba() - ENTRY_SECTORS - 1).to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.to_disk());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&ENTRIES.to_le_bytes());
        h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn protective_mbr(&self) -> Vec<u8> {
        let mut m = vec![0u8; SECTOR as usize];
        let p = 446;
        m[p + 1..p + 4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
        m[p + 4] = 0xee;
        m[p + 5..p + 8].copy_from_slice(&[0xff, 0xff, 0xff]);
        m[p + 8..p + 12].copy_from_slice(&1u32.to_le_bytes());
        let size = (self.total_sectors() - 1).min(u64::from(u32::MAX)) as u32;
        m[p + 12..p + 16].copy_from_slice(&size.to_le_bytes());
        m[510] = 0x55;
        m[511] = 0xaa;
        m
    }

    /// Writes everything before the ESP (sectors 0 … [`ESP_START_LBA`] − 1).
    pub(crate) fn write_head(&self, w: &mut dyn Sink) -> std::io::Result<()> {
        let entries = self.entries();
        let crc = crc32fast::hash(&entries);
        w.write_all(&self.protective_mbr())?;
        w.write_all(&self.header(true, crc))?;
        w.write_all(&entries)?;
        write_zeros(w, (ESP_START_LBA - 2 - ENTRY_SECTORS) * SECTOR)
    }

    /// Writes everything after the ESP, ending with the backup header.
    pub(crate) fn write_tail(&self, w: &mut dyn Sink) -> std::io::Result<()> {
        let entries = self.entries();
        let crc = crc32fast::hash(&entries);
        write_zeros(w, (TAIL_SECTORS - 1 - ENTRY_SECTORS) * SECTOR)?;
        w.write_all(&entries)?;
        w.write_all(&self.header(false, crc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_stable_per_key_and_purpose() {
        let a = Guid::derive(&[1; 32], "disk");
        assert_eq!(a, Guid::derive(&[1; 32], "disk"));
        assert_ne!(a, Guid::derive(&[2; 32], "disk"));
        assert_ne!(a, Guid::derive(&[1; 32], "esp"));
        let text = a.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4", "version nibble in {text}");
        assert!("89ab".contains(&text[19..20]), "variant in {text}");
        assert_eq!(ESP_TYPE.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(&ESP_TYPE.to_disk()[..4], &[0x28, 0x73, 0x2a, 0xc1]);
    }

    #[test]
    fn headers_checksum_and_point_at_each_other() {
        let gpt = GptLayout {
            disk_guid: Guid([7; 16]),
            esp_guid: Guid([9; 16]),
            esp_sectors: 70_000,
        };
        let mut head = Vec::new();
        gpt.write_head(&mut head).unwrap();
        let mut tail = Vec::new();
        gpt.write_tail(&mut tail).unwrap();
        assert_eq!(head.len() as u64, ESP_START_LBA * SECTOR);
        assert_eq!(tail.len() as u64, TAIL_SECTORS * SECTOR);
        let primary = &head[512..1024];
        let backup = &tail[tail.len() - 512..];
        for h in [primary, backup] {
            let mut copy = h[..92].to_vec();
            let stored = u32::from_le_bytes(copy[16..20].try_into().unwrap());
            copy[16..20].fill(0);
            assert_eq!(crc32fast::hash(&copy), stored);
        }
        let lba = |h: &[u8], o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
        assert_eq!(lba(primary, 32), gpt.last_lba());
        assert_eq!(lba(backup, 24), gpt.last_lba());
        assert_eq!(lba(backup, 32), 1);
        assert!(lba(primary, 48) >= ESP_START_LBA + gpt.esp_sectors - 1);
    }
}
