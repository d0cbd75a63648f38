//! ISO 9660 images with an El Torito EFI boot entry.
//!
//! Layout (2048-byte blocks): 0–15 system area (zeros), 16 primary volume descriptor,
//! 17 El Torito boot record, 18 terminator, 19/20 little-/big-endian path tables,
//! 21 root directory, 22 boot catalog, 23… the EFI boot image (a FAT volume), also
//! visible as `/EFIBOOT.IMG`. The boot image comes last, so firmware that takes the rest of
//! the medium as the boot partition (EDK2 does when the catalog's sector count is below 2)
//! sees exactly the image.

use super::content::{Sink, write_zeros};
use super::error::{Error, Result};
use super::time::{iso_record_date, iso_volume_date};

pub(crate) const BLOCK: u64 = 2048;
const PVD_LBA: u32 = 16;
const BOOT_RECORD_LBA: u32 = 17;
const PATH_L_LBA: u32 = 19;
const PATH_M_LBA: u32 = 20;
const ROOT_LBA: u32 = 21;
const CATALOG_LBA: u32 = 22;
const IMAGE_LBA: u32 = 23;
/// El Torito platform ID of EFI.
const PLATFORM_EFI: u8 = 0xef;
const VOLUME_ID: &str = "KITFLEET";

/// The metadata of an ISO image around one boot image of `image_len` bytes.
#[derive(Debug, Clone)]
pub(crate) struct IsoLayout {
    image_len: u64,
    mtime: u64,
}

fn both_u32(v: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&v.to_le_bytes());
    b[4..].copy_from_slice(&v.to_be_bytes());
    b
}

fn both_u16(v: u16) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&v.to_le_bytes());
    b[2..].copy_from_slice(&v.to_be_bytes());
    b
}

fn padded(text: &str, len: usize, pad: u8) -> Vec<u8> {
    let mut v = text.as_bytes().to_vec();
    v.resize(len, pad);
    v
}

impl IsoLayout {
    pub(crate) fn new(image_len: u64, mtime: u64) -> Result<Self> {
        let limit = u64::from(u32::MAX) - BLOCK + 1;
        if image_len > limit {
            return Err(Error::IsoTooLarge {
                size: image_len,
                limit,
            });
        }
        Ok(IsoLayout { image_len, mtime })
    }

    fn image_blocks(&self) -> u64 {
        self.image_len.div_ceil(BLOCK)
    }

    /// Total size of the ISO in bytes.
    pub(crate) fn len(&self) -> u64 {
        (u64::from(IMAGE_LBA) + self.image_blocks()) * BLOCK
    }

    fn record(&self, name: &[u8], lba: u32, size: u32, dir: bool) -> Vec<u8> {
        let len = 33 + name.len() + (name.len() + 1) % 2;
        let mut r = vec![0u8; len];
        r[0] = len as u8;
        r[2..10].copy_from_slice(&both_u32(lba));
        r[10..18].copy_from_slice(&both_u32(size));
        r[18..25].copy_from_slice(&iso_record_date(self.mtime));
        r[25] = if dir { 2 } else { 0 };
        r[28..32].copy_from_slice(&both_u16(1));
        r[32] = name.len() as u8;
        r[33..33 + name.len()].copy_from_slice(name);
        r
    }

    fn primary_descriptor(&self) -> Vec<u8> {
        let mut d = vec![0u8; BLOCK as usize];
        d[0] = 1;
        d[1..6].copy_from_slice(b"CD001");
        d[6] = 1;
        d[8..40].copy_from_slice(&padded("", 32, b' '));
        d[40..72].copy_from_slice(&padded(VOLUME_ID, 32, b' '));
        d[80..88].copy_from_slice(&both_u32((self.len() / BLOCK) as u32));
        d[120..124].copy_from_slice(&both_u16(1));
        d[124..128].copy_from_slice(&both_u16(1));
        d[128..132].copy_from_slice(&both_u16(BLOCK as u16));
        d[132..140].copy_from_slice(&both_u32(10));
        d[140..144].copy_from_slice(&PATH_L_LBA.to_le_bytes());
        d[148..152].copy_from_slice(&PATH_M_LBA.to_be_bytes());
        d[156..190].copy_from_slice(&self.record(&[0], ROOT_LBA, BLOCK as u32, true));
        for (start, len) in [
            (190, 128),
            (318, 128),
            (446, 128),
            (702, 37),
            (739, 37),
            (776, 37),
        ] {
            d[start..start + len].fill(b' ');
        }
        d[574..702].copy_from_slice(&padded("KITFLEET-BUILD", 128, b' '));
        let date = iso_volume_date(self.mtime);
        d[813..830].copy_from_slice(&date);
        d[830..847].copy_from_slice(&date);
        for start in [847, 864] {
            d[start..start + 16].fill(b'0');
        }
        d[881] = 1;
        d
    }

    fn boot_record(&self) -> Vec<u8> {
        let mut d = vec![0u8; BLOCK as usize];
        d[1..6].copy_from_slice(b"CD001");
        d[6] = 1;
        d[7..39].copy_from_slice(&padded("EL TORITO SPECIFICATION", 32, 0));
        d[71..75].copy_from_slice(&CATALOG_LBA.to_le_bytes());
        d
    }

    fn terminator(&self) -> Vec<u8> {
        let mut d = vec![0u8; BLOCK as usize];
        d[0] = 255;
        d[1..6].copy_from_slice(b"CD001");
        d[6] = 1;
        d
    }

    fn path_table(&self, big_endian: bool) -> Vec<u8> {
        let mut d = vec![0u8; BLOCK as usize];
        d[0] = 1;
        let lba = if big_endian {
            ROOT_LBA.to_be_bytes()
        } else {
            ROOT_LBA.to_le_bytes()
        };
        d[2..6].copy_from_slice(&lba);
        let parent = if big_endian {
            1u16.to_be_bytes()
        } else {
            1u16.to_le_bytes()
        };
        d[6..8].copy_from_slice(&parent);
        d
    }

    fn root_directory(&self) -> Vec<u8> {
        let mut d = Vec::with_capacity(BLOCK as usize);
        d.extend(self.record(&[0], ROOT_LBA, BLOCK as u32, true));
        d.extend(self.record(&[1], ROOT_LBA, BLOCK as u32, true));
        d.extend(self.record(b"BOOT.CAT;1", CATALOG_LBA, BLOCK as u32, false));
        d.extend(self.record(b"EFIBOOT.IMG;1", IMAGE_LBA, self.image_len as u32, false));
        d.resize(BLOCK as usize, 0);
        d
    }

    /// The El Torito sector count, in 512-byte virtual sectors; 0 when it does not fit
    /// 16 bits (firmware then uses the rest of the medium, which is exactly the image).
    pub(crate) fn catalog_sector_count(&self) -> u16 {
        u16::try_from(self.image_len.div_ceil(512)).unwrap_or(0)
    }

    fn boot_catalog(&self) -> Vec<u8> {
        let mut d = vec![0u8; BLOCK as usize];
        d[0] = 1;
        d[1] = PLATFORM_EFI;
        d[4..28].copy_from_slice(&padded(VOLUME_ID, 24, 0));
        d[30] = 0x55;
        d[31] = 0xaa;
        let sum = d[..32].chunks_exact(2).fold(0u16, |s, w| {
            s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
        });
        d[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
        let e = &mut d[32..64];
        e[0] = 0x88; // bootable
        e[1] = 0; // no emulation
        e[6..8].copy_from_slice(&self.catalog_sector_count().to_le_bytes());
        e[8..12].copy_from_slice(&IMAGE_LBA.to_le_bytes());
        d
    }

    /// Writes every block before the boot image.
    pub(crate) fn write_head(&self, w: &mut dyn Sink) -> std::io::Result<()> {
        write_zeros(w, u64::from(PVD_LBA) * BLOCK)?;
        w.write_all(&self.primary_descriptor())?;
        debug_assert_eq!(BOOT_RECORD_LBA, PVD_LBA + 1);
        w.write_all(&self.boot_record())?;
        w.write_all(&self.terminator())?;
        w.write_all(&self.path_table(false))?;
        w.write_all(&self.path_table(true))?;
        w.write_all(&self.root_directory())?;
        w.write_all(&self.boot_catalog())
    }

    /// Pads the boot image to a whole block.
    pub(crate) fn write_tail(&self, w: &mut dyn Sink) -> std::io::Result<()> {
        write_zeros(w, self.image_blocks() * BLOCK - self.image_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_validates_and_points_at_the_image() {
        let iso = IsoLayout::new(3 * 1024 * 1024 + 5, 0).unwrap();
        let cat = iso.boot_catalog();
        let sum = cat[..32].chunks_exact(2).fold(0u16, |s, w| {
            s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
        });
        assert_eq!(sum, 0);
        assert_eq!(u16::from_le_bytes([cat[38], cat[39]]), 6145);
        assert_eq!(
            u32::from_le_bytes(cat[40..44].try_into().unwrap()),
            IMAGE_LBA
        );
        let mut head = Vec::new();
        iso.write_head(&mut head).unwrap();
        assert_eq!(head.len() as u64, u64::from(IMAGE_LBA) * BLOCK);
        assert_eq!(&head[32768 + 1..32768 + 6], b"CD001");
        assert_eq!(iso.len() % BLOCK, 0);
    }

    #[test]
    fn large_images_use_sector_count_zero_and_huge_ones_fail() {
        assert_eq!(
            IsoLayout::new(64 << 20, 0).unwrap().catalog_sector_count(),
            0
        );
        let err = IsoLayout::new(5 << 30, 0).unwrap_err();
        assert!(
            matches!(err, Error::IsoTooLarge { size, .. } if size == 5 << 30),
            "{err}"
        );
    }
}
