//! `kitfleet-node-agent upgrade` end to end against files: a GPT disk with a FAT ESP made by independent
//! tools (sfdisk, mkfs.vfat, mcopy) holding a UKI made with objcopy from Debian's systemd stub; a temp-dir
//! ESP and efivarfs stand-in. The UKI read back from FAT16 and FAT32 volumes is byte-identical; the load
//! option names the partition sfdisk made; `--commit` follows BootCurrent; a bad digest is refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use kitfleet_node_agent::upgrade::{artifact, efi, esp_image, gpt, kexec};

const GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

fn tools_or_skip() -> bool {
    let have = ["sfdisk", "mkfs.vfat", "mcopy", "mmd", "objcopy"]
        .iter()
        .all(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        && Path::new(STUB).exists();
    assert!(
        have || std::env::var("CI").as_deref() != Ok("true"),
        "sfdisk/mkfs.vfat/mtools/objcopy/stub missing under CI=true"
    );
    have
}

fn run(c: &mut Command) {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn key() -> String {
    "ab".repeat(32)
}

/// A UKI: Debian's stub with .cmdline/.linux/.initrd sections added by objcopy.
fn make_uki(dir: &Path) -> (PathBuf, Vec<u8>, Vec<u8>, String) {
    let cmdline = format!("console=ttyS0 kitfleet.buildkey={}", key());
    let linux: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let initrd: Vec<u8> = (0..9_000u32).map(|i| (i * 13 % 241) as u8).collect();
    std::fs::write(dir.join("cmd"), &cmdline).unwrap();
    std::fs::write(dir.join("linux"), &linux).unwrap();
    std::fs::write(dir.join("initrd"), &initrd).unwrap();
    let uki = dir.join("uki.efi");
    run(Command::new("objcopy")
        .current_dir(dir)
        .args([
            "--add-section",
            ".cmdline=cmd",
            "--change-section-vma",
            ".cmdline=0x30000",
        ])
        .args([
            "--add-section",
            ".linux=linux",
            "--change-section-vma",
            ".linux=0x2000000",
        ])
        .args([
            "--add-section",
            ".initrd=initrd",
            "--change-section-vma",
            ".initrd=0x3000000",
        ])
        .arg(STUB)
        .arg(&uki));
    (uki, linux, initrd, cmdline)
}

/// A GPT disk (partition 1 = ESP at 1 MiB) with a FAT `fat` (16 or 32) volume holding the UKI as
/// EFI/BOOT/BOOTX64.EFI; returns (disk, start LBA, size LBAs).
fn make_disk(dir: &Path, uki: &Path, fat: u32) -> (PathBuf, u64, u64) {
    let disk = dir.join(format!("disk{fat}.img"));
    let esp_mib = if fat == 32 { 40 } else { 16 };
    run(Command::new("truncate")
        .args(["-s", &format!("{}M", esp_mib + 2)])
        .arg(&disk));
    let sf = Command::new("sh")
        .arg("-c")
        .arg(format!("echo 'label: gpt\nstart=2048, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B' | sfdisk -q {}", esp_mib * 2048, disk.display()))
        .status()
        .unwrap();
    assert!(sf.success());
    let esp = dir.join(format!("esp{fat}.img"));
    run(Command::new("mkfs.vfat")
        .args(["-F", &fat.to_string(), "-C"])
        .arg(&esp)
        .arg((esp_mib * 1024).to_string()));
    let img = format!("{}", esp.display());
    run(Command::new("mmd").args(["-i", &img, "::EFI", "::EFI/BOOT"]));
    run(Command::new("mcopy")
        .args(["-i", &img])
        .arg(dir.join("linux"))
        .arg("::EFI/LINUX.BIN"));
    run(Command::new("mcopy")
        .args(["-i", &img])
        .arg(uki)
        .arg("::EFI/BOOT/BOOTX64.EFI"));
    run(Command::new("dd")
        .arg(format!("if={}", esp.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=512", "seek=2048", "conv=notrunc", "status=none"]));
    (disk, 2048, esp_mib * 2048)
}

#[test]
fn uki_comes_out_of_fat16_and_fat32_esps_and_its_sections_parse() {
    if !tools_or_skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (uki, linux, initrd, cmdline) = make_uki(d.path());
    let want = std::fs::read(&uki).unwrap();
    for fat in [16, 32] {
        let (disk, start, size) = make_disk(d.path(), &uki, fat);
        let mut out = Vec::new();
        let n = esp_image::extract_uki(&mut std::fs::File::open(&disk).unwrap(), &mut out).unwrap();
        assert_eq!(n, want.len() as u64);
        assert!(out == want, "FAT{fat}: extracted UKI differs");
        let p = gpt::read_partition(&mut std::fs::File::open(&disk).unwrap(), 1).unwrap();
        assert_eq!((p.start_lba, p.size_lba), (start, size), "FAT{fat}");
    }
    let s = kexec::sections(&want).unwrap();
    assert!(s.linux == linux && s.initrd == initrd);
    assert_eq!(s.cmdline, cmdline);
    let e = kexec::sections(b"MZ no pe").unwrap_err().to_string();
    assert!(e.starts_with("uki:"), "{e}");
}

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kitfleet-node-agent"))
}

#[test]
fn upgrade_command_stages_sets_bootnext_and_commits_bootcurrent() {
    if !tools_or_skip() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (uki, ..) = make_uki(d.path());
    let (disk, start, size) = make_disk(d.path(), &uki, 32);
    let (esp, vars, work) = (
        d.path().join("esp"),
        d.path().join("vars"),
        d.path().join("work"),
    );
    std::fs::create_dir_all(&esp).unwrap();
    std::fs::create_dir_all(&vars).unwrap();
    let cmdline = d.path().join("cmdline");
    std::fs::write(&cmdline, "console=ttyS0\n").unwrap();
    let o = agent()
        .args([
            "upgrade",
            "--method",
            "firmware",
            "--no-reboot",
            "--esp-partition",
            "1",
            "--build-key",
            &key(),
        ])
        .arg("--disk")
        .arg(&disk)
        .arg("--esp-disk")
        .arg(&disk)
        .arg("--esp")
        .arg(&esp)
        .arg("--efivars")
        .arg(&vars)
        .arg("--work")
        .arg(&work)
        .arg("--proc-cmdline")
        .arg(&cmdline)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (sha, _) = kitfleet_node_agent::upgrade::firmware::file_sha256(&uki).unwrap();
    assert_eq!(
        std::fs::read(esp.join(format!("EFI/kitfleet/{sha}.efi"))).unwrap(),
        std::fs::read(&uki).unwrap()
    );
    let boot = std::fs::read(vars.join(format!("Boot0000-{GUID}"))).unwrap();
    let info = efi::parse_load_option("Boot0000", &boot[4..]).unwrap();
    assert_eq!(info.description, format!("Kitfleet {}", &key()[..12]));
    assert_eq!(info.file, Some(format!("\\EFI\\kitfleet\\{sha}.efi")));
    // The HD() node carries sfdisk's partition: start and size at bytes 8..24 of the node.
    let dp = &boot[4 + 6 + 2 * (info.description.len() + 1)..];
    assert_eq!(&dp[..4], &[4, 1, 42, 0]);
    assert_eq!(u64::from_le_bytes(dp[8..16].try_into().unwrap()), start);
    assert_eq!(u64::from_le_bytes(dp[16..24].try_into().unwrap()), size);
    assert_eq!(
        std::fs::read(vars.join(format!("BootNext-{GUID}"))).unwrap(),
        vec![7, 0, 0, 0, 0, 0]
    );

    let commit = |args: &[&str]| {
        agent()
            .args(["upgrade", "--commit"])
            .args(args)
            .arg("--efivars")
            .arg(&vars)
            .arg("--proc-cmdline")
            .arg(&cmdline)
            .output()
            .unwrap()
    };
    // Not booted into it yet: refused, BootOrder untouched.
    let o = commit(&[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("kitfleet.buildkey"));
    // Booted into it (firmware wrote BootCurrent, the kernel reports the key): committed first.
    std::fs::write(
        &cmdline,
        format!("console=ttyS0 kitfleet.buildkey={}\n", key()),
    )
    .unwrap();
    std::fs::write(vars.join(format!("BootCurrent-{GUID}")), [6, 0, 0, 0, 0, 0]).unwrap();
    std::fs::write(vars.join(format!("BootOrder-{GUID}")), [7, 0, 0, 0, 3, 0]).unwrap();
    let o = commit(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(vars.join(format!("BootOrder-{GUID}"))).unwrap(),
        vec![7, 0, 0, 0, 0, 0, 3, 0]
    );
    // Booted into another entry: refused.
    std::fs::write(vars.join(format!("BootCurrent-{GUID}")), [6, 0, 0, 0, 3, 0]).unwrap();
    std::fs::write(
        vars.join(format!("Boot0003-{GUID}")),
        [
            &[7, 0, 0, 0][..],
            &efi::load_option(
                "Other",
                &gpt::read_partition(&mut std::fs::File::open(&disk).unwrap(), 1).unwrap(),
                "x.efi",
            )
            .unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    let o = commit(&[]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("\"Other\""),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_file_whose_digest_does_not_match_is_refused_with_both_digests() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("f");
    std::fs::write(&p, b"hello").unwrap();
    let good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    artifact::verify(&p, &format!("sha256:{good}")).unwrap();
    let bad = "0".repeat(64);
    let e = artifact::verify(&p, &format!("sha256:{bad}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&bad) && e.contains(good), "{e}");
    let s = br#"{"digest":"sha256:x","config":{"buildKey":"ab"},"files":[{"format":"raw-efi","role":"r","path":"/p","size":1,"digest":"sha256:y"}]}"#;
    let pulled = artifact::parse_pull_summary(s).unwrap();
    assert_eq!(pulled.build_key, "ab");
    assert_eq!(pulled.files[0].format, "raw-efi");
    let e = artifact::parse_pull_summary(br#"{"config":{},"files":[]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.buildKey"), "{e}");
}
