//! End to end against a real Debian `docker-registry` on 127.0.0.1: fixture images pushed by the
//! test, a NodeImage built by the `kitfleet-build` binary, the kernel+initrd output booted under
//! qemu TCG, byte-identical rebuilds (cold and warm cache), and the artifact push → pull round trip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kitfleet_builder::fixtures::{self, Registry};

const MARKER: &str = "KITFLEET-ONBOOT-MARKER-7f3a";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kitfleet-build")
}

fn build(file: &Path, out: &Path, cache: &Path, reg: &str, extra: &[&str]) -> serde_json::Value {
    let o = Command::new(bin())
        .arg("build")
        .arg(file)
        .arg("-o")
        .arg(out)
        .arg("--cache")
        .arg(cache)
        .args(["--insecure-registry", reg, "--json", "--no-progress"])
        .args(extra)
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

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p: PathBuf| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn registry_build_boot_rebuild_push_pull() {
    let reg = Registry::start().expect("docker-registry");
    let a = reg.addr.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        fixtures::kernel_image()
            .unwrap()
            .build()
            .unwrap()
            .push(&format!("{a}/fixtures/kernel:6.1"))
            .await
            .unwrap();
        fixtures::init_image()
            .unwrap()
            .build()
            .unwrap()
            .push(&format!("{a}/fixtures/init:v1"))
            .await
            .unwrap();
        fixtures::marker_image(MARKER)
            .unwrap()
            .build()
            .unwrap()
            .push(&format!("{a}/fixtures/marker:v1"))
            .await
            .unwrap();
    });
    let work = tempfile::tempdir().unwrap();
    let ni = work.path().join("demo.yaml");
    std::fs::write(
        &ni,
        format!(
            "apiVersion: kitfleet.dev/v1alpha1\nkind: NodeImage\nmetadata:\n  name: demo\nspec:\n  kernel:\n    image: {a}/fixtures/kernel:6.1\n    cmdline: console=ttyS0 panic=-1\n  init:\n  - {a}/fixtures/init:v1\n  onboot:\n  - name: marker\n    image: {a}/fixtures/marker:v1\n  files:\n  - path: etc/kitfleet/hello\n    contents: hello\n    mode: \"0644\"\n  formats: [kernel+initrd, tar, tar-kernel-initrd]\n  output:\n    repository: {a}/kitfleet/demo\n"
        ),
    )
    .unwrap();
    let (out1, out2, out3) = (
        work.path().join("out1"),
        work.path().join("out2"),
        work.path().join("out3"),
    );
    let (cache1, cache2) = (work.path().join("cache1"), work.path().join("cache2"));
    let push_repo = format!("{a}/kitfleet/demo");
    let first = build(&ni, &out1, &cache1, &a, &["--push", &push_repo]);
    let cold = build(&ni, &out2, &cache2, &a, &[]);
    let warm = build(&ni, &out3, &cache1, &a, &[]);
    assert_eq!(first["build"]["buildKey"], cold["build"]["buildKey"]);
    assert_eq!(
        warm["build"]["builtSegments"], 0,
        "warm build reused every segment: {warm}"
    );

    // Byte-identical outputs across a cold and a warm rebuild.
    let (f1, f2, f3) = (files(&out1), files(&out2), files(&out3));
    assert_eq!(
        f1.iter().map(|f| &f.0).collect::<Vec<_>>(),
        vec![
            "demo-cmdline",
            "demo-initrd.img",
            "demo-initrd.tar",
            "demo-kernel",
            "demo.tar"
        ]
    );
    for ((a1, b1), ((_, b2), (_, b3))) in f1.iter().zip(f2.iter().zip(&f3)) {
        assert!(b1 == b2, "{a1} differs between two cold builds");
        assert!(b1 == b3, "{a1} differs between cold and warm builds");
    }

    // The tar holds LinuxKit's layout.
    let tar = std::fs::read(out1.join("demo.tar")).unwrap();
    let mut names = Vec::new();
    for e in tar::Archive::new(&tar[..]).entries().unwrap() {
        names.push(e.unwrap().path().unwrap().to_string_lossy().into_owned());
    }
    for want in [
        "boot/kernel",
        "boot/cmdline",
        "init",
        "usr/bin/runc",
        "containers/onboot/000-marker/config.json",
        "containers/onboot/000-marker/runtime.json",
        "containers/onboot/000-marker/rootfs/bin/busybox",
        "etc/kitfleet/hello",
    ] {
        assert!(
            names.iter().any(|n| n.trim_end_matches('/') == want),
            "{want} missing from tar"
        );
    }

    // Boot it.
    let boot = fixtures::boot_qemu(
        &out1.join("demo-kernel"),
        &out1.join("demo-initrd.img"),
        "console=ttyS0 panic=-1",
        Duration::from_secs(180),
        false,
    )
    .unwrap();
    assert!(
        boot.console.contains(MARKER),
        "marker not on the console:\n{}",
        boot.console
    );
    assert!(
        boot.console
            .contains("kitfleet-init: onboot 000-marker exited 0"),
        "{}",
        boot.console
    );
    assert!(
        boot.console.contains("reboot: Power down"),
        "no clean power-off:\n{}",
        boot.console
    );
    assert!(boot.exited, "qemu did not exit by itself");

    // Pull the pushed artifact back and compare.
    let key = first["build"]["buildKey"].as_str().unwrap();
    let pulled_dir = work.path().join("pulled");
    let o = Command::new(bin())
        .args(["pull", &format!("{a}/kitfleet/demo:bk-{key}"), "-o"])
        .arg(&pulled_dir)
        .arg("--cache")
        .arg(work.path().join("cache3"))
        .args(["--insecure-registry", &a])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "pull: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let pulled: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(pulled["digest"], first["published"]["digest"]);
    assert_eq!(pulled["config"]["buildKey"], key);
    assert_eq!(pulled["config"]["inputs"].as_array().unwrap().len(), 3);
    assert_eq!(files(&pulled_dir), f1);
}
