//! Timings of the disk writers (a measurement, not a test: `#[ignore]`d, prints a table).
//!
//! `cargo test -p kitfleet-builder --release --test disk_bench -- --ignored --nocapture`
//!
//! Inputs: Debian's cloud kernel and a deterministic initrd padded with 128 MiB of
//! incompressible bytes. The "copy floor" column is the time to write the same number of
//! bytes from memory to a file in the same directory.

mod disk_support;

use std::time::Instant;

use disk_support::*;
use kitfleet_builder::disk::{self, DiskFormat, DiskOptions};

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn measure_disk_writers() {
    if !prerequisites() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mut payload = Payload::new("bench");
    let mut noise = Vec::with_capacity(128 << 20);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    while noise.len() < 128 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    let mut extra = Newc::new();
    extra.entry("noise", 0o100644, &noise, (0, 0));
    payload.initrd.extend(extra.finish());
    drop(noise);

    println!(
        "kernel {} bytes, initrd {} bytes",
        payload.kernel.len(),
        payload.initrd.len()
    );
    println!(
        "{:<16} {:>12} {:>9} {:>12}",
        "output", "bytes", "seconds", "copy floor s"
    );
    let start = Instant::now();
    let uki = disk::write_uki(&payload.inputs(), &work.path().join("node.efi")).unwrap();
    row("uki", uki.size, start.elapsed().as_secs_f64(), work.path());
    for format in DiskFormat::ALL {
        let path = work.path().join(format.file_name("node"));
        let start = Instant::now();
        let info =
            disk::write_disk(format, &payload.inputs(), &DiskOptions::default(), &path).unwrap();
        row(
            format.name(),
            info.digest.size,
            start.elapsed().as_secs_f64(),
            work.path(),
        );
    }
    let start = Instant::now();
    disk::write_disks(
        &DiskFormat::ALL,
        &payload.inputs(),
        &DiskOptions::default(),
        work.path(),
        "all",
    )
    .unwrap();
    println!(
        "{:<16} {:>12} {:>9.2}",
        "all three",
        "-",
        start.elapsed().as_secs_f64()
    );
}

fn row(name: &str, size: u64, secs: f64, dir: &std::path::Path) {
    let buf = vec![1u8; size as usize];
    let start = Instant::now();
    std::fs::write(dir.join("floor"), &buf).unwrap();
    let floor = start.elapsed().as_secs_f64();
    std::fs::remove_file(dir.join("floor")).unwrap();
    println!("{name:<16} {size:>12} {secs:>9.2} {floor:>12.2}");
}
