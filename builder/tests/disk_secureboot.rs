//! Secure Boot: a UKI signed after assembly (sbsign, Debian's snakeoil key) and placed on the
//! disk with `write_disk_from_uki` boots under OVMF with Secure Boot enforced (the snakeoil
//! certificate is enrolled in Debian's `OVMF_VARS_4M.snakeoil.fd`); the unsigned disk is
//! refused by the firmware.

mod disk_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use disk_support::*;
use kitfleet_builder::disk::{self, DiskFormat, DiskOptions, Error, PrebuiltUki};

const CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
const VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";
const KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
const CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";

fn secure_boot(disk: &Path, work: &Path, stop_on: Option<&str>) -> Boot {
    let vars = work.join("vars.fd");
    std::fs::copy(VARS, &vars).unwrap();
    let code = format!("if=pflash,format=raw,unit=0,readonly=on,file={CODE}");
    let vars = format!("if=pflash,format=raw,unit=1,file={}", vars.display());
    let firmware = [
        "-machine",
        "q35,smm=on",
        "-global",
        "driver=cfi.pflash01,property=secure,value=on",
        "-drive",
        &code,
        "-drive",
        &vars,
    ];
    let drive = format!("file={},format=raw,if=virtio,readonly=on", disk.display());
    boot_with(
        &firmware,
        &["-drive", &drive],
        work,
        Duration::from_secs(300),
        stop_on,
    )
}

#[test]
fn a_signed_uki_boots_with_secure_boot_and_an_unsigned_one_is_refused() {
    if !prerequisites() || !have(&[CODE, VARS, KEY, CERT, "sbsign", "openssl"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let payload = Payload::new("secure-5b");
    disk::write_uki(&payload.inputs(), &dir.join("uki.efi")).unwrap();
    // Debian ships the snakeoil key encrypted with the passphrase "snakeoil".
    run(Command::new("openssl")
        .args(["pkey", "-passin", "pass:snakeoil", "-in", KEY, "-out"])
        .arg(dir.join("key.pem")));
    run(Command::new("sbsign")
        .arg("--key")
        .arg(dir.join("key.pem"))
        .args(["--cert", CERT, "--output"])
        .arg(dir.join("signed.efi"))
        .arg(dir.join("uki.efi")));
    let signed = std::fs::read(dir.join("signed.efi")).unwrap();
    let prebuilt = PrebuiltUki {
        uki: &signed,
        build_key: [0x5a; 32],
        mtime: 1_700_000_000,
    };
    let options = DiskOptions::default();
    let a = disk::write_disk_from_uki(DiskFormat::RawEfi, &prebuilt, &options, &dir.join("a.raw"))
        .unwrap();
    let b = disk::write_disk_from_uki(DiskFormat::RawEfi, &prebuilt, &options, &dir.join("b.raw"))
        .unwrap();
    assert_eq!(a.digest, b.digest, "same signed UKI, same disk");
    assert_eq!(a.uki, disk::file_digest(&dir.join("signed.efi")).unwrap());

    let boot = secure_boot(&a.path, dir, None);
    assert_clean_boot(
        &boot,
        "secure-5b",
        "raw-efi with a signed UKI, Secure Boot on",
    );
    assert!(
        boot.serial.contains("Secure boot enabled"),
        "the kernel saw Secure Boot on"
    );

    let unsigned = dir.join("unsigned.raw");
    disk::write_disk(DiskFormat::RawEfi, &payload.inputs(), &options, &unsigned).unwrap();
    let boot = secure_boot(&unsigned, dir, Some("No bootable option"));
    assert!(
        boot.serial.contains("Access Denied") || boot.serial.contains("Security Violation"),
        "firmware refused the unsigned UKI; serial:\n{}",
        boot.serial
    );
    assert!(
        !boot.serial.contains(MARKER_PREFIX),
        "the unsigned UKI must not run"
    );
}

#[test]
fn a_prebuilt_uki_must_be_a_uki() {
    if !prerequisites() {
        return;
    }
    let payload = Payload::new("x");
    let work = tempfile::tempdir().unwrap();
    for (bytes, field) in [
        (&payload.stub[..], "section table"),
        (&payload.initrd[..], "e_magic"),
    ] {
        let prebuilt = PrebuiltUki {
            uki: bytes,
            build_key: [0; 32],
            mtime: 0,
        };
        let err = disk::write_disk_from_uki(
            DiskFormat::IsoEfiInitrd,
            &prebuilt,
            &DiskOptions::default(),
            &work.path().join("x.iso"),
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::Uki { field: f, .. } if f == field),
            "{err}"
        );
        assert!(err.to_string().starts_with("UKI: "), "{err}");
    }
}
