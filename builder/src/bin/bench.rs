//! `kitfleet-build-bench`: cold build, warm rebuild and `tar | gzip -6` of the same content.
//!
//! Generates a deterministic ~100 MiB init image (compressible text and random data), stores it
//! with the Debian kernel fixture as local OCI layouts, then times, in one run on this machine:
//! a cold build (empty cache), a warm rebuild (same cache), and `tar -c | gzip -6` of the same
//! files. Prints a table and whether the floors hold (warm ≤ 10% cold; cold ≤ 1.3× tar|gzip).
//!
//! Usage: `cargo run --release -p kitfleet-builder --bin kitfleet-build-bench [-- MIB]`

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kitfleet_api::OutputFormat;
use kitfleet_api::linuxkit::Config;
use kitfleet_builder::assemble::{self, Mtime};
use kitfleet_builder::build::{self, BuildOptions};
use kitfleet_builder::cache::Cache;
use kitfleet_builder::fixtures::{self, ImageSpec};
use kitfleet_builder::progress::Progress;
use kitfleet_builder::source::{SourceOptions, Sources};
use kitfleet_builder::tree::{Entry, Limits};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const WORDS: [&str; 32] = [
    "kernel",
    "initrd",
    "container",
    "namespace",
    "overlay",
    "cgroup",
    "capability",
    "mount",
    "runtime",
    "service",
    "onboot",
    "shutdown",
    "digest",
    "layer",
    "manifest",
    "registry",
    "node",
    "fleet",
    "rollout",
    "drain",
    "reboot",
    "kexec",
    "sandbox",
    "landlock",
    "seccomp",
    "wireguard",
    "peer",
    "route",
    "policy",
    "profile",
    "build",
    "cache",
];

/// Deterministic content: `mib` MiB in files of 4 KiB – 2 MiB, about 60% text and 40% random.
fn content(mib: u64) -> Vec<Entry> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut entries = vec![
        Entry::dir("opt", 0o755, 1_700_000_000),
        Entry::dir("opt/bench", 0o755, 1_700_000_000),
    ];
    let target = mib << 20;
    let mut total = 0u64;
    let mut i = 0;
    while total < target {
        let size = (4096 + rng.next() % (2 << 20)).min(target - total);
        let mut data = Vec::with_capacity(size as usize);
        if rng.next() % 10 < 6 {
            while (data.len() as u64) < size {
                data.extend_from_slice(WORDS[(rng.next() % 32) as usize].as_bytes());
                data.push(if rng.next().is_multiple_of(12) {
                    b'\n'
                } else {
                    b' '
                });
            }
            data.truncate(size as usize);
        } else {
            while (data.len() as u64) < size {
                data.extend_from_slice(&rng.next().to_le_bytes());
            }
            data.truncate(size as usize);
        }
        let dir = format!("opt/bench/d{:02}", i % 16);
        if i < 16 {
            entries.push(Entry::dir(dir.clone(), 0o755, 1_700_000_000));
        }
        entries.push(Entry::file(
            format!("{dir}/f{i:05}"),
            data,
            0o644,
            1_700_000_000,
        ));
        total += size;
        i += 1;
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries
}

async fn build_once(yaml: &Config, cache: &Path, out: &Path) -> Result<(Duration, usize)> {
    let start = Instant::now();
    let sources = Sources::new(Cache::open(cache)?, SourceOptions::default());
    tracing::debug!(elapsed = ?start.elapsed(), "sources ready");
    let (map, statuses) = build::resolve_all(&sources, yaml, true).await?;
    tracing::debug!(elapsed = ?start.elapsed(), "resolved");
    let mtime = Mtime {
        generated: assemble::LINUXKIT_MTIME,
        clamp: None,
    };
    let formats = vec![OutputFormat::KernelInitrd];
    let key = build::build_key(yaml, &map, &formats, "amd64", mtime, 6, Path::new("."))?;
    let plan = assemble::plan(yaml, &map, mtime, Path::new("."))?;
    let opts = BuildOptions {
        formats,
        out_dir: out.to_path_buf(),
        name: "bench".into(),
        level: 6,
        base_dir: ".".into(),
        mtime,
        limits: Limits::default(),
        progress: Progress::plain(),
        stub_path: kitfleet_builder::disk::DEFAULT_STUB_PATH.into(),
    };
    tracing::debug!(elapsed = ?start.elapsed(), "planned");
    let r = build::build(&sources, &plan, key, statuses, &opts).await?;
    tracing::debug!(elapsed = ?start.elapsed(), "built");
    Ok((start.elapsed(), r.built_segments))
}

fn tar_gzip(dir: &Path) -> Result<(Duration, u64)> {
    let start = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -cf - . | gzip -6 | wc -c",
            dir.display()
        ))
        .output()
        .context("tar | gzip")?;
    if !out.status.success() {
        bail!("tar | gzip failed: {}", out.status);
    }
    let size = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    Ok((start.elapsed(), size))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mib: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100);
    let work = tempfile::tempdir()?;
    let entries = content(mib);
    let bytes: u64 = entries.iter().map(|e| e.size()).sum();
    eprintln!(
        "generated {} files, {:.1} MiB",
        entries.len(),
        bytes as f64 / (1 << 20) as f64
    );

    // The same files on disk for tar | gzip.
    let plain = work.path().join("plain");
    for e in &entries {
        let p = plain.join(&e.path);
        match fixtures::file_data(e) {
            Some(d) => std::fs::write(&p, d)?,
            None => std::fs::create_dir_all(&p)?,
        }
    }
    let init = ImageSpec {
        layers: vec![entries],
        ..Default::default()
    }
    .build()?;
    init.write_layout(&work.path().join("init"), "bench")?;
    fixtures::kernel_image()?
        .build()?
        .write_layout(&work.path().join("kernel"), "bench")?;
    let yaml = Config::from_yaml(&format!(
        "kernel:\n  image: oci:{}:bench\n  cmdline: console=ttyS0\ninit:\n  - oci:{}:bench\n",
        work.path().join("kernel").display(),
        work.path().join("init").display()
    ))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cache = work.path().join("cache");
    let (cold, built_cold) =
        rt.block_on(build_once(&yaml, &cache, &work.path().join("out-cold")))?;
    let (warm, built_warm) =
        rt.block_on(build_once(&yaml, &cache, &work.path().join("out-warm")))?;
    let same = std::fs::read(work.path().join("out-cold/bench-initrd.img"))?
        == std::fs::read(work.path().join("out-warm/bench-initrd.img"))?;
    let (tg, tg_size) = tar_gzip(&plain)?;
    let initrd_size = std::fs::metadata(work.path().join("out-cold/bench-initrd.img"))?.len();

    let s = |d: Duration| d.as_secs_f64();
    println!(
        "| measurement ({mib} MiB init image, {} cores) | seconds | ratio |",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("|---|---|---|");
    println!(
        "| `tar -c \\| gzip -6` of the same files | {:.2} | 1.00 |",
        s(tg)
    );
    println!(
        "| kitfleet-build cold (empty cache, {built_cold} segments built) | {:.2} | {:.2}× tar\\|gzip |",
        s(cold),
        s(cold) / s(tg)
    );
    println!(
        "| kitfleet-build warm (same cache, {built_warm} segments built) | {:.2} | {:.1}% of cold |",
        s(warm),
        100.0 * s(warm) / s(cold)
    );
    println!();
    let warm_ok = s(warm) <= 0.10 * s(cold);
    let cold_ok = s(cold) <= 1.3 * s(tg);
    println!(
        "floor warm <= 10% of cold: {}",
        if warm_ok { "met" } else { "NOT met" }
    );
    println!(
        "floor cold <= 1.3x tar|gzip: {}",
        if cold_ok { "met" } else { "NOT met" }
    );
    println!(
        "goal  cold <= 1.0x tar|gzip: {}; goal warm <= 5% of cold: {}",
        if s(cold) <= s(tg) { "met" } else { "not met" },
        if s(warm) <= 0.05 * s(cold) {
            "met"
        } else {
            "not met"
        }
    );
    println!("initrd identical between cold and warm builds: {same}");
    println!(
        "sizes: tar|gzip -6 {tg_size} bytes; initrd {initrd_size} bytes (includes the kernel modules member)"
    );
    Ok(())
}
