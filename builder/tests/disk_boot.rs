//! The three disk formats built from Debian's kernel and a busybox initrd, checked with
//! independent tools (fsck.fat, mtools, sfdisk, xorriso, qemu-img), built twice for a
//! byte comparison, and booted under qemu TCG with OVMF.

mod disk_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use disk_support::*;
use kitfleet_builder::disk::{self, DiskFormat, DiskOptions, FALLBACK_PATH, OutputInfo};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn build_twice(format: DiskFormat, payload: &Payload, root: &Path) -> OutputInfo {
    let options = DiskOptions::default();
    let mut infos = Vec::new();
    for round in ["a", "b"] {
        let dir = root.join(round);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format.file_name("node"));
        let info = disk::write_disk(format, &payload.inputs(), &options, &path).unwrap();
        assert_eq!(
            info.digest,
            disk::file_digest(&path).unwrap(),
            "{format}: reported digest"
        );
        infos.push(info);
    }
    let (a, b) = (&infos[0], &infos[1]);
    assert_eq!(
        std::fs::read(&a.path).unwrap(),
        std::fs::read(&b.path).unwrap(),
        "{format}: two builds differ"
    );
    eprintln!(
        "{format}: {} bytes, sha256 {} (identical on rebuild)",
        a.digest.size, a.digest.sha256
    );
    infos.swap_remove(0)
}

/// Checks the ESP of a raw disk with sfdisk, fsck.fat and mtools; returns the UKI from it.
fn check_raw_disk(info: &OutputInfo, work: &Path) -> Vec<u8> {
    let verify = Command::new("sfdisk")
        .arg("--verify")
        .arg(&info.path)
        .output()
        .unwrap();
    let verify = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        verify.contains("No errors detected") && !verify.contains("corrupt"),
        "sfdisk --verify:\n{verify}"
    );
    let dump = run(Command::new("sfdisk").arg("--dump").arg(&info.path));
    let (disk_guid, esp_guid) = disk::disk_guids(&[0x5a; 32]);
    assert!(dump.contains("label: gpt"), "{dump}");
    assert!(
        dump.to_lowercase()
            .contains(&format!("label-id: {disk_guid}")),
        "{dump}"
    );
    assert!(
        dump.to_lowercase().contains(&format!("uuid={esp_guid}")),
        "{dump}"
    );
    assert!(
        dump.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        "{dump}"
    );
    let start: u64 = dump
        .lines()
        .find_map(|l| l.split("start=").nth(1))
        .and_then(|s| s.split(',').next())
        .map(|s| s.trim().parse().unwrap())
        .expect("partition start");
    let size: u64 = dump
        .lines()
        .find_map(|l| l.split("size=").nth(1))
        .and_then(|s| s.split(',').next())
        .map(|s| s.trim().parse().unwrap())
        .expect("partition size");
    let esp = work.join("esp.img");
    extract(&info.path, start * 512, size * 512, &esp);
    let fsck = assert_fsck_clean(&esp);
    assert!(fsck.contains("32 bit entries"), "the ESP is FAT32:\n{fsck}");
    let listing = run(Command::new("mdir")
        .args(["-b", "-/", "-i"])
        .arg(&esp)
        .arg("::"));
    let uki_path = info.uki_esp_path.as_deref().expect("raw-efi names its UKI");
    assert!(
        uki_path.starts_with("EFI/kitfleet/") && uki_path.ends_with(".efi"),
        "{uki_path}"
    );
    for wanted in [FALLBACK_PATH, uki_path] {
        assert!(
            listing.contains(&format!("::/{wanted}")),
            "{wanted} not on the ESP:\n{listing}"
        );
    }
    let fallback = work.join("BOOTX64.EFI");
    let named = work.join("named.efi");
    run(Command::new("mcopy")
        .arg("-n")
        .arg("-i")
        .arg(&esp)
        .arg(format!("::/{FALLBACK_PATH}"))
        .arg(&fallback));
    run(Command::new("mcopy")
        .arg("-n")
        .arg("-i")
        .arg(&esp)
        .arg(format!("::/{uki_path}"))
        .arg(&named));
    let uki = std::fs::read(&fallback).unwrap();
    assert_eq!(
        uki,
        std::fs::read(&named).unwrap(),
        "both ESP copies are the same UKI"
    );
    assert_eq!(disk::file_digest(&fallback).unwrap(), info.uki);
    assert!(uki_path.contains(&info.uki.sha256));
    // Room for the next UKI (the other A/B slot) is left free.
    let minfo = run(Command::new("mdir").arg("-i").arg(&esp).arg("::"));
    let free: u64 = minfo
        .lines()
        .find_map(|l| l.trim().strip_suffix(" bytes free"))
        .map(|n| n.trim().replace(' ', "").parse().unwrap())
        .expect("mdir free bytes");
    assert!(
        free >= info.uki.size,
        "{free} bytes free < UKI {}",
        info.uki.size
    );
    uki
}

#[test]
fn raw_efi_is_reproducible_fsck_clean_and_boots() {
    if !prerequisites() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let payload = Payload::new("raw-7f3a");
    let info = build_twice(DiskFormat::RawEfi, &payload, work.path());
    check_raw_disk(&info, work.path());
    let drive = format!(
        "file={},format=raw,if=virtio,readonly=on",
        info.path.display()
    );
    let boot = boot(&["-drive", &drive], work.path(), BOOT_TIMEOUT);
    assert_clean_boot(&boot, "raw-7f3a", "raw-efi");
}

#[test]
fn qcow2_efi_is_reproducible_checks_and_boots() {
    if !prerequisites() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let payload = Payload::new("qcow2-91c2");
    let info = build_twice(DiskFormat::Qcow2Efi, &payload, work.path());
    run(Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&info.path));
    // The qcow2 holds exactly the raw-efi disk of the same inputs.
    let raw = work.path().join("raw.img");
    disk::write_disk(
        DiskFormat::RawEfi,
        &payload.inputs(),
        &DiskOptions::default(),
        &raw,
    )
    .unwrap();
    run(Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(&info.path)
        .arg(&raw));
    let drive = format!(
        "file={},format=qcow2,if=virtio,readonly=on",
        info.path.display()
    );
    let boot = boot(&["-drive", &drive], work.path(), BOOT_TIMEOUT);
    assert_clean_boot(&boot, "qcow2-91c2", "qcow2-efi");
}

#[test]
fn iso_efi_initrd_is_reproducible_fsck_clean_and_boots() {
    if !prerequisites() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let payload = Payload::new("iso-c0de");
    let info = build_twice(DiskFormat::IsoEfiInitrd, &payload, work.path());
    let report = run(Command::new("xorriso")
        .args(["-indev"])
        .arg(&info.path)
        .args(["-report_el_torito", "plain"]));
    assert!(report.contains("UEFI"), "an EFI boot entry:\n{report}");
    // The boot image sits at block 23 and is also /EFIBOOT.IMG.
    let listing = run(Command::new("xorriso")
        .args(["-indev"])
        .arg(&info.path)
        .args(["-find", "/", "-exec", "lsdl"]));
    assert!(listing.contains("EFIBOOT.IMG"), "{listing}");
    let image_len = std::fs::metadata(&info.path).unwrap().len() - 23 * 2048;
    let esp = work.path().join("efiboot.img");
    extract(&info.path, 23 * 2048, image_len, &esp);
    let fsck = assert_fsck_clean(&esp);
    assert!(
        fsck.contains("16 bit entries"),
        "a small boot image is FAT16:\n{fsck}"
    );
    let uki = work.path().join("uki.efi");
    run(Command::new("mcopy")
        .arg("-n")
        .arg("-i")
        .arg(&esp)
        .arg(format!("::/{FALLBACK_PATH}"))
        .arg(&uki));
    assert_eq!(disk::file_digest(&uki).unwrap(), info.uki);
    let drive = format!(
        "file={},media=cdrom,if=none,id=cd0,readonly=on",
        info.path.display()
    );
    let boot = boot(
        &["-drive", &drive, "-device", "ide-cd,drive=cd0"],
        work.path(),
        BOOT_TIMEOUT,
    );
    assert_clean_boot(&boot, "iso-c0de", "iso-efi-initrd");
}

#[test]
fn write_disks_builds_every_format_once_and_reports_digests() {
    if !prerequisites() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let payload = Payload::new("all");
    let infos = disk::write_disks(
        &DiskFormat::ALL,
        &payload.inputs(),
        &DiskOptions::default(),
        work.path(),
        "node",
    )
    .unwrap();
    assert_eq!(
        infos.iter().map(|i| i.format).collect::<Vec<_>>(),
        DiskFormat::ALL.to_vec()
    );
    for info in &infos {
        assert_eq!(info.path, work.path().join(info.format.file_name("node")));
        assert_eq!(
            disk::file_digest(&info.path).unwrap(),
            info.digest,
            "{}",
            info.format
        );
        assert_eq!(info.uki, infos[0].uki, "one UKI for all formats");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&info.path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o644, "{}", info.format);
    }
    // The stand-alone UKI is the one on the disks.
    let uki = work.path().join("node.efi");
    assert_eq!(
        disk::write_uki(&payload.inputs(), &uki).unwrap(),
        infos[0].uki
    );
    // No temporary files are left behind.
    let mut names: Vec<String> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "node-efi-initrd.iso",
            "node-efi.qcow2",
            "node-efi.raw",
            "node.efi"
        ]
    );
}

/// A boot image over 32 MiB does not fit the El Torito sector count; it is written as 0 and
/// firmware takes the rest of the medium, which is exactly the image.
#[test]
fn iso_with_a_boot_image_over_32_mib_boots() {
    if !prerequisites() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mut payload = Payload::new("iso-big");
    // A second cpio archive (the kernel unpacks concatenated archives) with 24 MiB of
    // incompressible bytes.
    let mut noise = Vec::with_capacity(24 << 20);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while noise.len() < 24 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    let mut extra = Newc::new();
    extra.entry("noise", 0o100644, &noise, (0, 0));
    payload.initrd.extend(extra.finish());
    let path = work.path().join("big.iso");
    let info = disk::write_disk(
        DiskFormat::IsoEfiInitrd,
        &payload.inputs(),
        &DiskOptions::default(),
        &path,
    )
    .unwrap();
    assert!(info.digest.size > 23 * 2048 + (32 << 20));
    let iso = std::fs::read(&path).unwrap();
    let entry = 22 * 2048 + 32;
    assert_eq!(iso[entry], 0x88);
    assert_eq!(
        u16::from_le_bytes([iso[entry + 6], iso[entry + 7]]),
        0,
        "sector count"
    );
    drop(iso);
    let drive = format!(
        "file={},media=cdrom,if=none,id=cd0,readonly=on",
        path.display()
    );
    let boot = boot(
        &["-drive", &drive, "-device", "ide-cd,drive=cd0"],
        work.path(),
        BOOT_TIMEOUT,
    );
    assert_clean_boot(&boot, "iso-big", "iso-efi-initrd (40 MiB UKI)");
}
