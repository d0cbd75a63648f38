//! Errors of the disk-format writers.

use std::io;
use std::path::PathBuf;

/// Result alias of the disk module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while writing a disk format. Each variant names the input
/// or the field at fault and, where sizes are the reason, the sizes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The UKI stub is not a PE32+ EFI application this module can extend.
    #[error("UKI stub: {field}: {reason}")]
    Stub {
        /// The PE field or structure at fault.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A prebuilt UKI is not a PE32+ x86-64 image with a `.linux` section.
    #[error("UKI: {field}: {reason}")]
    Uki {
        /// The PE field or structure at fault.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The kernel is not an x86 bzImage that the stub can start.
    #[error("kernel: {field}: {reason}")]
    Kernel {
        /// The boot-protocol field at fault.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The kernel command line cannot go into the `.cmdline` section.
    #[error("cmdline: {reason}")]
    Cmdline {
        /// Why it was rejected.
        reason: String,
    },
    /// The os-release text cannot go into the `.osrel` section.
    #[error("os-release: {reason}")]
    OsRelease {
        /// Why it was rejected.
        reason: String,
    },
    /// The initrd exceeds what the kernel can be handed.
    #[error(
        "initrd is {initrd} bytes but the kernel's setup header (initrd_addr_max, no 64-bit \
         initrd support) allows at most {limit} bytes"
    )]
    InitrdTooLarge {
        /// Size of the initrd.
        initrd: u64,
        /// Largest initrd the kernel accepts.
        limit: u64,
    },
    /// The unified kernel image exceeds the 32-bit limits of PE images and FAT32 files.
    #[error(
        "unified kernel image would be {size} bytes (stub {stub}, kernel {kernel}, initrd \
         {initrd}), over the limit of {limit} bytes (PE SizeOfImage and FAT32 file sizes are 32-bit)"
    )]
    UkiTooLarge {
        /// Size the image would have.
        size: u64,
        /// Size of the stub.
        stub: u64,
        /// Size of the kernel.
        kernel: u64,
        /// Size of the initrd.
        initrd: u64,
        /// Largest allowed size.
        limit: u64,
    },
    /// The files do not fit the requested ESP.
    #[error(
        "ESP overflow: its files need {needed} bytes of clusters (plus {headroom} bytes of \
         requested free space) but an ESP of {esp_size} bytes holds at most {available} bytes"
    )]
    EspOverflow {
        /// Bytes of clusters the files and directories need.
        needed: u64,
        /// Free space requested on top.
        headroom: u64,
        /// Requested ESP size.
        esp_size: u64,
        /// Bytes of clusters that ESP size provides.
        available: u64,
    },
    /// The requested ESP size cannot hold a valid FAT32 file system.
    #[error(
        "ESP of {esp_size} bytes cannot be FAT32: FAT32 needs at least 65525 clusters, \
         so at least {min} bytes"
    )]
    EspTooSmall {
        /// Requested ESP size.
        esp_size: u64,
        /// Smallest valid size.
        min: u64,
    },
    /// A FAT file system could not be laid out.
    #[error("FAT: {reason}")]
    Fat {
        /// Why.
        reason: String,
    },
    /// The ISO image exceeds what ISO 9660 (single extent) can describe.
    #[error(
        "ISO: the EFI boot image is {size} bytes, over the ISO 9660 single-extent limit of {limit} bytes"
    )]
    IsoTooLarge {
        /// Size of the boot image.
        size: u64,
        /// Largest size one extent can hold.
        limit: u64,
    },
    /// An option has an invalid value.
    #[error("{field}: {reason}")]
    Option {
        /// The option at fault.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// `qemu-img` failed or could not be run.
    #[error("qemu-img ({program}): {reason}")]
    QemuImg {
        /// The program that was run.
        program: PathBuf,
        /// What went wrong, with its stderr.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
