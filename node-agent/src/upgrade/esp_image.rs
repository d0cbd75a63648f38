//! Reads the UKI out of a `raw-efi` disk image (what a published artifact carries): the GPT's first
//! partition is the ESP, a FAT16 or FAT32 volume (Microsoft's FAT specification: BPB fields, 8.3 directory
//! entries, cluster chains); the UKI is its firmware fallback `EFI/BOOT/BOOTX64.EFI` (short names only).
#![forbid(unsafe_code)]

use std::io::{Read, Seek, SeekFrom, Write};

use super::{Result, UpgradeError};

fn bad(reason: impl Into<String>) -> UpgradeError {
    UpgradeError::Partition {
        reason: format!("raw-efi image: {}", reason.into()),
    }
}

struct Fat<'d, D> {
    disk: &'d mut D,
    cluster_bytes: u64,
    fat_start: u64,
    data_start: u64,
    fat32: bool,
    root: Root,
}

enum Root {
    Fixed { offset: u64, entries: u64 },
    Cluster(u32),
}

fn le(b: &[u8], at: usize, n: usize) -> u64 {
    b[at..at + n]
        .iter()
        .rev()
        .fold(0, |a, &x| (a << 8) | u64::from(x))
}

impl<'d, D: Read + Seek> Fat<'d, D> {
    fn open(disk: &'d mut D, base: u64) -> Result<Self> {
        let mut bpb = [0u8; 512];
        disk.seek(SeekFrom::Start(base))
            .map_err(|e| bad(e.to_string()))?;
        disk.read_exact(&mut bpb)
            .map_err(|e| bad(format!("reading the boot sector: {e}")))?;
        let bps = le(&bpb, 11, 2);
        let spc = le(&bpb, 13, 1);
        let reserved = le(&bpb, 14, 2);
        let nfats = le(&bpb, 16, 1);
        let root_entries = le(&bpb, 17, 2);
        let fat16_size = le(&bpb, 22, 2);
        let fat_size = if fat16_size != 0 {
            fat16_size
        } else {
            le(&bpb, 36, 4)
        };
        if ![512, 1024, 2048, 4096].contains(&bps) || spc == 0 || nfats == 0 || fat_size == 0 {
            return Err(bad("the ESP holds no FAT boot sector"));
        }
        let fat32 = root_entries == 0;
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let fat_start = base + reserved * bps;
        let root_start = fat_start + nfats * fat_size * bps;
        let data_start = root_start + root_sectors * bps;
        let root = if fat32 {
            Root::Cluster(le(&bpb, 44, 4) as u32)
        } else {
            Root::Fixed {
                offset: root_start,
                entries: root_entries,
            }
        };
        Ok(Fat {
            disk,
            cluster_bytes: bps * spc,
            fat_start,
            data_start,
            fat32,
            root,
        })
    }

    fn next_cluster(&mut self, c: u32) -> Result<Option<u32>> {
        let width = if self.fat32 { 4 } else { 2 };
        let mut b = [0u8; 4];
        self.disk
            .seek(SeekFrom::Start(self.fat_start + u64::from(c) * width))
            .map_err(|e| bad(e.to_string()))?;
        self.disk
            .read_exact(&mut b[..width as usize])
            .map_err(|e| bad(e.to_string()))?;
        let v = u32::from_le_bytes(b) & if self.fat32 { 0x0fff_ffff } else { 0xffff };
        let end = if self.fat32 { 0x0fff_fff8 } else { 0xfff8 };
        Ok((v >= 2 && v < end).then_some(v))
    }

    /// Copies `len` bytes of the chain starting at `first` into `out` (`len` = `None`: the whole chain).
    fn read_chain(&mut self, first: u32, len: Option<u64>, out: &mut dyn Write) -> Result<()> {
        let mut left = len.unwrap_or(u64::MAX);
        let mut c = Some(first).filter(|&c| c >= 2);
        let mut buf = vec![0u8; self.cluster_bytes as usize];
        let mut hops = 0u64;
        while let Some(cl) = c {
            if left == 0 {
                break;
            }
            hops += 1;
            if hops > 1 << 28 {
                return Err(bad("a cluster chain loops"));
            }
            let off = self.data_start + (u64::from(cl) - 2) * self.cluster_bytes;
            self.disk
                .seek(SeekFrom::Start(off))
                .map_err(|e| bad(e.to_string()))?;
            self.disk
                .read_exact(&mut buf)
                .map_err(|e| bad(format!("cluster {cl}: {e}")))?;
            let n = left.min(self.cluster_bytes) as usize;
            out.write_all(&buf[..n]).map_err(|e| bad(e.to_string()))?;
            left -= n as u64;
            c = self.next_cluster(cl)?;
        }
        if len.is_some() && left != 0 {
            return Err(bad(format!(
                "a file's cluster chain ends {left} bytes short"
            )));
        }
        Ok(())
    }

    fn root_entries(&mut self) -> Result<Vec<u8>> {
        match self.root {
            Root::Fixed { offset, entries } => {
                let mut v = vec![0u8; (entries * 32) as usize];
                self.disk
                    .seek(SeekFrom::Start(offset))
                    .map_err(|e| bad(e.to_string()))?;
                self.disk
                    .read_exact(&mut v)
                    .map_err(|e| bad(e.to_string()))?;
                Ok(v)
            }
            Root::Cluster(c) => {
                let mut v = Vec::new();
                self.read_chain(c, None, &mut v)?;
                Ok(v)
            }
        }
    }

    /// (first cluster, size, is directory) of the 8.3 entry `name` in a directory's entries.
    fn find(dir: &[u8], name: &str) -> Option<(u32, u64, bool)> {
        let (stem, ext) = name.split_once('.').unwrap_or((name, ""));
        let mut want = [b' '; 11];
        want[..stem.len().min(8)].copy_from_slice(&stem.as_bytes()[..stem.len().min(8)]);
        want[8..8 + ext.len().min(3)].copy_from_slice(&ext.as_bytes()[..ext.len().min(3)]);
        for e in dir.chunks_exact(32) {
            if e[0] == 0 {
                break;
            }
            if e[0] == 0xe5 || e[11] & 0x0f == 0x0f || e[11] & 0x08 != 0 {
                continue;
            }
            if e[..11] == want {
                let cluster = ((le(e, 20, 2) << 16) | le(e, 26, 2)) as u32;
                return Some((cluster, le(e, 28, 4), e[11] & 0x10 != 0));
            }
        }
        None
    }
}

/// Copies `EFI/BOOT/BOOTX64.EFI` of the ESP (GPT partition 1) of the raw-efi `disk` into `out`; returns its size.
pub fn extract_uki<D: Read + Seek>(disk: &mut D, out: &mut dyn Write) -> Result<u64> {
    let p = super::gpt::read_partition(disk, 1)?;
    let mut fat = Fat::open(disk, p.start_lba * 512)?;
    let mut dir = fat.root_entries()?;
    let path = ["EFI", "BOOT", "BOOTX64.EFI"];
    for (i, name) in path.iter().enumerate() {
        let (cluster, size, is_dir) = Fat::<D>::find(&dir, name)
            .ok_or_else(|| bad(format!("{} is missing", path[..=i].join("/"))))?;
        if i + 1 == path.len() {
            if is_dir {
                return Err(bad(format!("{} is a directory", path.join("/"))));
            }
            fat.read_chain(cluster, Some(size), out)?;
            return Ok(size);
        }
        dir.clear();
        fat.read_chain(cluster, None, &mut dir)?;
    }
    unreachable!("the loop returns at the last component")
}
