//! Hostile layers: one test per rejection. Each error names the layer digest and the entry, and
//! the build writes nothing outside its output and cache directories.

use kitfleet_builder::Error;
use kitfleet_builder::tree::{Limits, Tree};

/// A raw ustar entry, written by hand so that names no well-behaved writer produces are possible.
struct Raw<'a> {
    name: &'a str,
    kind: u8,
    link: &'a str,
    size: u64,
    data: &'a [u8],
}

fn octal(buf: &mut [u8], v: u64) {
    let s = format!("{:0width$o}\0", v, width = buf.len() - 1);
    buf.copy_from_slice(s.as_bytes());
}

fn raw_tar(entries: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = [0u8; 512];
        h[..e.name.len()].copy_from_slice(e.name.as_bytes());
        octal(&mut h[100..108], 0o644);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], e.size);
        octal(&mut h[136..148], 0);
        h[156] = e.kind;
        h[157..157 + e.link.len()].copy_from_slice(e.link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw {
        name,
        kind: b'0',
        link: "",
        size: data.len() as u64,
        data,
    }
}

const LAYER: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn reject(entries: &[Raw], limits: Limits) -> (String, String) {
    let tar = raw_tar(entries);
    let err = Tree::new()
        .apply_layer(LAYER, &tar[..], limits)
        .unwrap_err();
    let text = err.to_string();
    match err {
        Error::HostileEntry {
            layer,
            entry,
            reason,
        } => {
            assert_eq!(layer, LAYER);
            assert!(text.contains(LAYER) && text.contains(&entry), "{text}");
            (entry, reason)
        }
        other => panic!("expected a hostile-entry error, got {other}"),
    }
}

#[test]
fn path_traversal_is_rejected() {
    let (entry, reason) = reject(&[file("a/../../etc/passwd", b"x")], Limits::default());
    assert_eq!(entry, "a/../../etc/passwd");
    assert!(reason.contains("traversal"), "{reason}");
}

#[test]
fn absolute_path_is_rejected() {
    let (entry, reason) = reject(&[file("/etc/shadow", b"x")], Limits::default());
    assert_eq!(entry, "/etc/shadow");
    assert!(reason.contains("absolute"), "{reason}");
}

#[test]
fn escaping_symlink_is_rejected() {
    let (entry, reason) = reject(
        &[Raw {
            name: "usr/lib/evil",
            kind: b'2',
            link: "../../../../root",
            size: 0,
            data: b"",
        }],
        Limits::default(),
    );
    assert_eq!(entry, "usr/lib/evil");
    assert!(reason.contains("escapes"), "{reason}");
}

#[test]
fn writing_through_a_symlink_parent_is_rejected() {
    let (entry, reason) = reject(
        &[
            Raw {
                name: "etc2",
                kind: b'2',
                link: "/etc",
                size: 0,
                data: b"",
            },
            file("etc2/passwd", b"root::0:0::/:/bin/sh\n"),
        ],
        Limits::default(),
    );
    assert_eq!(entry, "etc2/passwd");
    assert!(reason.contains("symlink"), "{reason}");
}

#[test]
fn escaping_hardlink_is_rejected() {
    let (entry, reason) = reject(
        &[Raw {
            name: "x",
            kind: b'1',
            link: "../../etc/shadow",
            size: 0,
            data: b"",
        }],
        Limits::default(),
    );
    assert_eq!(entry, "x");
    assert!(reason.contains("hardlink"), "{reason}");
}

#[test]
fn hardlink_to_a_missing_file_is_rejected() {
    let (entry, reason) = reject(
        &[Raw {
            name: "x",
            kind: b'1',
            link: "etc/shadow",
            size: 0,
            data: b"",
        }],
        Limits::default(),
    );
    assert_eq!(entry, "x");
    assert!(reason.contains("does not exist"), "{reason}");
}

#[test]
fn device_node_outside_dev_is_rejected() {
    let (entry, reason) = reject(
        &[Raw {
            name: "tmp/sda",
            kind: b'4',
            link: "",
            size: 0,
            data: b"",
        }],
        Limits::default(),
    );
    assert_eq!(entry, "tmp/sda");
    assert!(reason.contains("device node outside /dev"), "{reason}");
    // Inside /dev it is fine.
    let tar = raw_tar(&[Raw {
        name: "dev/null",
        kind: b'3',
        link: "",
        size: 0,
        data: b"",
    }]);
    Tree::new()
        .apply_layer(LAYER, &tar[..], Limits::default())
        .unwrap();
}

#[test]
fn absurd_entry_size_is_rejected_before_reading() {
    // The header claims 5 GiB; no data follows. The size check fires before any read.
    let (entry, reason) = reject(
        &[Raw {
            name: "huge",
            kind: b'0',
            link: "",
            size: 5 << 30,
            data: b"",
        }],
        Limits::default(),
    );
    assert_eq!(entry, "huge");
    assert!(reason.contains("exceeds the limit"), "{reason}");
}

#[test]
fn absurd_total_size_is_rejected() {
    let limits = Limits {
        max_total_size: 1000,
        ..Limits::default()
    };
    let big = vec![b'a'; 600];
    let (entry, reason) = reject(&[file("a", &big), file("b", &big)], limits);
    assert_eq!(entry, "b");
    assert!(reason.contains("image content exceeds"), "{reason}");
}

#[test]
fn too_many_entries_are_rejected() {
    let limits = Limits {
        max_entries: 3,
        ..Limits::default()
    };
    let (entry, reason) = reject(
        &[
            file("a", b""),
            file("b", b""),
            file("c", b""),
            file("d", b""),
        ],
        limits,
    );
    assert_eq!(entry, "d");
    assert!(reason.contains("more than 3 entries"), "{reason}");
}

#[test]
fn whiteouts_apply_only_to_lower_layers() {
    let mut t = Tree::new();
    t.apply_layer(
        LAYER,
        &raw_tar(&[file("etc/a", b"1"), file("etc/b", b"2"), file("keep", b"k")])[..],
        Limits::default(),
    )
    .unwrap();
    t.apply_layer(
        LAYER,
        &raw_tar(&[
            file("etc/c", b"3"),
            file("etc/.wh..wh..opq", b""),
            file(".wh.keep", b""),
        ])[..],
        Limits::default(),
    )
    .unwrap();
    let names: Vec<_> = t.entries().map(|e| e.path.clone()).collect();
    assert_eq!(names, vec!["etc", "etc/c"]);
}

/// Through the whole CLI: a hostile image in an OCI layout fails the build with exit code 4,
/// the error names the layer digest and the entry, and nothing appears outside the output dir.
#[test]
fn hostile_image_fails_the_build_without_writing_outside() {
    use kitfleet_builder::fixtures::ImageSpec;
    let work = tempfile::tempdir().unwrap();
    let victim = work.path().join("victim");
    let tar = raw_tar(&[Raw {
        name: "../victim",
        kind: b'0',
        link: "",
        size: 4,
        data: b"pwnd",
    }]);
    let img = ImageSpec::default().build_raw(&[tar]);
    let layer = img.layers[0].0.clone();
    img.write_layout(&work.path().join("evil"), "v1").unwrap();
    let yml = work.path().join("evil.yml");
    std::fs::write(
        &yml,
        format!("init:\n  - oci:{}:v1\n", work.path().join("evil").display()),
    )
    .unwrap();
    let out = work.path().join("out");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_kitfleet-build"))
        .arg("build")
        .arg(&yml)
        .arg("-o")
        .arg(&out)
        .arg("--cache")
        .arg(work.path().join("cache"))
        .args(["--format", "tar", "--no-progress"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&layer) && stderr.contains("../victim"),
        "{stderr}"
    );
    assert!(!victim.exists());
    let mut top: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, vec!["cache", "evil", "evil.yml", "out"]);
}

#[test]
fn an_overlong_utf8_name_is_rejected_without_panicking() {
    // Byte 64 falls inside a two-byte character: the shortened name in the error must not split it.
    let name = format!("a{}", "é".repeat(40));
    let limits = Limits {
        max_path_len: 70,
        ..Limits::default()
    };
    let (entry, reason) = reject(&[file(&name, b"x")], limits);
    assert!(name.starts_with(&entry) && entry.len() <= 64, "{entry}");
    assert!(reason.contains("path longer than 70 bytes"), "{reason}");
}
