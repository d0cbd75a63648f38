//! Checks of the UKI payload (kernel setup header, initrd size, command line, os-release)
//! and the assembly entry point.

use super::content::Parts;
use super::error::{Error, Result};
use super::pe;

const BOOT_FLAG: usize = 0x1fe;
const HEADER_MAGIC: usize = 0x202;
const VERSION: usize = 0x206;
const INITRD_ADDR_MAX: usize = 0x22c;
const RELOCATABLE: usize = 0x234;
const XLOADFLAGS: usize = 0x236;
const CMDLINE_SIZE: usize = 0x238;
const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
const XLF_EFI_HANDOVER_64: u16 = 1 << 3;

/// What the UKI checks learn from the kernel's x86 boot-protocol setup header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelHeader {
    pub(crate) version: u16,
    /// Largest command line (without the terminating NUL).
    pub(crate) cmdline_size: u64,
    /// Largest initrd, or `None` when the initrd may be loaded anywhere (64-bit).
    pub(crate) initrd_limit: Option<u64>,
}

fn kernel_err(field: &'static str, reason: impl Into<String>) -> Error {
    Error::Kernel {
        field,
        reason: reason.into(),
    }
}

/// Reads the x86 setup header of a bzImage (Documentation/arch/x86/boot.rst) and checks
/// that systemd-stub can start it through the EFI handover protocol.
pub(crate) fn parse_kernel(kernel: &[u8]) -> Result<KernelHeader> {
    if kernel.len() < 0x264 {
        return Err(kernel_err(
            "setup header",
            format!("{} bytes is too short for a bzImage", kernel.len()),
        ));
    }
    let u16_at = |o: usize| u16::from_le_bytes([kernel[o], kernel[o + 1]]);
    let u32_at =
        |o: usize| u32::from_le_bytes([kernel[o], kernel[o + 1], kernel[o + 2], kernel[o + 3]]);
    if u16_at(BOOT_FLAG) != 0xaa55 {
        return Err(kernel_err(
            "boot_flag",
            "missing 0xAA55: not an x86 bzImage",
        ));
    }
    if &kernel[HEADER_MAGIC..HEADER_MAGIC + 4] != b"HdrS" {
        return Err(kernel_err("header", "missing \"HdrS\": not an x86 bzImage"));
    }
    let version = u16_at(VERSION);
    if version < 0x20b {
        return Err(kernel_err(
            "version",
            format!(
                "boot protocol {}.{:02} is older than 2.11 (EFI handover)",
                version >> 8,
                version & 0xff
            ),
        ));
    }
    if kernel[RELOCATABLE] == 0 {
        return Err(kernel_err(
            "relocatable_kernel",
            "the kernel is not relocatable",
        ));
    }
    let xloadflags = if version >= 0x20c {
        u16_at(XLOADFLAGS)
    } else {
        0
    };
    if version >= 0x20c && xloadflags & XLF_EFI_HANDOVER_64 == 0 {
        return Err(kernel_err(
            "xloadflags",
            "the kernel lacks the 64-bit EFI handover entry",
        ));
    }
    let initrd_limit = if xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G != 0 {
        None
    } else {
        Some(u64::from(u32_at(INITRD_ADDR_MAX)) + 1)
    };
    Ok(KernelHeader {
        version,
        cmdline_size: u64::from(u32_at(CMDLINE_SIZE)),
        initrd_limit,
    })
}

/// Checks the command line against the kernel's limit and what the stub passes through.
pub(crate) fn check_cmdline(cmdline: &str, header: &KernelHeader) -> Result<()> {
    if let Some((i, c)) = cmdline
        .char_indices()
        .find(|(_, c)| !(' '..='~').contains(c))
    {
        return Err(Error::Cmdline {
            reason: format!(
                "character {c:?} at byte {i} is not printable ASCII (systemd-stub would replace it)"
            ),
        });
    }
    if cmdline.len() as u64 > header.cmdline_size {
        return Err(Error::Cmdline {
            reason: format!(
                "{} bytes is longer than the kernel's cmdline_size of {} bytes",
                cmdline.len(),
                header.cmdline_size
            ),
        });
    }
    Ok(())
}

fn check_os_release(os_release: &str) -> Result<()> {
    if os_release.trim().is_empty() {
        return Err(Error::OsRelease {
            reason: "is empty (boot loaders read the image's name from .osrel)".into(),
        });
    }
    if let Some(i) = os_release.find('\0') {
        return Err(Error::OsRelease {
            reason: format!("contains a NUL byte at {i}"),
        });
    }
    Ok(())
}

/// Checks every input, then assembles the UKI as a stream of parts.
pub(crate) fn build<'a>(
    stub: &'a [u8],
    kernel: &'a [u8],
    initrd: &'a [u8],
    cmdline: &'a str,
    os_release: &'a str,
) -> Result<Parts<'a>> {
    let header = parse_kernel(kernel)?;
    check_cmdline(cmdline, &header)?;
    check_os_release(os_release)?;
    if let Some(limit) = header.initrd_limit
        && initrd.len() as u64 > limit
    {
        return Err(Error::InitrdTooLarge {
            initrd: initrd.len() as u64,
            limit,
        });
    }
    pe::assemble(
        stub,
        [os_release.as_bytes(), cmdline.as_bytes(), kernel, initrd],
    )
}
