//! A FAT16/FAT32 writer: a fixed set of files is laid out contiguously and streamed.
//!
//! Clusters are allocated in a fixed order (FAT32 root, then every other directory in
//! pre-order, then the files in pre-order), names sorted bytewise, every timestamp the
//! same: the same files always give the same bytes.

use super::content::{Parts, Sink, write_zeros};
use super::error::{Error, Result};
use super::fat_geometry::{self, FAT16_ROOT_ENTRIES, FatType, Geometry, SECTOR, Sizing};
use super::fat_names::push_lfn;
use super::fat_tree::{ChildKind, Dir, File, build_tree, dir_entries};
use super::time::fat_datetime;

const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;

/// What to build: type choices, sizing and the fixed fields.
#[derive(Debug, Clone)]
pub(crate) struct FatOptions {
    pub(crate) types: Vec<FatType>,
    pub(crate) sizing: Sizing,
    /// Free space to leave beyond the files.
    pub(crate) headroom: u64,
    /// Sectors before the volume on its disk (the partition's start LBA).
    pub(crate) hidden_sectors: u32,
    pub(crate) volume_id: u32,
    /// Timestamp of every entry, seconds since the Unix epoch.
    pub(crate) mtime: u64,
}

/// A FAT volume ready to be streamed.
#[derive(Debug)]
pub(crate) struct FatImage<'a> {
    geometry: Geometry,
    dirs: Vec<Dir>,
    files: Vec<File<'a>>,
    /// Data-region order: directories then files, each (is_dir, index, clusters).
    order: Vec<(bool, usize, u64)>,
    options: FatOptions,
    next_free: u64,
}

fn fat_err(reason: impl Into<String>) -> Error {
    Error::Fat {
        reason: reason.into(),
    }
}

impl<'a> FatImage<'a> {
    /// Lays out a volume holding `files` (paths with `/` separators) and sizes it.
    pub(crate) fn new(files: &[(&str, &'a Parts<'a>)], options: FatOptions) -> Result<Self> {
        let (mut dirs, mut file_nodes) = build_tree(files)?;
        let root_entries = dir_entries(&dirs[0], true);
        if !options.types.contains(&FatType::Fat32) && root_entries > u64::from(FAT16_ROOT_ENTRIES)
        {
            return Err(fat_err(format!(
                "{root_entries} root entries exceed FAT16's {FAT16_ROOT_ENTRIES}"
            )));
        }
        let needed = |cluster: u64| -> Result<u64> {
            let files: u64 = file_nodes
                .iter()
                .map(|f| f.content.len().div_ceil(cluster))
                .sum();
            let dirs_total: u64 = dirs
                .iter()
                .enumerate()
                .map(|(i, d)| (dir_entries(d, i == 0) * 32).div_ceil(cluster).max(1))
                .sum();
            // FAT16 keeps the root outside the clusters; counting it anyway costs one cluster.
            Ok(files + dirs_total)
        };
        let mut geometry =
            fat_geometry::choose(&options.types, options.sizing, options.headroom, &needed)?;
        if geometry.fat_type == FatType::Fat16 && root_entries > u64::from(FAT16_ROOT_ENTRIES) {
            geometry =
                fat_geometry::choose(&[FatType::Fat32], options.sizing, options.headroom, &needed)?;
        }
        for f in &file_nodes {
            if f.content.len() > u64::from(u32::MAX) {
                return Err(fat_err(format!(
                    "a file of {} bytes exceeds FAT's 4 GiB - 1 limit",
                    f.content.len()
                )));
            }
        }
        let cluster = geometry.cluster_bytes();
        let mut next = 2u64;
        let mut order = Vec::new();
        let fat32 = geometry.fat_type == FatType::Fat32;
        for (i, dir) in dirs.iter_mut().enumerate() {
            if i == 0 && !fat32 {
                continue;
            }
            let clusters = (dir_entries(dir, i == 0) * 32).div_ceil(cluster).max(1);
            dir.first_cluster = next as u32;
            order.push((true, i, clusters));
            next += clusters;
        }
        for (i, f) in file_nodes.iter_mut().enumerate() {
            let clusters = f.content.len().div_ceil(cluster);
            if clusters > 0 {
                f.first_cluster = next as u32;
                order.push((false, i, clusters));
                next += clusters;
            }
        }
        if next - 2 > geometry.clusters {
            return Err(fat_err(format!(
                "layout needs {} clusters, volume has {}",
                next - 2,
                geometry.clusters
            )));
        }
        Ok(FatImage {
            geometry,
            dirs,
            files: file_nodes,
            order,
            options,
            next_free: next,
        })
    }

    /// Size of the volume in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.geometry.bytes()
    }

    /// Streams the whole volume.
    pub(crate) fn write_to(&self, w: &mut dyn Sink) -> std::io::Result<()> {
        let g = &self.geometry;
        let boot = self.boot_sector();
        w.write_all(&boot)?;
        let mut written = SECTOR;
        if g.fat_type == FatType::Fat32 {
            let fsinfo = self.fsinfo_sector();
            w.write_all(&fsinfo)?;
            write_zeros(w, 4 * SECTOR)?;
            w.write_all(&boot)?;
            w.write_all(&fsinfo)?;
            written = 8 * SECTOR;
        }
        write_zeros(w, g.reserved_sectors() * SECTOR - written)?;
        let fat = self.fat_bytes();
        for _ in 0..2 {
            w.write_all(&fat)?;
            write_zeros(w, g.fat_sectors * SECTOR - fat.len() as u64)?;
        }
        if g.fat_type == FatType::Fat16 {
            let root = self.dir_bytes(0);
            w.write_all(&root)?;
            write_zeros(w, g.root_dir_sectors() * SECTOR - root.len() as u64)?;
        }
        let cluster = g.cluster_bytes();
        for &(is_dir, i, clusters) in &self.order {
            let len = if is_dir {
                let bytes = self.dir_bytes(i);
                w.write_all(&bytes)?;
                bytes.len() as u64
            } else {
                self.files[i].content.write_to(w)?;
                self.files[i].content.len()
            };
            write_zeros(w, clusters * cluster - len)?;
        }
        let data_end = g.first_data_sector() * SECTOR + (self.next_free - 2) * cluster;
        write_zeros(w, g.bytes() - data_end)
    }

    fn boot_sector(&self) -> Vec<u8> {
        let g = &self.geometry;
        let fat32 = g.fat_type == FatType::Fat32;
        let mut b = vec![0u8; SECTOR as usize];
        b[..3].copy_from_slice(if fat32 {
            &[0xeb, 0x58, 0x90]
        } else {
            &[0xeb, 0x3c, 0x90]
        });
        b[3..11].copy_from_slice(b"KITFLEET");
        b[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
        b[13] = g.sectors_per_cluster as u8;
        b[14..16].copy_from_slice(&(g.reserved_sectors() as u16).to_le_bytes());
        b[16] = 2;
        let root_entries = if fat32 { 0 } else { FAT16_ROOT_ENTRIES as u16 };
        b[17..19].copy_from_slice(&root_entries.to_le_bytes());
        let small = !fat32 && g.total_sectors < 0x10000;
        if small {
            b[19..21].copy_from_slice(&(g.total_sectors as u16).to_le_bytes());
        } else {
            b[32..36].copy_from_slice(&(g.total_sectors as u32).to_le_bytes());
        }
        b[21] = 0xf8;
        if !fat32 {
            b[22..24].copy_from_slice(&(g.fat_sectors as u16).to_le_bytes());
        }
        b[24..26].copy_from_slice(&32u16.to_le_bytes()); // sectors per track
        b[26..28].copy_from_slice(&64u16.to_le_bytes()); // heads
        b[28..32].copy_from_slice(&self.options.hidden_sectors.to_le_bytes());
        let ext = if fat32 {
            b[36..40].copy_from_slice(&(g.fat_sectors as u32).to_le_bytes());
            b[44..48].copy_from_slice(&self.dirs[0].first_cluster.to_le_bytes());
            b[48..50].copy_from_slice(&1u16.to_le_bytes()); // FSInfo sector
            b[50..52].copy_from_slice(&6u16.to_le_bytes()); // backup boot sector
            64
        } else {
            36
        };
        b[ext] = 0x80; // drive number
        b[ext + 2] = 0x29; // extended boot signature
        b[ext + 3..ext + 7].copy_from_slice(&self.options.volume_id.to_le_bytes());
        b[ext + 7..ext + 18].copy_from_slice(b"NO NAME    ");
        b[ext + 18..ext + 26].copy_from_slice(if fat32 { b"FAT32   " } else { b"FAT16   " });
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    }

    fn fsinfo_sector(&self) -> Vec<u8> {
        let mut b = vec![0u8; SECTOR as usize];
        b[..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
        b[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
        let free = self.geometry.clusters - (self.next_free - 2);
        b[488..492].copy_from_slice(&(free as u32).to_le_bytes());
        let next = if free > 0 {
            self.next_free as u32
        } else {
            u32::MAX
        };
        b[492..496].copy_from_slice(&next.to_le_bytes());
        b[508..512].copy_from_slice(&0xaa55_0000u32.to_le_bytes());
        b
    }

    /// The used part of one FAT (the rest of its sectors is zero).
    fn fat_bytes(&self) -> Vec<u8> {
        let fat32 = self.geometry.fat_type == FatType::Fat32;
        let (media, eoc) = if fat32 {
            (0x0fff_fff8u32, 0x0fff_ffffu32)
        } else {
            (0xfff8, 0xffff)
        };
        let mut entries = vec![0u32; self.next_free as usize];
        entries[0] = media;
        entries[1] = eoc;
        for &(is_dir, i, clusters) in &self.order {
            let first = if is_dir {
                self.dirs[i].first_cluster
            } else {
                self.files[i].first_cluster
            } as usize;
            let chain = &mut entries[first..first + clusters as usize];
            for (c, entry) in (first..).zip(chain.iter_mut()) {
                *entry = c as u32 + 1;
            }
            chain[chain.len() - 1] = eoc;
        }
        if fat32 {
            entries.iter().flat_map(|e| e.to_le_bytes()).collect()
        } else {
            entries
                .iter()
                .flat_map(|&e| (e as u16).to_le_bytes())
                .collect()
        }
    }

    fn dir_bytes(&self, index: usize) -> Vec<u8> {
        let dir = &self.dirs[index];
        let (date, time) = fat_datetime(self.options.mtime);
        let mut out = Vec::new();
        let short_entry = |name: &[u8; 11], attr: u8, cluster: u32, size: u32| {
            let mut e = [0u8; 32];
            e[..11].copy_from_slice(name);
            e[11] = attr;
            e[14..16].copy_from_slice(&time.to_le_bytes());
            e[16..18].copy_from_slice(&date.to_le_bytes());
            e[18..20].copy_from_slice(&date.to_le_bytes());
            e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
            e[22..24].copy_from_slice(&time.to_le_bytes());
            e[24..26].copy_from_slice(&date.to_le_bytes());
            e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
            e[28..32].copy_from_slice(&size.to_le_bytes());
            e
        };
        if let Some(parent) = dir.parent {
            let parent_cluster = if parent == 0 {
                0
            } else {
                self.dirs[parent].first_cluster
            };
            out.extend(short_entry(
                b".          ",
                ATTR_DIRECTORY,
                dir.first_cluster,
                0,
            ));
            out.extend(short_entry(
                b"..         ",
                ATTR_DIRECTORY,
                parent_cluster,
                0,
            ));
        }
        for child in &dir.children {
            if child.lfn {
                push_lfn(&mut out, &child.long, &child.short);
            }
            let entry = match child.kind {
                ChildKind::Dir(d) => {
                    short_entry(&child.short, ATTR_DIRECTORY, self.dirs[d].first_cluster, 0)
                }
                ChildKind::File(f) => {
                    let file = &self.files[f];
                    short_entry(
                        &child.short,
                        ATTR_ARCHIVE,
                        file.first_cluster,
                        file.content.len() as u32,
                    )
                }
            };
            out.extend(entry);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> bool {
        let found = std::process::Command::new(name)
            .arg("--help")
            .output()
            .is_ok();
        if !found {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "{name} missing (dosfstools, mtools)"
            );
            eprintln!("skipping: {name} missing (apt-get install dosfstools mtools)");
        }
        found
    }

    /// Many shapes of content, checked by fsck.fat and read back with mtools.
    #[test]
    fn fsck_and_mtools_accept_the_volumes() {
        if !tool("fsck.fat") || !tool("mcopy") {
            return;
        }
        let mut contents: Vec<(String, Vec<u8>)> = vec![
            ("EFI/BOOT/BOOTX64.EFI".into(), vec![1u8; 3000]),
            (
                format!("EFI/kitfleet/{}.efi", "ab".repeat(32)),
                vec![2u8; 1],
            ),
            ("empty.txt".into(), Vec::new()),
            ("A Long Name With Spaces.conf".into(), vec![3u8; 513]),
            ("dir/sub/deeper/x".into(), vec![4u8; 512]),
        ];
        for i in 0..40 {
            contents.push((
                format!("many/file-{i:02}.txt"),
                format!("file {i}\n").into_bytes(),
            ));
        }
        let parts: Vec<(String, Parts<'_>)> = contents
            .iter()
            .map(|(p, c)| {
                let mut parts = Parts::new();
                parts.push_borrowed(c);
                (p.clone(), parts)
            })
            .collect();
        let files: Vec<(&str, &Parts<'_>)> = parts.iter().map(|(p, c)| (p.as_str(), c)).collect();
        let dir = tempfile::tempdir().unwrap();
        for (types, bits) in [
            (vec![FatType::Fat16, FatType::Fat32], "16"),
            (vec![FatType::Fat32], "32"),
        ] {
            let options = FatOptions {
                types,
                sizing: Sizing::Smallest { align: 1 << 20 },
                headroom: 1 << 20,
                hidden_sectors: 0,
                volume_id: 0x1234_5678,
                mtime: 1_700_000_000,
            };
            let image = FatImage::new(&files, options).unwrap();
            let path = dir.path().join(format!("fat{bits}.img"));
            let mut out = Vec::new();
            image.write_to(&mut out).unwrap();
            assert_eq!(out.len() as u64, image.len());
            std::fs::write(&path, &out).unwrap();
            let fsck = std::process::Command::new("fsck.fat")
                .arg("-n")
                .arg("-v")
                .arg(&path)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&fsck.stdout).into_owned();
            assert!(
                fsck.status.success(),
                "fsck.fat: {text}{}",
                String::from_utf8_lossy(&fsck.stderr)
            );
            assert!(text.contains(&format!("{bits} bit entries")), "{text}");
            assert!(
                text.contains(&format!("{} files", contents.len() + 7)),
                "{text}"
            );
            for (name, content) in &contents {
                let copy = dir.path().join("copy");
                let status = std::process::Command::new("mcopy")
                    .args(["-n", "-o", "-i"])
                    .arg(&path)
                    .arg(format!("::/{name}"))
                    .arg(&copy)
                    .status()
                    .unwrap();
                assert!(status.success(), "mcopy {name}");
                assert_eq!(&std::fs::read(&copy).unwrap(), content, "{name}");
            }
        }
    }
}
