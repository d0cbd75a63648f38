//! The firmware executor against a temp-dir stand-in for efivarfs and a temp-dir ESP: the files it writes,
//! byte for byte; and (privileged) a full ESP on a tiny tmpfs.

use std::path::Path;

use kitfleet_node_agent::upgrade::efi::{self, HdPartition};
use kitfleet_node_agent::upgrade::firmware::{Firmware, FirmwareConfig, file_sha256};
use kitfleet_node_agent::upgrade::{Executor, UpgradeError};

const GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

fn part() -> HdPartition {
    HdPartition {
        number: 1,
        start_lba: 2048,
        size_lba: 65536,
        guid: [0x5a; 16],
    }
}

struct Bed {
    dir: tempfile::TempDir,
}

impl Bed {
    fn new() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        for d in ["esp", "vars"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("cmdline"), "console=ttyS0\n").unwrap();
        Bed { dir }
    }
    fn p(&self, s: &str) -> std::path::PathBuf {
        self.dir.path().join(s)
    }
    fn fw(&self, esp: &Path) -> Firmware {
        Firmware::new(FirmwareConfig {
            esp: esp.to_path_buf(),
            efivars: self.p("vars"),
            partition: part(),
            proc_cmdline: self.p("cmdline"),
        })
    }
    fn var(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.p("vars").join(format!("{name}-{GUID}"))).ok()
    }
    fn set_var(&self, name: &str, data: &[u8]) {
        let mut b = vec![7, 0, 0, 0];
        b.extend_from_slice(data);
        std::fs::write(self.p("vars").join(format!("{name}-{GUID}")), b).unwrap();
    }
    fn uki(&self, name: &str, content: &[u8]) -> std::path::PathBuf {
        let p = self.p(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

fn key(c: char) -> String {
    c.to_string().repeat(64)
}

#[test]
fn stage_activate_commit_write_the_expected_variables() {
    let bed = Bed::new();
    // The firmware's own entries, committed order 1, 0.
    let other = efi::load_option("UEFI disk", &part(), "EFI/BOOT/BOOTX64.EFI").unwrap();
    bed.set_var("Boot0000", &other);
    bed.set_var("Boot0001", &other);
    bed.set_var("BootOrder", &[1, 0, 0, 0]);
    let uki = bed.uki("v2.efi", b"MZ pretend UKI v2");
    let (sha, _) = file_sha256(&uki).unwrap();
    let mut fw = bed.fw(&bed.p("esp"));

    let staged = fw.stage(&key('b'), &uki).unwrap();
    assert_eq!(staged.uki_sha256, sha);
    assert_eq!(staged.boot_number, Some(2));
    let on_esp = bed.p("esp").join(format!("EFI/kitfleet/{sha}.efi"));
    assert_eq!(std::fs::read(&on_esp).unwrap(), b"MZ pretend UKI v2");
    let mut want = vec![7, 0, 0, 0];
    want.extend(
        efi::load_option(
            "Kitfleet bbbbbbbbbbbb",
            &part(),
            &format!("EFI/kitfleet/{sha}.efi"),
        )
        .unwrap(),
    );
    assert_eq!(bed.var("Boot0002").unwrap(), want);
    assert_eq!(
        bed.var("BootNext"),
        None,
        "staging changes nothing that boots"
    );

    // Staging again reuses the file and the entry.
    assert_eq!(fw.stage(&key('b'), &uki).unwrap(), staged);
    assert!(bed.var("Boot0003").is_none());

    fw.activate(&staged, false).unwrap();
    assert_eq!(bed.var("BootNext").unwrap(), vec![7, 0, 0, 0, 2, 0]);
    assert_eq!(
        bed.var("BootOrder").unwrap(),
        vec![7, 0, 0, 0, 1, 0, 0, 0],
        "BootNext only"
    );

    // Not booted into the staged key: no commit.
    let e = fw.commit(&staged).unwrap_err().to_string();
    assert!(
        e.contains(&key('b')) && e.contains("BootOrder left alone"),
        "{e}"
    );
    assert_eq!(bed.var("BootOrder").unwrap(), vec![7, 0, 0, 0, 1, 0, 0, 0]);

    std::fs::write(
        bed.p("cmdline"),
        format!("console=ttyS0 kitfleet.buildkey={}\n", key('b')),
    )
    .unwrap();
    assert_eq!(fw.report(), Some(key('b')));
    fw.commit(&staged).unwrap();
    assert_eq!(
        bed.var("BootOrder").unwrap(),
        vec![7, 0, 0, 0, 2, 0, 1, 0, 0, 0]
    );
}

#[test]
fn bad_input_is_named() {
    let bed = Bed::new();
    let uki = bed.uki("u.efi", b"x");
    let mut fw = bed.fw(&bed.p("esp"));
    let e = fw.stage("sha256:abc", &uki).unwrap_err().to_string();
    assert!(e.starts_with("build key:"), "{e}");
    let e = fw
        .stage(&key('c'), &bed.p("missing.efi"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.efi"), "{e}");
    bed.set_var("BootOrder", &[1, 0, 0]);
    bed.set_var("Boot0000", &[]);
    let staged = fw.stage(&key('c'), &uki).unwrap();
    assert_eq!(
        staged.boot_number,
        Some(1),
        "a malformed Boot0000 is kept, not reused"
    );
    std::fs::write(bed.p("cmdline"), format!("kitfleet.buildkey={}", key('c'))).unwrap();
    let e = fw.commit(&staged).unwrap_err();
    assert!(
        matches!(e, UpgradeError::BadVariable { ref name, .. } if name == "BootOrder"),
        "{e}"
    );
}

#[test]
fn a_full_esp_fails_staging_with_the_sizes() {
    let bed = Bed::new();
    let esp = bed.p("esp");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "kitfleet-upgrade-esp"])
        .arg(&esp)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mounting a tmpfs failed under CI=true"
        );
        eprintln!("skipping: cannot mount a tmpfs (needs root)");
        return;
    }
    let uki = bed.uki("big.efi", &vec![0xaa; 256 * 1024]);
    let result = bed.fw(&esp).stage(&key('d'), &uki);
    let leftovers: Vec<_> = std::fs::read_dir(esp.join("EFI/kitfleet"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let _ = std::process::Command::new("umount").arg(&esp).status();
    match result {
        Err(UpgradeError::EspFull { needed, free, .. }) => {
            assert_eq!(needed, 256 * 1024);
            assert!(free < needed);
        }
        other => panic!("expected EspFull, got {other:?}"),
    }
    let e = UpgradeError::EspFull {
        esp: esp.clone(),
        needed: 262144,
        free: 61440,
    }
    .to_string();
    assert!(e.contains("262144") && e.contains("61440"), "{e}");
    assert!(leftovers.is_empty(), "no half-written UKI: {leftovers:?}");
    assert!(
        bed.var("Boot0000").is_none(),
        "no load option for a failed stage"
    );
}

/// A/B on a full ESP: staging removes the UKIs no live entry (BootCurrent, BootNext, BootOrder) boots — a
/// superseded image without an entry and a staged one that never became live — with their Kitfleet entries,
/// and keeps what the firmware may still boot (privileged: a 512 KiB tmpfs ESP).
#[test]
fn a_full_esp_drops_what_no_live_entry_boots() {
    let bed = Bed::new();
    let esp = bed.p("esp");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "kitfleet-upgrade-esp-ab"])
        .arg(&esp)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mounting a tmpfs failed under CI=true"
        );
        eprintln!("skipping: cannot mount a tmpfs (needs root)");
        return;
    }
    let result = std::panic::catch_unwind(|| {
        let mut fw = bed.fw(&esp);
        let size = 160 * 1024;
        // Committed and booted: A.
        let a = fw
            .stage(&key('a'), &bed.uki("a.efi", &vec![0xa1; size]))
            .unwrap();
        let na = a.boot_number.unwrap();
        bed.set_var("BootOrder", &na.to_le_bytes());
        bed.set_var("BootCurrent", &na.to_le_bytes());
        // Staged, tried, never live again: B.
        let b = fw
            .stage(&key('b'), &bed.uki("b.efi", &vec![0xb2; size]))
            .unwrap();
        // An older image without an entry (the disk's own first UKI): C.
        let c = bed.uki("c.efi", &vec![0xc3; size]);
        let (c_sha, _) = file_sha256(&c).unwrap();
        std::fs::copy(&c, esp.join(format!("EFI/kitfleet/{c_sha}.efi"))).unwrap();
        let d = fw
            .stage(&key('d'), &bed.uki("d.efi", &vec![0xd4; size]))
            .unwrap();
        let on_esp = |sha: &str| esp.join(format!("EFI/kitfleet/{sha}.efi")).exists();
        assert!(on_esp(&a.uki_sha256), "the committed UKI stays");
        assert!(on_esp(&d.uki_sha256), "the new UKI is staged");
        assert!(!on_esp(&b.uki_sha256) && !on_esp(&c_sha), "B and C removed");
        let nb = b.boot_number.unwrap();
        assert!(bed.var(&efi::boot_name(na)).is_some());
        assert_eq!(
            d.boot_number,
            Some(nb),
            "B's entry was removed; D takes the lowest free number"
        );
    });
    let _ = std::process::Command::new("umount").arg(&esp).status();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
