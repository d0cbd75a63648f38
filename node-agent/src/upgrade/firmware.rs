//! The firmware executor: the UKI goes to the ESP as `EFI/kitfleet/<UKI sha256>.efi` (the builder's name),
//! gets a `Boot####` load option, boots once through `BootNext` (one-shot: a boot that never reports healthy
//! falls back to `BootOrder` on the next reset), and after a healthy boot is put first in `BootOrder`.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::efi::{self, HdPartition};
use super::efivars::EfiVars;
use super::{Executor, Result, Staged, UpgradeError, booted, io};

/// Directory of the digest-named UKIs on the ESP (as the builder lays it out).
pub const UKI_DIR: &str = "EFI/kitfleet";

/// Where things are.
#[derive(Debug, Clone)]
pub struct FirmwareConfig {
    /// The mounted ESP.
    pub esp: PathBuf,
    /// efivarfs (or a directory laid out like it).
    pub efivars: PathBuf,
    /// The ESP's GPT partition.
    pub partition: HdPartition,
    /// The running kernel's command line (normally /proc/cmdline).
    pub proc_cmdline: PathBuf,
}

/// The firmware executor.
#[derive(Debug)]
pub struct Firmware {
    cfg: FirmwareConfig,
    vars: EfiVars,
}

/// sha256 (hex) and size of a file.
pub fn file_sha256(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex::encode(h.finalize()), size))
}

fn free_bytes(dir: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| {
        UpgradeError::Invalid {
            field: "esp",
            reason: "contains a NUL byte".into(),
        }
    })?;
    // SAFETY: zeroed statvfs is a valid buffer for statvfs to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` writable for the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io(dir)(std::io::Error::last_os_error()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

fn check_key(build_key: &str) -> Result<()> {
    if build_key.len() != 64
        || !build_key
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(UpgradeError::Invalid {
            field: "build key",
            reason: format!("{build_key:?} is not 64 lowercase hex digits"),
        });
    }
    Ok(())
}

impl Firmware {
    /// An executor over `cfg`.
    pub fn new(cfg: FirmwareConfig) -> Self {
        let vars = EfiVars::new(&cfg.efivars);
        Firmware { cfg, vars }
    }

    /// Copies the UKI to the ESP (temp file, fsync, rename); an existing file with the same name is reused.
    fn place_uki(&self, uki: &Path, sha: &str, size: u64) -> Result<String> {
        let rel = format!("{UKI_DIR}/{sha}.efi");
        let dir = self.cfg.esp.join(UKI_DIR);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let dest = self.cfg.esp.join(&rel);
        if dest.exists() && file_sha256(&dest)?.0 == sha {
            return Ok(rel);
        }
        let mut free = free_bytes(&dir)?;
        if free < size {
            self.prune(sha)?;
            free = free_bytes(&dir)?;
        }
        if free < size {
            return Err(UpgradeError::EspFull {
                esp: self.cfg.esp.clone(),
                needed: size,
                free,
            });
        }
        let tmp = dir.join(format!(".{sha}.tmp"));
        let copied = std::fs::copy(uki, &tmp).and_then(|_| std::fs::File::open(&tmp)?.sync_all());
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            if e.raw_os_error() == Some(libc::ENOSPC) {
                return Err(UpgradeError::EspFull {
                    esp: self.cfg.esp.clone(),
                    needed: size,
                    free,
                });
            }
            return Err(io(&tmp)(e));
        }
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        Ok(rel)
    }

    /// The `Boot####` numbers the firmware may boot: BootCurrent, BootNext and every entry of BootOrder.
    fn live_entries(&self) -> Result<Vec<u16>> {
        let mut live = match self.vars.read("BootOrder")? {
            Some(d) => efi::parse_boot_order(&d)?,
            None => Vec::new(),
        };
        for name in ["BootCurrent", "BootNext"] {
            if let Some(d) = self.vars.read(name)?
                && let [lo, hi] = d[..]
            {
                live.push(u16::from_le_bytes([lo, hi]));
            }
        }
        Ok(live)
    }

    /// Makes room on a full ESP, A/B style: removes every `EFI/kitfleet/<sha>.efi` (but `keep`'s) that no live
    /// entry ([`Self::live_entries`]) boots — a superseded image or a staged one that failed — and the Kitfleet
    /// `Boot####` entries that pointed at them. What the firmware may still boot is never touched.
    fn prune(&self, keep: &str) -> Result<()> {
        let live = self.live_entries()?;
        let mut kept_files = vec![format!("\\{}\\{keep}.efi", UKI_DIR.replace('/', "\\"))];
        let mut stale = Vec::new();
        for n in self.vars.boot_numbers()? {
            let name = efi::boot_name(n);
            let Some(data) = self.vars.read(&name)? else {
                continue;
            };
            let Ok(info) = efi::parse_load_option(&name, &data) else {
                continue;
            };
            if live.contains(&n) {
                kept_files.extend(info.file);
            } else if info.description.starts_with("Kitfleet ") {
                stale.push(name);
            }
        }
        let dir = self.cfg.esp.join(UKI_DIR);
        for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            let fname = e.file_name().to_string_lossy().into_owned();
            let file = format!("\\{}\\{fname}", UKI_DIR.replace('/', "\\"));
            let ours = fname.len() == 68 && fname.ends_with(".efi");
            if ours && !kept_files.iter().any(|k| k.eq_ignore_ascii_case(&file)) {
                std::fs::remove_file(e.path()).map_err(io(e.path()))?;
                tracing::info!(file = %e.path().display(), "removed a UKI no live boot entry boots");
            }
        }
        for name in stale {
            self.vars.delete(&name)?;
            tracing::info!(variable = %name, "removed a Kitfleet boot entry that is not live");
        }
        Ok(())
    }

    /// The `Boot####` whose File() path is `file`, or the lowest free number.
    fn boot_number_for(&self, file: &str) -> Result<(u16, bool)> {
        let numbers = self.vars.boot_numbers()?;
        for &n in &numbers {
            let name = efi::boot_name(n);
            if let Some(data) = self.vars.read(&name)?
                && let Ok(info) = efi::parse_load_option(&name, &data)
                && info.file.as_deref() == Some(file)
            {
                return Ok((n, true));
            }
        }
        let free = (0..=u16::MAX)
            .find(|n| !numbers.contains(n))
            .ok_or(UpgradeError::NoFreeBootNumber)?;
        Ok((free, false))
    }
}

impl Executor for Firmware {
    fn stage(&mut self, build_key: &str, uki: &Path) -> Result<Staged> {
        check_key(build_key)?;
        let (sha, size) = file_sha256(uki)?;
        let rel = self.place_uki(uki, &sha, size)?;
        let file = format!("\\{}", rel.replace('/', "\\"));
        let (n, existed) = self.boot_number_for(&file)?;
        if !existed {
            let desc = format!("Kitfleet {}", &build_key[..12]);
            let opt = efi::load_option(&desc, &self.cfg.partition, &rel)?;
            self.vars.write(&efi::boot_name(n), &opt)?;
        }
        tracing::info!(build_key, uki = %rel, boot = %efi::boot_name(n), "staged");
        Ok(Staged {
            build_key: build_key.into(),
            uki_sha256: sha,
            boot_number: Some(n),
        })
    }

    fn activate(&mut self, staged: &Staged, reboot: bool) -> Result<()> {
        let n = staged.boot_number.ok_or_else(|| UpgradeError::NotStaged {
            reason: "no Boot#### entry".into(),
        })?;
        self.vars.write("BootNext", &n.to_le_bytes())?;
        if reboot {
            reboot_now()?;
        }
        Ok(())
    }

    fn commit(&mut self, staged: &Staged) -> Result<()> {
        let n = staged.boot_number.ok_or_else(|| UpgradeError::NotStaged {
            reason: "no Boot#### entry".into(),
        })?;
        let booted = self.report();
        if booted.as_deref() != Some(staged.build_key.as_str()) {
            return Err(UpgradeError::NotStaged {
                reason: format!(
                    "the running kernel reports build key {booted:?}, not the staged {}; BootOrder left alone",
                    staged.build_key
                ),
            });
        }
        let order = match self.vars.read("BootOrder")? {
            Some(d) => efi::parse_boot_order(&d)?,
            None => Vec::new(),
        };
        let new = efi::boot_order_with_first(&order, n);
        if new != order {
            self.vars
                .write("BootOrder", &efi::encode_boot_order(&new))?;
        }
        tracing::info!(boot = %efi::boot_name(n), "committed to BootOrder");
        Ok(())
    }

    fn report(&self) -> Option<String> {
        booted::booted_build_key(&self.cfg.proc_cmdline)
    }
}

/// sync(2), then reboot(2) with `RB_AUTOBOOT`; returns only on failure.
pub fn reboot_now() -> Result<()> {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    // SAFETY: reboot with RB_AUTOBOOT takes no pointers; on success it does not return.
    let rc = unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    Err(io("reboot(2)")(if rc == 0 {
        std::io::Error::other("returned")
    } else {
        std::io::Error::last_os_error()
    }))
}
