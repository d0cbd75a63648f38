//! `method: kexec`: the UKI's `.linux`, `.initrd` and `.cmdline` sections (PE/COFF section table) loaded with
//! `kexec_file_load(2)`, then `reboot(LINUX_REBOOT_CMD_KEXEC)`: the same kernel, initrd and command line the
//! firmware path would boot, without the firmware.

use std::os::fd::AsRawFd;
use std::path::Path;

use super::{Result, UpgradeError, io};

/// The `.linux`, `.initrd` and `.cmdline` section contents of a UKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiSections {
    pub linux: Vec<u8>,
    pub initrd: Vec<u8>,
    pub cmdline: String,
}

fn bad(reason: impl Into<String>) -> UpgradeError {
    UpgradeError::Invalid {
        field: "uki",
        reason: reason.into(),
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_le_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}

/// Reads the sections out of a PE image (section contents are `min(VirtualSize, SizeOfRawData)` bytes at
/// `PointerToRawData`).
pub fn sections(pe: &[u8]) -> Result<UkiSections> {
    let lfanew = u32_at(pe, 0x3c).ok_or_else(|| bad("shorter than a DOS header"))?;
    if pe.get(lfanew..lfanew + 4) != Some(b"PE\0\0") {
        return Err(bad("no PE signature"));
    }
    let coff = lfanew + 4;
    let count = u16_at(pe, coff + 2).ok_or_else(|| bad("truncated COFF header"))?;
    let opt = u16_at(pe, coff + 16).ok_or_else(|| bad("truncated COFF header"))?;
    let table = coff + 20 + opt;
    let (mut linux, mut initrd, mut cmdline) = (None, None, None);
    for i in 0..count {
        let s = table + 40 * i;
        let h = pe
            .get(s..s + 40)
            .ok_or_else(|| bad(format!("section header {i} is truncated")))?;
        let name = &h[..8];
        let vsize = u32_at(h, 8).expect("in range");
        let raw = u32_at(h, 16).expect("in range");
        let ptr = u32_at(h, 20).expect("in range");
        let data = || -> Result<Vec<u8>> {
            pe.get(ptr..ptr + vsize.min(raw))
                .map(<[u8]>::to_vec)
                .ok_or_else(|| bad(format!("section {i} runs past the end")))
        };
        match name {
            b".linux\0\0" => linux = Some(data()?),
            b".initrd\0" => initrd = Some(data()?),
            b".cmdline" => cmdline = Some(data()?),
            _ => {}
        }
    }
    let cmdline = String::from_utf8_lossy(&cmdline.unwrap_or_default())
        .trim_end_matches('\0')
        .to_string();
    Ok(UkiSections {
        linux: linux.ok_or_else(|| bad("has no .linux section"))?,
        initrd: initrd.unwrap_or_default(),
        cmdline,
    })
}

/// Loads `uki`'s kernel, initrd and cmdline with kexec_file_load(2); then, when `reboot` is set,
/// syncs and reboots into it.
pub fn load_and_exec(uki: &Path, work: &Path, reboot: bool) -> Result<()> {
    let bytes = std::fs::read(uki).map_err(io(uki))?;
    let s = sections(&bytes)?;
    let (kp, ip) = (work.join("kexec-kernel"), work.join("kexec-initrd"));
    std::fs::write(&kp, &s.linux).map_err(io(&kp))?;
    std::fs::write(&ip, &s.initrd).map_err(io(&ip))?;
    let k = std::fs::File::open(&kp).map_err(io(&kp))?;
    let i = std::fs::File::open(&ip).map_err(io(&ip))?;
    let cmd =
        std::ffi::CString::new(s.cmdline.clone()).map_err(|_| bad(".cmdline holds a NUL byte"))?;
    let flags: libc::c_ulong = if s.initrd.is_empty() { 0x4 } else { 0 }; // KEXEC_FILE_NO_INITRAMFS
    // SAFETY: both fds are open for the call; `cmd` is NUL-terminated and its length counts the NUL, as the
    // syscall requires.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            k.as_raw_fd(),
            i.as_raw_fd(),
            cmd.as_bytes_with_nul().len() as libc::c_ulong,
            cmd.as_ptr(),
            flags,
        )
    };
    if rc != 0 {
        return Err(io("kexec_file_load(2)")(std::io::Error::last_os_error()));
    }
    tracing::info!(cmdline = %s.cmdline, "kexec image loaded");
    if reboot {
        // SAFETY: sync takes no arguments.
        unsafe { libc::sync() };
        // SAFETY: reboot with LINUX_REBOOT_CMD_KEXEC takes no pointers; on success it does not return.
        let rc = unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_KEXEC) };
        let _ = rc;
        return Err(io("reboot(LINUX_REBOOT_CMD_KEXEC)")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
