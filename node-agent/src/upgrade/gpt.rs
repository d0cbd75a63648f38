//! The ESP's GPT partition entry (number, first LBA, size, unique GUID), read from the disk that holds it,
//! for the Hard Drive node of a load option. Parsing is pure; [`locate`] finds the disk of a mounted ESP.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::efi::HdPartition;
use super::{Result, UpgradeError, io};

const LBA: u64 = 512;

fn bad(reason: impl Into<String>) -> UpgradeError {
    UpgradeError::Partition {
        reason: reason.into(),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Partition `number` (1-based) of the GPT on `disk` (512-byte logical blocks).
pub fn read_partition<D: Read + Seek>(disk: &mut D, number: u32) -> Result<HdPartition> {
    let mut header = [0u8; 92];
    disk.seek(SeekFrom::Start(LBA))
        .map_err(|e| bad(e.to_string()))?;
    disk.read_exact(&mut header)
        .map_err(|e| bad(format!("reading the GPT header: {e}")))?;
    if &header[0..8] != b"EFI PART" {
        return Err(bad("LBA 1 holds no GPT header (\"EFI PART\")"));
    }
    let entries_lba = u64_at(&header, 72);
    let count = u32_at(&header, 80);
    let entry_size = u64::from(u32_at(&header, 84));
    if number == 0 || number > count || entry_size < 128 {
        return Err(bad(format!(
            "partition {number} is not among the {count} entries (entry size {entry_size})"
        )));
    }
    let mut e = [0u8; 128];
    disk.seek(SeekFrom::Start(
        entries_lba * LBA + u64::from(number - 1) * entry_size,
    ))
    .map_err(|e| bad(e.to_string()))?;
    disk.read_exact(&mut e)
        .map_err(|e| bad(format!("reading entry {number}: {e}")))?;
    if e[0..16] == [0; 16] {
        return Err(bad(format!("partition entry {number} is unused")));
    }
    let (first, last) = (u64_at(&e, 32), u64_at(&e, 40));
    if last < first {
        return Err(bad(format!(
            "partition {number} ends (LBA {last}) before it starts (LBA {first})"
        )));
    }
    Ok(HdPartition {
        number,
        start_lba: first,
        size_lba: last - first + 1,
        guid: e[16..32].try_into().expect("16 bytes"),
    })
}

/// The disk device and partition number of the file system mounted at `mount` (via
/// /proc/self/mountinfo and /sys/dev/block).
pub fn locate(mount: &Path) -> Result<(PathBuf, u32)> {
    let mount = std::fs::canonicalize(mount).map_err(io(mount))?;
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(io("/proc/self/mountinfo"))?;
    let dev = info
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && Path::new(f[4]) == mount).then(|| f[2].to_string())
        })
        .next_back()
        .ok_or_else(|| bad(format!("{} is not a mount point", mount.display())))?;
    let sys = PathBuf::from(format!("/sys/dev/block/{dev}"));
    let number: u32 = std::fs::read_to_string(sys.join("partition"))
        .map_err(|_| {
            bad(format!(
                "{} (device {dev}) is not on a partition",
                mount.display()
            ))
        })?
        .trim()
        .parse()
        .map_err(|e| bad(format!("{}/partition: {e}", sys.display())))?;
    let real = std::fs::canonicalize(&sys).map_err(io(&sys))?;
    let disk = real
        .parent()
        .and_then(|p| p.file_name())
        .ok_or_else(|| bad(format!("{} has no parent disk", real.display())))?;
    Ok((Path::new("/dev").join(disk), number))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk with a GPT header at LBA 1 (entries at LBA 2, 4 entries of 128 bytes) and entry 2 used.
    fn disk() -> Vec<u8> {
        let mut d = vec![0u8; 4 * 512];
        d[512..520].copy_from_slice(b"EFI PART");
        d[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        d[512 + 80..512 + 84].copy_from_slice(&4u32.to_le_bytes());
        d[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        let e = 1024 + 128;
        d[e..e + 16].copy_from_slice(&[0x28; 16]); // type GUID
        d[e + 16..e + 32].copy_from_slice(&std::array::from_fn::<u8, 16, _>(|i| i as u8 + 1));
        d[e + 32..e + 40].copy_from_slice(&2048u64.to_le_bytes());
        d[e + 40..e + 48].copy_from_slice(&4095u64.to_le_bytes());
        d
    }

    #[test]
    fn reads_a_partition_entry() {
        let p = read_partition(&mut std::io::Cursor::new(disk()), 2).unwrap();
        assert_eq!(p.number, 2);
        assert_eq!(p.start_lba, 2048);
        assert_eq!(p.size_lba, 2048);
        assert_eq!(p.guid, std::array::from_fn(|i| i as u8 + 1));
    }

    #[test]
    fn bad_tables_are_named() {
        let e = read_partition(&mut std::io::Cursor::new(disk()), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("entry 1 is unused"), "{e}");
        let e = read_partition(&mut std::io::Cursor::new(disk()), 5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not among the 4 entries"), "{e}");
        let e = read_partition(&mut std::io::Cursor::new(vec![0u8; 2048]), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("EFI PART"), "{e}");
    }
}
