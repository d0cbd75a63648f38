//! Disk formats of `kitfleet-build`: `iso-efi-initrd`, `raw-efi` and `qcow2-efi`.
//!
//! Everything here is bytes in, files out: the caller hands over the kernel, initrd,
//! command line, os-release text, the build key and the UKI stub, and gets byte-identical
//! files for identical inputs. The unified kernel image (UKI) is assembled natively
//! ([`write_uki`]); the FAT, GPT and ISO 9660 structures are written natively and streamed to
//! the output file, so no output is ever held in memory whole. Only `qcow2-efi` runs an
//! external program (`qemu-img convert`).
//!
//! Outputs are written to a temporary file next to the target and renamed into place, so a
//! failed build never leaves a half-written output behind.
#![forbid(unsafe_code)]

mod content;
mod error;
mod fat;
mod fat_geometry;
mod fat_names;
mod fat_tree;
mod gpt;
mod identity;
mod iso;
mod pe;
mod qcow2;
mod time;
mod uki;

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest, Sha256};

use content::{FileSink, Parts, Sink};
pub use error::{Error, Result};
use fat::{FatImage, FatOptions};
pub use fat_geometry::FatType;
use fat_geometry::Sizing;
pub use gpt::Guid;
use gpt::{ESP_START_LBA, GptLayout};
pub use identity::{cmdline_with_build_key, os_release};
use iso::IsoLayout;
pub use pe::DEFAULT_STUB_PATH;

/// Path of the firmware's fallback boot loader on an ESP.
pub const FALLBACK_PATH: &str = "EFI/BOOT/BOOTX64.EFI";
/// Directory of the digest-named UKIs on the ESP (the A/B slots of the upgrade path).
pub const UKI_DIR: &str = "EFI/kitfleet";
const MIB: u64 = 1 << 20;

/// A disk format this module writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DiskFormat {
    /// ISO 9660 with an El Torito EFI boot image (a FAT volume holding the UKI).
    IsoEfiInitrd,
    /// A GPT disk with one FAT32 EFI system partition holding the UKI.
    RawEfi,
    /// The `raw-efi` disk converted to qcow2 by `qemu-img`.
    Qcow2Efi,
}

impl DiskFormat {
    /// Every format, in the order they are usually listed.
    pub const ALL: [DiskFormat; 3] = [
        DiskFormat::IsoEfiInitrd,
        DiskFormat::RawEfi,
        DiskFormat::Qcow2Efi,
    ];

    /// The LinuxKit name of the format.
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::IsoEfiInitrd => "iso-efi-initrd",
            DiskFormat::RawEfi => "raw-efi",
            DiskFormat::Qcow2Efi => "qcow2-efi",
        }
    }

    /// The output file name for an image called `stem`, as LinuxKit names it.
    pub fn file_name(self, stem: &str) -> String {
        match self {
            DiskFormat::IsoEfiInitrd => format!("{stem}-efi-initrd.iso"),
            DiskFormat::RawEfi => format!("{stem}-efi.raw"),
            DiskFormat::Qcow2Efi => format!("{stem}-efi.qcow2"),
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DiskFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        DiskFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| Error::Option {
                field: "format",
                reason: format!("{s:?} is not a disk format (iso-efi-initrd, raw-efi, qcow2-efi)"),
            })
    }
}

/// What goes into every disk format.
#[derive(Clone, Copy)]
pub struct DiskInputs<'a> {
    /// The x86-64 bzImage.
    pub kernel: &'a [u8],
    /// The initrd (for example concatenated compressed newc cpio members).
    pub initrd: &'a [u8],
    /// The kernel command line (printable ASCII).
    pub cmdline: &'a str,
    /// os-release text for the `.osrel` section.
    pub os_release: &'a str,
    /// The build key; GPT and FAT identifiers derive from it.
    pub build_key: [u8; 32],
    /// The systemd-stub UKI stub (see [`DEFAULT_STUB_PATH`] and [`read_stub`]).
    pub stub: &'a [u8],
    /// Timestamp of every file-system entry, seconds since the Unix epoch
    /// (`SOURCE_DATE_EPOCH`; FAT clamps it to 1980 at the earliest).
    pub mtime: u64,
}

impl fmt::Debug for DiskInputs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskInputs")
            .field("kernel", &format_args!("{} bytes", self.kernel.len()))
            .field("initrd", &format_args!("{} bytes", self.initrd.len()))
            .field("cmdline", &self.cmdline)
            .field(
                "os_release",
                &format_args!("{} bytes", self.os_release.len()),
            )
            .field("build_key", &hex::encode(self.build_key))
            .field("stub", &format_args!("{} bytes", self.stub.len()))
            .field("mtime", &self.mtime)
            .finish()
    }
}

/// Tunables of the disk formats.
#[derive(Debug, Clone)]
pub struct DiskOptions {
    /// Exact ESP size in bytes for `raw-efi`/`qcow2-efi`; `None` sizes it for its contents.
    pub esp_size: Option<u64>,
    /// Free space to leave on an automatically sized ESP; `None` leaves room for one more
    /// UKI of the same size (the other A/B slot of an upgrade).
    pub esp_free: Option<u64>,
    /// The `qemu-img` program.
    pub qemu_img: PathBuf,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            esp_size: None,
            esp_free: None,
            qemu_img: PathBuf::from("qemu-img"),
        }
    }
}

/// Size and SHA-256 of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// What a disk build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputInfo {
    /// The format written.
    pub format: DiskFormat,
    /// Where it was written.
    pub path: PathBuf,
    /// Size and digest of the output file.
    pub digest: FileDigest,
    /// Size and digest of the UKI inside it.
    pub uki: FileDigest,
    /// Path of the digest-named UKI on the ESP (`raw-efi`, `qcow2-efi`).
    pub uki_esp_path: Option<String>,
    /// GPT disk GUID (`raw-efi`, `qcow2-efi`).
    pub disk_guid: Option<Guid>,
    /// GPT partition GUID of the ESP (`raw-efi`, `qcow2-efi`).
    pub esp_guid: Option<Guid>,
}

/// The disk and ESP partition GUIDs a build key gives.
pub fn disk_guids(build_key: &[u8; 32]) -> (Guid, Guid) {
    (
        Guid::derive(build_key, "gpt-disk"),
        Guid::derive(build_key, "gpt-esp"),
    )
}

fn volume_id(build_key: &[u8; 32], purpose: &str) -> u32 {
    let g = Guid::derive(build_key, purpose).0;
    u32::from_le_bytes([g[0], g[1], g[2], g[3]])
}

/// Reads a UKI stub, by default Debian's [`DEFAULT_STUB_PATH`].
pub fn read_stub(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(Error::io(path))
}

/// Size and SHA-256 of a file, read in a stream.
pub fn file_digest(path: &Path) -> Result<FileDigest> {
    let mut file = File::open(path).map_err(Error::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(Error::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(FileDigest {
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Outputs are world-readable like any build artifact (temporary files start at 0600).
pub(crate) fn output_permissions() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o644)
}

/// Writes through a temporary file in the target's directory, renamed into place on success.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Sink) -> io::Result<()>,
) -> Result<FileDigest> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".kitfleet-disk-")
        .tempfile_in(dir)
        .map_err(Error::io(dir))?;
    let mut sink = FileSink::new(tmp.as_file());
    write(&mut sink).map_err(Error::io(path))?;
    let (size, digest) = sink.finish().map_err(Error::io(path))?;
    tmp.as_file()
        .set_permissions(output_permissions())
        .map_err(Error::io(path))?;
    tmp.as_file().sync_all().map_err(Error::io(path))?;
    tmp.persist(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(FileDigest {
        size,
        sha256: hex::encode(digest),
    })
}

/// A unified kernel image built elsewhere, to place on the disks instead of assembling one:
/// for example the output of [`write_uki`] signed for Secure Boot with `sbsign`.
#[derive(Clone, Copy)]
pub struct PrebuiltUki<'a> {
    /// The UKI (a PE32+ x86-64 image with a `.linux` section).
    pub uki: &'a [u8],
    /// The build key; GPT and FAT identifiers derive from it.
    pub build_key: [u8; 32],
    /// Timestamp of every file-system entry, seconds since the Unix epoch.
    pub mtime: u64,
}

impl fmt::Debug for PrebuiltUki<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrebuiltUki")
            .field("uki", &format_args!("{} bytes", self.uki.len()))
            .field("build_key", &hex::encode(self.build_key))
            .field("mtime", &self.mtime)
            .finish()
    }
}

/// A UKI ready to be placed on disks, with its digest and the disk-wide fields.
struct Uki<'a> {
    parts: Parts<'a>,
    digest: FileDigest,
    build_key: [u8; 32],
    mtime: u64,
}

impl<'a> Uki<'a> {
    fn build(inputs: &DiskInputs<'a>) -> Result<Self> {
        let parts = uki::build(
            inputs.stub,
            inputs.kernel,
            inputs.initrd,
            inputs.cmdline,
            inputs.os_release,
        )?;
        Ok(Self::with_parts(parts, inputs.build_key, inputs.mtime))
    }

    fn prebuilt(prebuilt: &PrebuiltUki<'a>) -> Result<Self> {
        pe::check_uki(prebuilt.uki)?;
        let mut parts = Parts::new();
        parts.push_borrowed(prebuilt.uki);
        Ok(Self::with_parts(parts, prebuilt.build_key, prebuilt.mtime))
    }

    fn with_parts(parts: Parts<'a>, build_key: [u8; 32], mtime: u64) -> Self {
        let digest = FileDigest {
            size: parts.len(),
            sha256: hex::encode(parts.sha256()),
        };
        Uki {
            parts,
            digest,
            build_key,
            mtime,
        }
    }

    fn esp_path(&self) -> String {
        format!("{UKI_DIR}/{}.efi", self.digest.sha256)
    }
}

/// Writes the unified kernel image alone (what the upgrade path copies onto an ESP, and
/// what is signed for Secure Boot before [`write_disks_from_uki`]).
pub fn write_uki(inputs: &DiskInputs<'_>, path: &Path) -> Result<FileDigest> {
    let uki = Uki::build(inputs)?;
    write_atomically(path, |w| uki.parts.write_to(w))
}

fn esp_image<'a>(
    uki: &'a Uki<'a>,
    esp_path: &'a str,
    options: &DiskOptions,
) -> Result<FatImage<'a>> {
    let sizing = match options.esp_size {
        Some(bytes) => Sizing::Exact(bytes),
        None => Sizing::Smallest { align: MIB },
    };
    let fat_options = FatOptions {
        types: vec![FatType::Fat32],
        sizing,
        headroom: options.esp_free.unwrap_or(uki.digest.size),
        hidden_sectors: ESP_START_LBA as u32,
        volume_id: volume_id(&uki.build_key, "esp-volume-id"),
        mtime: uki.mtime,
    };
    FatImage::new(
        &[(FALLBACK_PATH, &uki.parts), (esp_path, &uki.parts)],
        fat_options,
    )
}

fn write_raw(uki: &Uki<'_>, options: &DiskOptions, path: &Path) -> Result<OutputInfo> {
    let esp_path = uki.esp_path();
    let esp = esp_image(uki, &esp_path, options)?;
    let (disk_guid, esp_guid) = disk_guids(&uki.build_key);
    let gpt = GptLayout {
        disk_guid,
        esp_guid,
        esp_sectors: esp.len() / fat_geometry::SECTOR,
    };
    let digest = write_atomically(path, |w| {
        gpt.write_head(w)?;
        esp.write_to(w)?;
        gpt.write_tail(w)
    })?;
    Ok(OutputInfo {
        format: DiskFormat::RawEfi,
        path: path.to_path_buf(),
        digest,
        uki: uki.digest.clone(),
        uki_esp_path: Some(esp_path),
        disk_guid: Some(disk_guid),
        esp_guid: Some(esp_guid),
    })
}

fn write_iso(uki: &Uki<'_>, path: &Path) -> Result<OutputInfo> {
    let fat_options = FatOptions {
        types: vec![FatType::Fat16, FatType::Fat32],
        sizing: Sizing::Smallest { align: iso::BLOCK },
        headroom: 0,
        hidden_sectors: 0,
        volume_id: volume_id(&uki.build_key, "iso-efi-volume-id"),
        mtime: uki.mtime,
    };
    let image = FatImage::new(&[(FALLBACK_PATH, &uki.parts)], fat_options)?;
    let layout = IsoLayout::new(image.len(), uki.mtime)?;
    let digest = write_atomically(path, |w| {
        layout.write_head(w)?;
        image.write_to(w)?;
        layout.write_tail(w)
    })?;
    debug_assert_eq!(digest.size, layout.len());
    Ok(OutputInfo {
        format: DiskFormat::IsoEfiInitrd,
        path: path.to_path_buf(),
        digest,
        uki: uki.digest.clone(),
        uki_esp_path: None,
        disk_guid: None,
        esp_guid: None,
    })
}

fn write_with(
    format: DiskFormat,
    uki: &Uki<'_>,
    options: &DiskOptions,
    path: &Path,
) -> Result<OutputInfo> {
    match format {
        DiskFormat::IsoEfiInitrd => write_iso(uki, path),
        DiskFormat::RawEfi => write_raw(uki, options, path),
        DiskFormat::Qcow2Efi => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let scratch = tempfile::Builder::new()
                .prefix(".kitfleet-raw-")
                .tempdir_in(dir)
                .map_err(Error::io(dir))?;
            let raw = scratch.path().join("disk.raw");
            let info = write_raw(uki, options, &raw)?;
            let digest = qcow2::convert(&options.qemu_img, &raw, path)?;
            Ok(OutputInfo {
                format: DiskFormat::Qcow2Efi,
                path: path.to_path_buf(),
                digest,
                ..info
            })
        }
    }
}

fn write_all(
    formats: &[DiskFormat],
    uki: &Uki<'_>,
    options: &DiskOptions,
    dir: &Path,
    stem: &str,
) -> Result<Vec<OutputInfo>> {
    let mut out: Vec<OutputInfo> = Vec::with_capacity(formats.len());
    for &format in formats {
        let path = dir.join(format.file_name(stem));
        let raw_done = out.iter().find(|o| o.format == DiskFormat::RawEfi).cloned();
        let info = match (format, raw_done) {
            (DiskFormat::Qcow2Efi, Some(raw)) => {
                let digest = qcow2::convert(&options.qemu_img, &raw.path, &path)?;
                OutputInfo {
                    format,
                    path,
                    digest,
                    ..raw
                }
            }
            _ => write_with(format, uki, options, &path)?,
        };
        out.push(info);
    }
    Ok(out)
}

/// Writes one disk format to `path`.
pub fn write_disk(
    format: DiskFormat,
    inputs: &DiskInputs<'_>,
    options: &DiskOptions,
    path: &Path,
) -> Result<OutputInfo> {
    write_with(format, &Uki::build(inputs)?, options, path)
}

/// Writes several formats into `dir` (file names from [`DiskFormat::file_name`] with
/// `stem`), assembling the UKI once and converting `qcow2-efi` from the `raw-efi` output
/// when both are asked for. Returns one [`OutputInfo`] per format, in the order given.
pub fn write_disks(
    formats: &[DiskFormat],
    inputs: &DiskInputs<'_>,
    options: &DiskOptions,
    dir: &Path,
    stem: &str,
) -> Result<Vec<OutputInfo>> {
    write_all(formats, &Uki::build(inputs)?, options, dir, stem)
}

/// [`write_disk`] with a prebuilt (for example signed) UKI.
pub fn write_disk_from_uki(
    format: DiskFormat,
    prebuilt: &PrebuiltUki<'_>,
    options: &DiskOptions,
    path: &Path,
) -> Result<OutputInfo> {
    write_with(format, &Uki::prebuilt(prebuilt)?, options, path)
}

/// [`write_disks`] with a prebuilt (for example signed) UKI.
pub fn write_disks_from_uki(
    formats: &[DiskFormat],
    prebuilt: &PrebuiltUki<'_>,
    options: &DiskOptions,
    dir: &Path,
    stem: &str,
) -> Result<Vec<OutputInfo>> {
    write_all(formats, &Uki::prebuilt(prebuilt)?, options, dir, stem)
}
