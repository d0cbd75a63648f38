//! End to end with the builder core: fixture images in a real local registry, a NodeImage
//! built by the `kitfleet-build` binary into all three disk formats (twice, for a byte
//! comparison), and each disk booted under qemu TCG with OVMF until the onboot fixture's
//! marker and a clean power-off.

mod disk_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use disk_support::*;
use kitfleet_builder::disk::{self, DiskFormat};
use kitfleet_builder::fixtures::{self, Registry};

const MARKER: &str = "KITFLEET-DISK-ONBOOT-3c9e";

fn build(file: &Path, out: &Path, cache: &Path, reg: &str) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_kitfleet-build"))
        .arg("build")
        .arg(file)
        .arg("-o")
        .arg(out)
        .arg("--cache")
        .arg(cache)
        .args(["--insecure-registry", reg, "--json", "--no-progress"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "build failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn nodeimage_disks_boot_to_the_onboot_marker() {
    if !prerequisites() || !have(&["docker-registry", "runc"]) {
        return;
    }
    let reg = Registry::start().expect("docker-registry");
    let a = reg.addr.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let images = [
            (fixtures::kernel_image().unwrap(), "fixtures/kernel:6.1"),
            (fixtures::init_image().unwrap(), "fixtures/init:v1"),
            (
                fixtures::marker_image(MARKER).unwrap(),
                "fixtures/marker:v1",
            ),
        ];
        for (spec, name) in images {
            spec.build()
                .unwrap()
                .push(&format!("{a}/{name}"))
                .await
                .unwrap();
        }
    });
    let work = tempfile::tempdir().unwrap();
    let manifest = work.path().join("node.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: kitfleet.dev/v1alpha1\nkind: NodeImage\nmetadata:\n  name: node\nspec:\n  \
             kernel:\n    image: {a}/fixtures/kernel:6.1\n    cmdline: console=ttyS0 panic=-1\n  \
             init:\n  - {a}/fixtures/init:v1\n  onboot:\n  - name: marker\n    image: \
             {a}/fixtures/marker:v1\n  formats: [raw-efi, qcow2-efi, iso-efi-initrd]\n  \
             output:\n    repository: {a}/kitfleet/node\n"
        ),
    )
    .unwrap();
    let (out1, out2) = (work.path().join("out1"), work.path().join("out2"));
    let first = build(&manifest, &out1, &work.path().join("cache1"), &a);
    build(&manifest, &out2, &work.path().join("cache2"), &a);

    for format in [
        DiskFormat::RawEfi,
        DiskFormat::Qcow2Efi,
        DiskFormat::IsoEfiInitrd,
    ] {
        let name = format.file_name("node");
        let (p1, p2) = (out1.join(&name), out2.join(&name));
        let digest = disk::file_digest(&p1).unwrap();
        assert_eq!(
            digest,
            disk::file_digest(&p2).unwrap(),
            "{format}: two cold builds differ"
        );
        assert!(
            first.to_string().contains(&digest.sha256),
            "{format}: the build summary reports its sha256 {}",
            digest.sha256
        );
        let drive = match format {
            DiskFormat::RawEfi => format!("file={},format=raw,if=virtio,readonly=on", p1.display()),
            DiskFormat::Qcow2Efi => {
                format!("file={},format=qcow2,if=virtio,readonly=on", p1.display())
            }
            DiskFormat::IsoEfiInitrd => {
                format!(
                    "file={},media=cdrom,if=none,id=cd0,readonly=on",
                    p1.display()
                )
            }
        };
        let mut args = vec!["-drive", drive.as_str()];
        if format == DiskFormat::IsoEfiInitrd {
            args.extend(["-device", "ide-cd,drive=cd0"]);
        }
        let boot = boot(&args, work.path(), Duration::from_secs(300));
        let what = format!("{format} from kitfleet-build");
        assert!(
            boot.serial.contains(MARKER),
            "{what}: no onboot marker:\n{}",
            boot.serial
        );
        assert!(
            boot.serial
                .contains("kitfleet-init: onboot 000-marker exited 0"),
            "{what}: onboot did not succeed:\n{}",
            boot.serial
        );
        assert!(
            boot.serial.contains("reboot: Power down") && boot.exited && boot.success,
            "{what}: no clean power-off:\n{}",
            boot.serial
        );
        eprintln!(
            "{what}: {} bytes, onboot marker and power-off in {:.1} s (wall)",
            digest.size,
            boot.elapsed.as_secs_f64()
        );
    }
}
