//! Timings of the disk writers (a measurement, not a test: `#[ignore]`d, prints a table).
//!
//! `cargo test -p kitfleet-builder --release --test disk_bench -- --ignored --nocapture`
//!
//! Inputs: Debian's cloud kernel and a deterministic initrd padded with 128 MiB of
//! incompressible bytes. Each figure is the best of three runs. "copy floor" is the time to
//! write the same number of bytes from memory to a file in the same directory;
//! "allocated" shows the holes left for long runs of zeros.

mod disk_support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use disk_support::*;
use kitfleet_builder::disk::{self, DiskFormat, DiskOptions};

fn best_of_3(f: &mut dyn FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

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
        "kernel {} bytes, initrd {} bytes, best of 3",
        payload.kernel.len(),
        payload.initrd.len()
    );
    println!(
        "{:<16} {:>12} {:>12} {:>9} {:>12}",
        "output", "bytes", "allocated", "seconds", "copy floor s"
    );
    let inputs = payload.inputs();
    let options = DiskOptions::default();
    let uki = work.path().join("node.efi");
    let secs = best_of_3(&mut || {
        disk::write_uki(&inputs, &uki).unwrap();
    });
    row("uki", &uki, secs, work.path());
    for format in DiskFormat::ALL {
        let path = work.path().join(format.file_name("node"));
        let secs = best_of_3(&mut || {
            disk::write_disk(format, &inputs, &options, &path).unwrap();
        });
        row(format.name(), &path, secs, work.path());
    }
    let secs = best_of_3(&mut || {
        disk::write_disks(&DiskFormat::ALL, &inputs, &options, work.path(), "all").unwrap();
    });
    println!("{:<16} {:>12} {:>12} {secs:>9.2}", "all three", "-", "-");
}

fn row(name: &str, path: &Path, secs: f64, dir: &Path) {
    let meta = std::fs::metadata(path).unwrap();
    let buf = vec![1u8; meta.len() as usize];
    let floor_path = dir.join("floor");
    let floor = best_of_3(&mut || {
        std::fs::write(&floor_path, &buf).unwrap();
        std::fs::remove_file(&floor_path).unwrap();
    });
    println!(
        "{name:<16} {:>12} {:>12} {secs:>9.2} {floor:>12.2}",
        meta.len(),
        meta.blocks() * 512
    );
}
