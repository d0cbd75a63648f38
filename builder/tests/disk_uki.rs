//! The assembled UKI read back by binutils, an independent PE reader: every section holds
//! exactly its input, the timestamp is zero, sections follow the header's alignment.

mod disk_support;

use std::process::Command;

use disk_support::*;
use kitfleet_builder::disk;

#[test]
fn binutils_reads_back_every_section() {
    if !prerequisites() || !have(&["objcopy", "objdump"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let payload = Payload::new("uki");
    let uki = work.path().join("node.efi");
    let digest = disk::write_uki(&payload.inputs(), &uki).unwrap();
    assert_eq!(digest, disk::file_digest(&uki).unwrap());
    let again = work.path().join("again.efi");
    disk::write_uki(&payload.inputs(), &again).unwrap();
    assert_eq!(
        std::fs::read(&uki).unwrap(),
        std::fs::read(&again).unwrap(),
        "UKI differs on rebuild"
    );

    let headers = run(Command::new("objdump").arg("-p").arg(&uki));
    assert!(
        headers.contains("Time/Date\t\tThu Jan  1 00:00:00 1970"),
        "{headers}"
    );
    let alignment = headers
        .lines()
        .find_map(|l| l.strip_prefix("SectionAlignment\t"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .expect("SectionAlignment");

    let sections = run(Command::new("objdump").arg("-h").arg(&uki));
    let expected: [(&str, &[u8]); 4] = [
        (".osrel", OS_RELEASE.as_bytes()),
        (".cmdline", payload.cmdline.as_bytes()),
        (".linux", &payload.kernel),
        (".initrd", &payload.initrd),
    ];
    for (name, content) in expected {
        let line = sections
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{sections}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        let size = u64::from_str_radix(fields[2], 16).unwrap();
        let vma = u64::from_str_radix(fields[3], 16).unwrap();
        assert_eq!(size, content.len() as u64, "{name} size");
        assert_eq!(
            vma % alignment,
            0,
            "{name} VMA {vma:#x} not aligned to {alignment:#x}"
        );
        let dumped = work.path().join(name.trim_start_matches('.'));
        run(Command::new("objcopy")
            .args(["-O", "binary", "--only-section", name])
            .arg(&uki)
            .arg(&dumped));
        assert!(
            std::fs::read(&dumped).unwrap() == content,
            "{name} content differs"
        );
    }
}

/// The UKI can be signed for Secure Boot afterwards: sbsign computes the Authenticode hash
/// over our headers and sections, and sbverify accepts the result.
#[test]
fn sbsign_signs_and_sbverify_accepts_the_uki() {
    if !prerequisites() || !have(&["sbsign", "sbverify", "openssl"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let payload = Payload::new("signed");
    disk::write_uki(&payload.inputs(), &dir.join("uki.efi")).unwrap();
    let listing = Command::new("sbverify")
        .arg("--list")
        .arg(dir.join("uki.efi"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stderr).into_owned()
        + &String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("No signature table present"), "{listing}");
    run(Command::new("openssl")
        .args([
            "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=kitfleet-disk-test", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem")));
    run(Command::new("sbsign")
        .arg("--key")
        .arg(dir.join("key.pem"))
        .arg("--cert")
        .arg(dir.join("cert.pem"))
        .arg("--output")
        .arg(dir.join("signed.efi"))
        .arg(dir.join("uki.efi")));
    let verified = run(Command::new("sbverify")
        .arg("--cert")
        .arg(dir.join("cert.pem"))
        .arg(dir.join("signed.efi")));
    assert!(verified.contains("Signature verification OK"), "{verified}");
}
