//! FAT geometry: where the FATs, root directory and clusters go for a volume size, and
//! the smallest volume that holds given contents.
//!
//! The FAT type is decided by the cluster count alone (Microsoft's FAT specification,
//! "FAT type determination"): fewer than 4085 clusters is FAT12, fewer than 65525 is
//! FAT16, anything else FAT32. A volume formatted as FAT32 with fewer than 65525 clusters
//! is misread by firmware and rejected by fsck (the cause of linuxkit#4123); the sizing
//! here never produces one.

use super::error::{Error, Result};

/// Bytes per sector of every volume written here.
pub(crate) const SECTOR: u64 = 512;
/// Cluster sizes tried, in sectors (512 B … 32 KiB).
const SECTORS_PER_CLUSTER: [u32; 7] = [1, 2, 4, 8, 16, 32, 64];
/// Root directory entries of a FAT16 volume.
pub(crate) const FAT16_ROOT_ENTRIES: u32 = 512;

/// The two FAT variants written here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    /// 4085 to 65524 clusters, fixed root directory.
    Fat16,
    /// At least 65525 clusters, root directory in a cluster chain.
    Fat32,
}

impl FatType {
    pub(crate) fn min_clusters(self) -> u64 {
        match self {
            FatType::Fat16 => 4085,
            FatType::Fat32 => 65525,
        }
    }

    pub(crate) fn max_clusters(self) -> u64 {
        match self {
            FatType::Fat16 => 65524,
            FatType::Fat32 => 0x0FFF_FFF5 - 2,
        }
    }

    fn entry_bytes(self) -> u64 {
        match self {
            FatType::Fat16 => 2,
            FatType::Fat32 => 4,
        }
    }

    fn reserved_sectors(self) -> u64 {
        match self {
            FatType::Fat16 => 1,
            FatType::Fat32 => 32,
        }
    }

    fn root_dir_sectors(self) -> u64 {
        match self {
            FatType::Fat16 => u64::from(FAT16_ROOT_ENTRIES) * 32 / SECTOR,
            FatType::Fat32 => 0,
        }
    }
}

/// The layout of one FAT volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) fat_type: FatType,
    pub(crate) sectors_per_cluster: u32,
    pub(crate) total_sectors: u64,
    pub(crate) fat_sectors: u64,
    /// Number of data clusters (numbered from 2).
    pub(crate) clusters: u64,
}

impl Geometry {
    /// Lays out a volume of `total_sectors` with the given type and cluster size. The FAT
    /// is sized for every cluster the volume could hold (slightly generous, never short).
    /// Returns `None` when the cluster count does not match the type.
    pub(crate) fn for_total(
        fat_type: FatType,
        sectors_per_cluster: u32,
        total_sectors: u64,
    ) -> Option<Self> {
        let spc = u64::from(sectors_per_cluster);
        let fixed = fat_type.reserved_sectors() + fat_type.root_dir_sectors();
        let available = total_sectors.checked_sub(fixed)?;
        let fat_sectors = ((available / spc + 2) * fat_type.entry_bytes()).div_ceil(SECTOR);
        let data = available.checked_sub(2 * fat_sectors)?;
        let clusters = data / spc;
        let geometry = Geometry {
            fat_type,
            sectors_per_cluster,
            total_sectors,
            fat_sectors,
            clusters,
        };
        (clusters >= fat_type.min_clusters() && clusters <= fat_type.max_clusters())
            .then_some(geometry)
    }

    pub(crate) fn cluster_bytes(&self) -> u64 {
        u64::from(self.sectors_per_cluster) * SECTOR
    }

    pub(crate) fn reserved_sectors(&self) -> u64 {
        self.fat_type.reserved_sectors()
    }

    pub(crate) fn root_dir_sectors(&self) -> u64 {
        self.fat_type.root_dir_sectors()
    }

    pub(crate) fn first_data_sector(&self) -> u64 {
        self.reserved_sectors() + 2 * self.fat_sectors + self.root_dir_sectors()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.total_sectors * SECTOR
    }
}

/// How to size a volume.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sizing {
    /// The smallest volume that holds the contents, rounded up to a multiple of this many bytes.
    Smallest { align: u64 },
    /// Exactly this many bytes.
    Exact(u64),
}

/// Picks type, cluster size and volume size. `needed(cluster_bytes)` returns the clusters
/// the contents occupy at that cluster size; `headroom` is free space to leave on top.
pub(crate) fn choose(
    types: &[FatType],
    sizing: Sizing,
    headroom: u64,
    needed: &dyn Fn(u64) -> Result<u64>,
) -> Result<Geometry> {
    match sizing {
        Sizing::Smallest { align } => smallest(types, align, headroom, needed),
        Sizing::Exact(bytes) => exact(types, bytes, headroom, needed),
    }
}

fn smallest(
    types: &[FatType],
    align: u64,
    headroom: u64,
    needed: &dyn Fn(u64) -> Result<u64>,
) -> Result<Geometry> {
    let align_sectors = (align / SECTOR).max(1);
    let mut best: Option<Geometry> = None;
    for &fat_type in types {
        for spc in SECTORS_PER_CLUSTER {
            let cluster = u64::from(spc) * SECTOR;
            let want = needed(cluster)? + headroom.div_ceil(cluster);
            let min_clusters = want.max(fat_type.min_clusters());
            if min_clusters > fat_type.max_clusters() {
                continue;
            }
            let fat = ((min_clusters + 2) * fat_type.entry_bytes()).div_ceil(SECTOR);
            let mut total = fat_type.reserved_sectors()
                + fat_type.root_dir_sectors()
                + 2 * fat
                + min_clusters * u64::from(spc);
            total = total.div_ceil(align_sectors) * align_sectors;
            // The FAT of `for_total` is sized generously; grow until the clusters suffice.
            let mut found = None;
            for _ in 0..64 {
                match Geometry::for_total(fat_type, spc, total) {
                    Some(g) if g.clusters >= want => {
                        found = Some(g);
                        break;
                    }
                    Some(g) if g.clusters >= fat_type.max_clusters() => break,
                    _ => total += align_sectors,
                }
            }
            if let Some(g) = found
                && best.is_none_or(|b| g.total_sectors < b.total_sectors)
            {
                best = Some(g);
            }
        }
    }
    let best = best.ok_or_else(|| Error::Fat {
        reason: "no FAT16/FAT32 layout can hold the contents".into(),
    })?;
    if best.total_sectors > u64::from(u32::MAX) {
        return Err(Error::Fat {
            reason: format!(
                "a volume of {} bytes exceeds FAT's 32-bit sector count",
                best.bytes()
            ),
        });
    }
    Ok(best)
}

fn exact(
    types: &[FatType],
    bytes: u64,
    headroom: u64,
    needed: &dyn Fn(u64) -> Result<u64>,
) -> Result<Geometry> {
    if !bytes.is_multiple_of(SECTOR) || bytes / SECTOR > u64::from(u32::MAX) {
        return Err(Error::Option {
            field: "esp_size",
            reason: format!("{bytes} is not a multiple of {SECTOR} bytes below 2 TiB"),
        });
    }
    let total = bytes / SECTOR;
    let mut best: Option<(Geometry, u64)> = None;
    let mut least_needed = u64::MAX;
    let mut most_available = 0;
    for &fat_type in types {
        for spc in SECTORS_PER_CLUSTER {
            let Some(g) = Geometry::for_total(fat_type, spc, total) else {
                continue;
            };
            let cluster = g.cluster_bytes();
            let need = needed(cluster)?;
            let want = need + headroom.div_ceil(cluster);
            least_needed = least_needed.min(need * cluster);
            most_available = most_available.max(g.clusters * cluster);
            if want <= g.clusters {
                let free = (g.clusters - want) * cluster;
                if best.is_none_or(|(_, f)| free > f) {
                    best = Some((g, free));
                }
            }
        }
    }
    if let Some((g, _)) = best {
        return Ok(g);
    }
    if most_available == 0 {
        let min = smallest(types, SECTOR, 0, &|_| Ok(0))?.bytes();
        return Err(Error::EspTooSmall {
            esp_size: bytes,
            min,
        });
    }
    Err(Error::EspOverflow {
        needed: least_needed,
        headroom,
        esp_size: bytes,
        available: most_available,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat32_never_has_fewer_than_65525_clusters() {
        let g = choose(
            &[FatType::Fat32],
            Sizing::Smallest { align: 1 << 20 },
            0,
            &|_| Ok(10),
        )
        .unwrap();
        assert_eq!(g.fat_type, FatType::Fat32);
        assert!(g.clusters >= 65525, "{g:?}");
        assert_eq!(g.bytes() % (1 << 20), 0);
        // Just below the minimum there is no FAT32 layout at all.
        assert!(Geometry::for_total(FatType::Fat32, 1, 32 + 2 * 513 + 65524).is_none());
    }

    #[test]
    fn fat_covers_every_cluster() {
        for total in [70_000u64, 200_000, 1_000_000, 8_000_000] {
            for spc in SECTORS_PER_CLUSTER {
                for t in [FatType::Fat16, FatType::Fat32] {
                    if let Some(g) = Geometry::for_total(t, spc, total) {
                        assert!(
                            g.fat_sectors * SECTOR / t.entry_bytes() >= g.clusters + 2,
                            "{g:?}"
                        );
                        assert!(g.first_data_sector() + g.clusters * u64::from(spc) <= total);
                    }
                }
            }
        }
    }

    #[test]
    fn smallest_volume_holds_the_contents() {
        let content = 50 * 1024 * 1024u64;
        let g = choose(
            &[FatType::Fat16, FatType::Fat32],
            Sizing::Smallest { align: 2048 },
            0,
            &|c| Ok(content.div_ceil(c)),
        )
        .unwrap();
        assert!(g.clusters * g.cluster_bytes() >= content);
        // No more than a few percent of overhead.
        assert!(g.bytes() < content + content / 20, "{g:?}");
    }

    #[test]
    fn exact_size_overflow_names_sizes() {
        let err = choose(&[FatType::Fat32], Sizing::Exact(64 << 20), 0, &|c| {
            Ok((100u64 << 20).div_ceil(c))
        })
        .unwrap_err();
        match err {
            Error::EspOverflow {
                needed,
                esp_size,
                available,
                ..
            } => {
                assert_eq!(esp_size, 64 << 20);
                assert!(needed >= 100 << 20);
                assert!(available < 64 << 20);
            }
            other => panic!("unexpected {other}"),
        }
        let err = choose(&[FatType::Fat32], Sizing::Exact(8 << 20), 0, &|_| Ok(1)).unwrap_err();
        assert!(
            matches!(err, Error::EspTooSmall { esp_size, min } if esp_size == 8 << 20 && min > 32 << 20),
            "{err}"
        );
    }
}
