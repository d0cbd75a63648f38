//! The Kitfleet builder demo and the pieces `scripts/demo.sh` uses around the kind cluster.
//!
//! - `demo [--keep DIR]`: builder only — start a local registry, make the fixture images, build the
//!   example NodeImage, push the artifact, and boot the kernel+initrd output under qemu with the serial
//!   console on this terminal (`bash scripts/demo.sh --builder-only`).
//! - `demo fixtures REGISTRY`: make the fixture images `examples/nodeimage-minimal.yaml` names and push
//!   them to REGISTRY (`REGISTRY/kitfleet/{kernel:6.1,init:1,hello:1}`).
//! - `demo boot KERNEL INITRD CMDLINE MARKER`: boot a pulled kernel+initrd under qemu (TCG), console
//!   on this terminal; fails unless MARKER is printed and the machine powers off cleanly.
//!
//! `cargo run --release -p kitfleet-builder --example demo [-- …]`
//!
//! Needs (Debian 12): `docker-registry qemu-system-x86 qemu-utils busybox-static runc linux-image-cloud-amd64`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kitfleet_api::NodeImage;
use kitfleet_builder::assemble::{self, Mtime};
use kitfleet_builder::build::{self, BuildOptions};
use kitfleet_builder::cache::Cache;
use kitfleet_builder::fixtures::{self, Registry};
use kitfleet_builder::progress::Progress;
use kitfleet_builder::source::{SourceOptions, Sources};
use kitfleet_builder::tree::Limits;

const MARKER: &str = "Hello from a Kitfleet onboot container";

fn check_tools() -> Result<()> {
    let mut missing = Vec::new();
    for (tool, pkg) in [
        ("/usr/bin/docker-registry", "docker-registry"),
        ("/usr/bin/qemu-system-x86_64", "qemu-system-x86 qemu-utils"),
        ("/bin/busybox", "busybox-static"),
        ("/usr/sbin/runc", "runc"),
    ] {
        if !std::path::Path::new(tool).exists() {
            missing.push(pkg);
        }
    }
    if fixtures::host_kernel().is_err() {
        missing.push("linux-image-cloud-amd64");
    }
    if !missing.is_empty() {
        bail!(
            "missing Debian packages; run: apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        );
    }
    Ok(())
}

/// Pushes the fixtures `examples/nodeimage-minimal.yaml` names to `registry`.
fn push_example_fixtures(registry: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        for (name, image) in [
            ("kernel:6.1", fixtures::kernel_image()?),
            ("init:1", fixtures::init_image()?),
            ("hello:1", fixtures::marker_image("kitfleet-onboot-ok")?),
        ] {
            let r = format!("{registry}/kitfleet/{name}");
            let digest = image.build()?.push(&r).await?;
            println!("    {r}  {digest}");
        }
        anyhow::Ok(())
    })
}

/// Boots a kernel+initrd and checks for `marker` and a clean power-off.
fn boot(kernel: &str, initrd: &str, cmdline: &str, marker: &str) -> Result<()> {
    let boot = fixtures::boot_qemu(
        kernel.as_ref(),
        initrd.as_ref(),
        cmdline,
        Duration::from_secs(240),
        true,
    )?;
    println!();
    let seen = boot.console.contains(marker);
    let off = boot.console.contains("reboot: Power down");
    println!(
        "==> boot took {:.1} s; marker {marker:?} seen: {seen}; clean power-off: {off}",
        boot.elapsed.as_secs_f64()
    );
    if !(seen && off && boot.exited) {
        bail!("the image did not boot as expected");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("fixtures") => {
            let registry = args.get(2).context("usage: demo fixtures REGISTRY")?;
            return push_example_fixtures(registry);
        }
        Some("boot") => {
            let [kernel, initrd, cmdline, marker] = args
                .get(2..6)
                .and_then(|a| <&[String; 4]>::try_from(a).ok())
                .context("usage: demo boot KERNEL INITRD CMDLINE MARKER")?;
            return boot(kernel, initrd, cmdline, marker);
        }
        _ => {}
    }
    let keep = args
        .iter()
        .position(|a| a == "--keep")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    check_tools()?;
    let tmp = tempfile::tempdir()?;
    let work = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&work)?;

    println!("==> starting docker-registry on 127.0.0.1");
    let reg = Registry::start()?;
    let a = reg.addr.clone();
    println!("    registry at http://{a}/v2/");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "==> making fixture images (Debian cloud kernel, busybox+runc init, onboot marker) and pushing them"
    );
    rt.block_on(async {
        let k = fixtures::kernel_image()?
            .build()?
            .push(&format!("{a}/fixtures/kernel:6.1"))
            .await?;
        println!("    {a}/fixtures/kernel:6.1  {k}");
        let i = fixtures::init_image()?
            .build()?
            .push(&format!("{a}/fixtures/init:v1"))
            .await?;
        println!("    {a}/fixtures/init:v1     {i}");
        let m = fixtures::marker_image(MARKER)?
            .build()?
            .push(&format!("{a}/fixtures/hello:v1"))
            .await?;
        println!("    {a}/fixtures/hello:v1    {m}");
        anyhow::Ok(())
    })?;

    let manifest = format!(
        "apiVersion: kitfleet.dev/v1alpha1\nkind: NodeImage\nmetadata:\n  name: demo\nspec:\n  kernel:\n    image: {a}/fixtures/kernel:6.1\n    cmdline: console=ttyS0 panic=-1 quiet\n  init:\n  - {a}/fixtures/init:v1\n  onboot:\n  - name: hello\n    image: {a}/fixtures/hello:v1\n  files:\n  - path: etc/motd\n    contents: \"built by kitfleet-build\\n\"\n    mode: \"0644\"\n  formats: [kernel+initrd]\n  output:\n    repository: {a}/kitfleet/demo\n"
    );
    let manifest_path = work.join("demo-nodeimage.yaml");
    std::fs::write(&manifest_path, &manifest)?;
    println!("==> NodeImage {}:\n{manifest}", manifest_path.display());
    let ni = NodeImage::from_yaml(&manifest).context("parsing the demo NodeImage")?;

    println!("==> building (cache {})", work.join("cache").display());
    let sources = Sources::new(
        Cache::open(work.join("cache"))?,
        SourceOptions {
            insecure_registries: vec![a.clone()],
            ..Default::default()
        },
    );
    let out = work.join("out");
    let result = rt.block_on(async {
        let (map, statuses) = build::resolve_all(&sources, &ni.spec.image, true).await?;
        let mtime = Mtime::from_env()?;
        let key = build::build_key(
            &ni.spec.image,
            &map,
            &ni.spec.formats,
            "amd64",
            mtime,
            6,
            &work,
        )?;
        let plan = assemble::plan(&ni.spec.image, &map, mtime, &work)?;
        let opts = BuildOptions {
            formats: ni.spec.formats.clone(),
            out_dir: out.clone(),
            name: "demo".into(),
            level: 6,
            base_dir: work.clone(),
            mtime,
            limits: Limits::default(),
            progress: Progress::new(true),
            stub_path: kitfleet_builder::disk::DEFAULT_STUB_PATH.into(),
        };
        let r = build::build(&sources, &plan, key, statuses, &opts).await?;
        let p =
            kitfleet_builder::push::push(&sources, &ni.spec.output.repository, &r, "amd64").await?;
        anyhow::Ok((r, p))
    })?;
    let (r, published) = result;
    for o in &r.outputs {
        println!("    {}  {:>9}  {}", o.digest, o.size, o.path.display());
    }
    println!("    build key {}", r.build_key);
    println!("    pushed {} ({})", published.reference, published.digest);

    println!("==> booting under qemu-system-x86_64 -accel tcg (serial console follows)\n");
    if keep.is_some() {
        println!("    outputs kept in {}", out.display());
    }
    boot(
        &out.join("demo-kernel").to_string_lossy(),
        &out.join("demo-initrd.img").to_string_lossy(),
        "console=ttyS0 panic=-1 quiet",
        MARKER,
    )
}
