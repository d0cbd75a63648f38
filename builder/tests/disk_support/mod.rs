//! Shared fixtures of the disk-format tests: a busybox initrd, the Debian kernel and stub,
//! and a qemu/OVMF boot harness.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kitfleet_builder::disk::{DEFAULT_STUB_PATH, DiskInputs};

pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
pub const BUSYBOX: &str = "/bin/busybox";
/// The line the test init prints, followed by the value of `kitfleet_marker` from the
/// kernel command line (the kernel hands unknown `key=value` parameters to init as
/// environment variables, so the marker proves the UKI's `.cmdline` was used).
pub const MARKER_PREFIX: &str = "kitfleet-disk-boot: marker=";

/// Returns false (test skipped with a message) when a prerequisite is missing; under
/// CI=true a missing prerequisite fails the test instead.
pub fn have(paths: &[&str]) -> bool {
    let missing: Vec<&str> = paths
        .iter()
        .copied()
        .filter(|p| which(p).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "missing {missing:?}: apt-get install qemu-system-x86 qemu-utils ovmf systemd-boot-efi \
         busybox-static linux-image-cloud-amd64 dosfstools mtools xorriso fdisk"
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}");
    }
    eprintln!("skipping: {msg}");
    false
}

fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).exists().then(|| PathBuf::from(name));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// The newest Debian kernel in /boot.
pub fn kernel_path() -> PathBuf {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .expect("/boot")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels
        .pop()
        .expect("a /boot/vmlinuz-* (apt-get install linux-image-cloud-amd64)")
}

/// Every prerequisite of building and booting the disk formats.
pub fn prerequisites() -> bool {
    let kernel_ok = std::fs::read_dir("/boot")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
        })
        .unwrap_or(false);
    have(&[
        DEFAULT_STUB_PATH,
        OVMF,
        BUSYBOX,
        "qemu-system-x86_64",
        "qemu-img",
        "fsck.fat",
        "mcopy",
        "xorriso",
        "sfdisk",
    ]) && (kernel_ok || have(&["/boot/vmlinuz-*"]))
}

/// A minimal newc cpio writer (the test's own, independent of the builder's).
pub struct Newc {
    out: Vec<u8>,
    ino: u32,
}

impl Newc {
    pub fn new() -> Self {
        Newc {
            out: Vec::new(),
            ino: 1,
        }
    }

    pub fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.ino += 1;
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.out
    }
}

/// An initrd whose /init prints the marker and powers the machine off.
pub fn test_initrd() -> Vec<u8> {
    let busybox = std::fs::read(BUSYBOX).expect("busybox-static");
    let dynamic = busybox.windows(15).any(|w| w == b"/lib64/ld-linux");
    assert!(
        !dynamic,
        "{BUSYBOX} is dynamically linked: install busybox-static"
    );
    let init = format!(
        "#!/bin/busybox sh\necho \"{MARKER_PREFIX}$kitfleet_marker\"\n/bin/busybox poweroff -f\n"
    );
    let mut c = Newc::new();
    c.entry("bin", 0o040755, &[], (0, 0));
    c.entry("bin/busybox", 0o100755, &busybox, (0, 0));
    c.entry("dev", 0o040755, &[], (0, 0));
    c.entry("dev/console", 0o020600, &[], (5, 1));
    c.entry("init", 0o100755, init.as_bytes(), (0, 0));
    c.finish()
}

/// Kernel, initrd and stub bytes, kept for the inputs to borrow.
pub struct Payload {
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    pub stub: Vec<u8>,
    pub cmdline: String,
}

pub const OS_RELEASE: &str = "ID=kitfleet\nNAME=\"Kitfleet test\"\nVERSION_ID=0\n";

impl Payload {
    pub fn new(marker: &str) -> Self {
        Payload {
            kernel: std::fs::read(kernel_path()).expect("kernel"),
            initrd: test_initrd(),
            stub: std::fs::read(DEFAULT_STUB_PATH).expect("stub"),
            cmdline: format!("console=ttyS0 panic=-1 kitfleet_marker={marker}"),
        }
    }

    pub fn inputs(&self) -> DiskInputs<'_> {
        DiskInputs {
            kernel: &self.kernel,
            initrd: &self.initrd,
            cmdline: &self.cmdline,
            os_release: OS_RELEASE,
            build_key: [0x5a; 32],
            stub: &self.stub,
            mtime: 1_700_000_000,
        }
    }
}

/// One qemu at a time: the machine has two cores shared with other work.
static QEMU: Mutex<()> = Mutex::new(());

/// What a boot printed and how it ended.
pub struct Boot {
    pub serial: String,
    pub exited: bool,
    pub success: bool,
    /// qemu was stopped because the serial console showed the `stop_on` text.
    pub stopped: bool,
    pub elapsed: Duration,
}

/// Boots a disk under `qemu-system-x86_64 -accel tcg -machine q35` with OVMF and returns
/// the serial console once qemu exits (or after `timeout`, killing it).
pub fn boot(drive_args: &[&str], work: &Path, timeout: Duration) -> Boot {
    boot_with(
        &["-machine", "q35", "-bios", OVMF],
        drive_args,
        work,
        timeout,
        None,
    )
}

/// Boots with the given machine/firmware arguments; stops qemu early once the serial
/// console contains `stop_on`.
pub fn boot_with(
    firmware_args: &[&str],
    drive_args: &[&str],
    work: &Path,
    timeout: Duration,
    stop_on: Option<&str>,
) -> Boot {
    let _guard = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let log = work.join("serial.log");
    let _ = std::fs::remove_file(&log);
    let stderr = std::fs::File::create(work.join("qemu.stderr")).expect("qemu stderr file");
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "512"])
        .args(firmware_args)
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .args(drive_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("run qemu-system-x86_64");
    let start = Instant::now();
    let read_log =
        || String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
    let mut stopped = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for qemu") {
            break Some(status);
        }
        let stop_now = stop_on.is_some_and(|text| read_log().contains(text));
        if stop_now || start.elapsed() > timeout {
            stopped = stop_now;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    Boot {
        serial: read_log(),
        exited: status.is_some(),
        success: status.is_some_and(|s| s.success()),
        stopped,
        elapsed: start.elapsed(),
    }
}

/// Asserts that the boot reached the init marker and powered off cleanly.
pub fn assert_clean_boot(boot: &Boot, marker: &str, what: &str) {
    let tail: String = boot
        .serial
        .chars()
        .rev()
        .take(3000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert!(
        boot.exited,
        "{what}: qemu did not exit in time; serial tail:\n{tail}"
    );
    assert!(boot.success, "{what}: qemu failed; serial tail:\n{tail}");
    assert!(
        boot.serial.contains(&format!("{MARKER_PREFIX}{marker}")),
        "{what}: no init marker; serial tail:\n{tail}"
    );
    assert!(
        boot.serial.contains("reboot: Power down"),
        "{what}: no clean power-off; serial tail:\n{tail}"
    );
    assert!(
        !boot.serial.contains("Kernel panic"),
        "{what}: kernel panic; serial tail:\n{tail}"
    );
    eprintln!(
        "{what}: booted to the marker and powered off in {:.1} s (wall)",
        boot.elapsed.as_secs_f64()
    );
}

/// Runs a command and returns its stdout, failing the test on a non-zero exit.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copies `len` bytes at `offset` of `src` into a new file.
pub fn extract(src: &Path, offset: u64, len: u64, dst: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(src).expect("open image");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut out = std::fs::File::create(dst).expect("create");
    let copied = std::io::copy(&mut f.take(len), &mut out).expect("copy");
    assert_eq!(copied, len, "image shorter than expected");
}

/// `fsck.fat -n` on a FAT volume, asserting it finds nothing to fix.
pub fn assert_fsck_clean(volume: &Path) -> String {
    let out = Command::new("fsck.fat")
        .arg("-n")
        .arg("-v")
        .arg(volume)
        .output()
        .expect("fsck.fat");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "fsck.fat -n {}: {}\n{text}",
        volume.display(),
        out.status
    );
    // fsck.fat -n says this only when it found something it would have changed.
    assert!(
        !text.contains("Leaving filesystem unchanged"),
        "fsck.fat -n found problems:\n{text}"
    );
    text
}
