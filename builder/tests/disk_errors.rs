//! Rejected inputs: each error names the input and, where sizes are the reason, the sizes;
//! nothing is left behind in the output directory.

mod disk_support;

use std::path::Path;

use disk_support::*;
use kitfleet_builder::disk::{self, DiskFormat, DiskInputs, DiskOptions, Error};

fn dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

/// The kernel with its setup header changed to refuse initrds above `max` (no 64-bit
/// initrd loading), as a 32-bit-only kernel would.
fn kernel_with_initrd_addr_max(kernel: &[u8], max: u32) -> Vec<u8> {
    let mut k = kernel.to_vec();
    k[0x22c..0x230].copy_from_slice(&max.to_le_bytes());
    let xloadflags = u16::from_le_bytes([k[0x236], k[0x237]]) & !(1 << 1);
    k[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    k
}

#[test]
fn esp_overflow_names_the_sizes_and_writes_nothing() {
    if !prerequisites() {
        return;
    }
    let payload = Payload::new("x");
    let out = tempfile::tempdir().unwrap();
    // 40 MiB is a valid FAT32 size, but two copies of the ~16 MiB UKI plus one more for the
    // A/B slot do not fit.
    let options = DiskOptions {
        esp_size: Some(40 << 20),
        ..DiskOptions::default()
    };
    let err = disk::write_disk(
        DiskFormat::RawEfi,
        &payload.inputs(),
        &options,
        &out.path().join("d.raw"),
    )
    .unwrap_err();
    let Error::EspOverflow {
        needed,
        headroom,
        esp_size,
        available,
    } = err
    else {
        panic!("unexpected {err}")
    };
    assert_eq!(esp_size, 40 << 20);
    assert!(
        needed + headroom > available,
        "{needed} + {headroom} vs {available}"
    );
    let text = Error::EspOverflow {
        needed,
        headroom,
        esp_size,
        available,
    }
    .to_string();
    for n in [needed, headroom, esp_size, available] {
        assert!(text.contains(&n.to_string()), "{text}");
    }
    assert!(dir_is_empty(out.path()), "no partial output");

    // With no requested free space the same ESP holds the two copies, and fsck agrees.
    let options = DiskOptions {
        esp_size: Some(40 << 20),
        esp_free: Some(0),
        ..DiskOptions::default()
    };
    let path = out.path().join("d.raw");
    let info = disk::write_disk(DiskFormat::RawEfi, &payload.inputs(), &options, &path).unwrap();
    assert_eq!(info.digest.size, (40 << 20) + (2 << 20));
    let esp = out.path().join("esp");
    extract(&path, 1 << 20, 40 << 20, &esp);
    assert_fsck_clean(&esp);
}

#[test]
fn an_esp_too_small_for_fat32_is_refused() {
    if !prerequisites() {
        return;
    }
    let payload = Payload::new("x");
    let out = tempfile::tempdir().unwrap();
    let options = DiskOptions {
        esp_size: Some(16 << 20),
        ..DiskOptions::default()
    };
    let err = disk::write_disk(
        DiskFormat::RawEfi,
        &payload.inputs(),
        &options,
        &out.path().join("d.raw"),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::EspTooSmall { esp_size, min } if esp_size == 16 << 20 && min > 32 << 20),
        "{err}"
    );
    assert!(err.to_string().contains("65525 clusters"), "{err}");
}

#[test]
fn an_initrd_beyond_the_kernels_limit_names_both_sizes() {
    if !prerequisites() {
        return;
    }
    let payload = Payload::new("x");
    let kernel = kernel_with_initrd_addr_max(&payload.kernel, 0xffff);
    let inputs = DiskInputs {
        kernel: &kernel,
        ..payload.inputs()
    };
    let out = tempfile::tempdir().unwrap();
    for format in DiskFormat::ALL {
        let err = disk::write_disk(
            format,
            &inputs,
            &DiskOptions::default(),
            &out.path().join("d"),
        )
        .unwrap_err();
        let Error::InitrdTooLarge { initrd, limit } = err else {
            panic!("{format}: unexpected {err}")
        };
        assert_eq!((initrd, limit), (payload.initrd.len() as u64, 0x10000));
    }
    assert!(dir_is_empty(out.path()));
}

#[test]
fn bad_kernel_cmdline_os_release_and_stub_are_named() {
    if !prerequisites() {
        return;
    }
    let payload = Payload::new("x");
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("d.raw");
    let opts = DiskOptions::default();
    let write = |inputs: DiskInputs<'_>| {
        disk::write_disk(DiskFormat::RawEfi, &inputs, &opts, &path).unwrap_err()
    };

    let err = write(DiskInputs {
        kernel: b"not a kernel",
        ..payload.inputs()
    });
    assert!(matches!(err, Error::Kernel { .. }), "{err}");
    let err = write(DiskInputs {
        kernel: &payload.initrd,
        ..payload.inputs()
    });
    assert!(err.to_string().starts_with("kernel: "), "{err}");

    let err = write(DiskInputs {
        cmdline: "console=ttyS0 caf\u{e9}",
        ..payload.inputs()
    });
    assert!(
        matches!(err, Error::Cmdline { .. }) && err.to_string().contains("byte 17"),
        "{err}"
    );
    let long = "x".repeat(5000);
    let err = write(DiskInputs {
        cmdline: &long,
        ..payload.inputs()
    });
    assert!(err.to_string().contains("5000 bytes"), "{err}");

    let err = write(DiskInputs {
        os_release: "",
        ..payload.inputs()
    });
    assert!(matches!(err, Error::OsRelease { .. }), "{err}");

    let err = write(DiskInputs {
        stub: &payload.kernel[..100],
        ..payload.inputs()
    });
    assert!(err.to_string().starts_with("UKI stub: "), "{err}");
    assert!(dir_is_empty(out.path()));
}

#[test]
fn unwritable_outputs_and_unknown_formats_are_errors() {
    if !prerequisites() {
        return;
    }
    let payload = Payload::new("x");
    let err = disk::write_disk(
        DiskFormat::IsoEfiInitrd,
        &payload.inputs(),
        &DiskOptions::default(),
        Path::new("/nonexistent-dir/x.iso"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent-dir"), "{err}");
    let err = "vhd".parse::<DiskFormat>().unwrap_err();
    assert!(err.to_string().starts_with("format: \"vhd\""), "{err}");
    assert_eq!("raw-efi".parse::<DiskFormat>().unwrap(), DiskFormat::RawEfi);

    let out = tempfile::tempdir().unwrap();
    let options = DiskOptions {
        qemu_img: "/nonexistent/qemu-img".into(),
        ..DiskOptions::default()
    };
    let err = disk::write_disk(
        DiskFormat::Qcow2Efi,
        &payload.inputs(),
        &options,
        &out.path().join("d.qcow2"),
    )
    .unwrap_err();
    assert!(matches!(err, Error::QemuImg { .. }), "{err}");
    assert!(dir_is_empty(out.path()), "the scratch raw disk is removed");
}
