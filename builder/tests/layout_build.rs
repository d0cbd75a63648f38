//! Builds from local OCI layouts (no registry): concurrent builds sharing one cache, and
//! `SOURCE_DATE_EPOCH`.

use std::path::Path;
use std::process::Command;

use kitfleet_builder::fixtures::{self, ImageSpec};
use kitfleet_builder::tree::Entry;

fn setup(dir: &Path) -> std::path::PathBuf {
    fixtures::kernel_image()
        .unwrap()
        .build()
        .unwrap()
        .write_layout(&dir.join("kernel"), "k")
        .unwrap();
    let init = ImageSpec {
        layers: vec![vec![
            Entry::dir("etc", 0o755, 2_000_000_000),
            Entry::file("etc/issue", b"kitfleet\n".to_vec(), 0o644, 2_000_000_000),
            Entry::file("big", vec![7u8; 1 << 20], 0o644, 1_000),
        ]],
        ..Default::default()
    };
    init.build()
        .unwrap()
        .write_layout(&dir.join("init"), "i")
        .unwrap();
    let yml = dir.join("img.yml");
    std::fs::write(
        &yml,
        format!(
            "kernel:\n  image: oci:{}:k\n  cmdline: console=ttyS0\ninit:\n  - oci:{}:i\n",
            dir.join("kernel").display(),
            dir.join("init").display()
        ),
    )
    .unwrap();
    yml
}

fn build(yml: &Path, out: &Path, cache: &Path, epoch: Option<&str>) -> std::process::Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kitfleet-build"));
    c.arg("build")
        .arg(yml)
        .arg("-o")
        .arg(out)
        .arg("--cache")
        .arg(cache);
    c.args(["--format", "kernel+initrd,tar", "--json", "--no-progress"]);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c.env_remove("SOURCE_DATE_EPOCH");
    if let Some(e) = epoch {
        c.env("SOURCE_DATE_EPOCH", e);
    }
    c.spawn().unwrap()
}

fn finish(c: std::process::Child) -> serde_json::Value {
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn concurrent_builds_share_one_cache() {
    let work = tempfile::tempdir().unwrap();
    let yml = setup(work.path());
    let cache = work.path().join("cache");
    let kids: Vec<_> = (0..3)
        .map(|i| build(&yml, &work.path().join(format!("out{i}")), &cache, None))
        .collect();
    let results: Vec<_> = kids.into_iter().map(finish).collect();
    for r in &results[1..] {
        assert_eq!(r["build"]["buildKey"], results[0]["build"]["buildKey"]);
        assert_eq!(
            r["build"]["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| &o["digest"])
                .collect::<Vec<_>>(),
            results[0]["build"]["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| &o["digest"])
                .collect::<Vec<_>>()
        );
    }
    // No temporary files are left behind in the cache.
    assert_eq!(std::fs::read_dir(cache.join("tmp")).unwrap().count(), 0);
    // And a later build reuses every segment.
    let again = finish(build(&yml, &work.path().join("out9"), &cache, None));
    assert_eq!(again["build"]["builtSegments"], 0);
}

#[test]
fn source_date_epoch_sets_generated_times_and_clamps_image_times() {
    let work = tempfile::tempdir().unwrap();
    let yml = setup(work.path());
    let plain = finish(build(
        &yml,
        &work.path().join("a"),
        &work.path().join("c1"),
        None,
    ));
    let pinned = finish(build(
        &yml,
        &work.path().join("b"),
        &work.path().join("c2"),
        Some("1600000000"),
    ));
    assert_ne!(plain["build"]["buildKey"], pinned["build"]["buildKey"]);
    let mtimes = |dir: &str| {
        let tar = std::fs::read(work.path().join(dir).join("img.tar")).unwrap();
        let mut m = std::collections::BTreeMap::new();
        for e in tar::Archive::new(&tar[..]).entries().unwrap() {
            let e = e.unwrap();
            m.insert(
                e.path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_string(),
                e.header().mtime().unwrap(),
            );
        }
        m
    };
    let (a, b) = (mtimes("a"), mtimes("b"));
    assert_eq!(
        a["boot/cmdline"], 1_492_533_000,
        "LinuxKit's defaultModTime"
    );
    assert_eq!(a["etc/issue"], 2_000_000_000, "image times kept");
    assert_eq!(a["big"], 1_000);
    assert_eq!(b["boot/cmdline"], 1_600_000_000);
    assert_eq!(
        b["etc/issue"], 1_600_000_000,
        "clamped to SOURCE_DATE_EPOCH"
    );
    assert_eq!(b["big"], 1_000, "older times kept");
    // A bad value is a clear error.
    let o = build(
        &yml,
        &work.path().join("x"),
        &work.path().join("c3"),
        Some("yesterday"),
    )
    .wait_with_output()
    .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("SOURCE_DATE_EPOCH"));
}

/// The disk formats of `src/disk` are reachable from `--format` and reproducible too.
#[test]
fn raw_efi_format_is_wired_and_reproducible() {
    let work = tempfile::tempdir().unwrap();
    let yml = setup(work.path());
    let run = |out: &str, cache: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_kitfleet-build"))
            .arg("build")
            .arg(&yml)
            .arg("-o")
            .arg(work.path().join(out))
            .arg("--cache")
            .arg(work.path().join(cache))
            .args(["--format", "raw-efi", "--json", "--no-progress"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["build"]["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| (o["format"].clone(), o["path"].clone(), o["digest"].clone()))
            .collect::<Vec<_>>()
    };
    let a = run("a", "c1");
    let b = run("b", "c2");
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].0, "raw-efi");
    assert!(
        a[0].1.as_str().unwrap().ends_with("img-efi.raw"),
        "{:?}",
        a[0].1
    );
    assert_eq!(a[0].2, b[0].2, "raw-efi differs between two builds");
}
