//! Support of `upgrade_qemu.rs`: the static binaries, the fixture images (Debian's kernel with the drivers
//! the guest loads, an init that runs `kitfleet-node-agent upgrade`), NodeImages built and pushed with
//! kitfleet-build's library, and a qemu q35 + OVMF (writable variables) runner that lets the machine reset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kitfleet_api::NodeImage;
use kitfleet_builder::assemble::{self, Mtime};
use kitfleet_builder::build::{self, BuildOptions};
use kitfleet_builder::cache::Cache;
use kitfleet_builder::fixtures::{self, ImageSpec};
use kitfleet_builder::progress::Progress;
use kitfleet_builder::source::{SourceOptions, Sources};
use kitfleet_builder::tree::{Entry, Limits};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const TARGET: &str = "x86_64-unknown-linux-gnu";
const MTIME: u64 = 1_700_000_000;

/// Modules of Debian's cloud kernel the guest loads: the ESP's disk, its FAT, efivarfs and the NIC.
pub const MODULES: [&str; 8] = [
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "efivarfs",
];

/// Every host tool and file the test needs; missing ones fail the test under `CI=true`, else skip it.
pub fn prerequisites() -> bool {
    let tools = [
        "qemu-system-x86_64",
        "docker-registry",
        "mcopy",
        "mmd",
        OVMF_CODE,
        OVMF_VARS,
        "/bin/busybox",
        kitfleet_builder::disk::DEFAULT_STUB_PATH,
    ];
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            if t.starts_with('/') {
                !Path::new(t).exists()
            } else {
                !Command::new("sh")
                    .args(["-c", &format!("command -v {t}")])
                    .output()
                    .is_ok_and(|o| o.status.success())
            }
        })
        .collect();
    let kernel = fixtures::host_kernel().is_ok();
    if missing.is_empty() && kernel {
        return true;
    }
    let msg = format!(
        "missing {missing:?} (kernel: {kernel}): apt-get install qemu-system-x86 qemu-utils ovmf docker-registry \
         mtools busybox-static systemd-boot-efi linux-image-cloud-amd64"
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("skipping: {msg}");
    false
}

/// The static `kitfleet-node-agent` and `kitfleet-build` the guest runs (RECIPES "Static binaries"): built
/// in release mode with `+crt-static` for an explicit `--target`, in `$KITFLEET_CACHE/target-static-upgrade-qemu`
/// (default `/var/cache/kitfleet`), or taken from `$KITFLEET_UPGRADE_STATIC_BIN` (a directory holding both).
pub fn static_binaries() -> Result<(PathBuf, PathBuf)> {
    let dir = match std::env::var_os("KITFLEET_UPGRADE_STATIC_BIN") {
        Some(d) => PathBuf::from(d),
        None => {
            let cache = std::env::var_os("KITFLEET_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/var/cache/kitfleet".into());
            let target_dir = cache.join("target-static-upgrade-qemu");
            let t = Instant::now();
            let st = Command::new(env!("CARGO"))
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .args(["build", "--release", "--target", TARGET])
                .args(["-p", "kitfleet-node-agent", "--bin", "kitfleet-node-agent"])
                .args(["-p", "kitfleet-builder", "--bin", "kitfleet-build"])
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .env("CARGO_TARGET_DIR", &target_dir)
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .status()
                .context("running cargo")?;
            if !st.success() {
                bail!("the static build failed ({st})");
            }
            eprintln!(
                "static binaries built in {:.1} s",
                t.elapsed().as_secs_f64()
            );
            target_dir.join(TARGET).join("release")
        }
    };
    let (agent, builder) = (dir.join("kitfleet-node-agent"), dir.join("kitfleet-build"));
    for b in [&agent, &builder] {
        let bytes = std::fs::read(b).with_context(|| b.display().to_string())?;
        if bytes.windows(15).any(|w| w == b"/lib64/ld-linux") {
            bail!("{} is dynamically linked", b.display());
        }
    }
    Ok((agent, builder))
}

fn dir(p: &str) -> Entry {
    Entry::dir(p, 0o755, MTIME)
}

fn file(p: &str, data: Vec<u8>, mode: u32) -> Entry {
    Entry::file(p, data, mode, MTIME)
}

const APPLETS: [&str; 26] = [
    "sh", "echo", "cat", "mount", "umount", "mkdir", "insmod", "ip", "od", "tr", "sleep",
    "poweroff", "reboot", "sync", "touch", "test", "[", "ls", "grep", "rm", "printf", "head",
    "cut", "dmesg", "uname", "true",
];

/// The guest's `/init`: loads the drivers, mounts efivarfs and the ESP, brings up qemu's user network, prints
/// the firmware's boot variables and the kernel command line, then does what `/etc/kftest/role` says:
/// - `v1`: `upgrade --artifact <next> --no-reboot` (firmware, or kexec when the ESP holds a `KEXEC` file),
///   prints BootNext read back, then the same command again, which reboots (or kexecs);
/// - `v2`: `upgrade --commit`; on its first boot stages `<next>` (the broken v3) and reboots through BootNext;
///   on a later boot (the ESP's `kftest/v3tried` exists) powers off.
///
/// Every line the test reads starts with `kftest:`.
pub fn init_script(modules: &[String]) -> String {
    let mods = modules.join(" ");
    format!(
        r#"#!/bin/sh
export PATH=/usr/bin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
for m in {mods}; do insmod /$m || echo "kftest: insmod $m failed"; done
mount -t efivarfs efivarfs /sys/firmware/efi/efivars || echo "kftest: efivarfs mount failed"
i=0
while [ ! -b /dev/vda1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mkdir -p /boot/efi
mount -t vfat /dev/vda1 /boot/efi || echo "kftest: ESP mount failed"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
var() {{ od -An -v -tx1 /sys/firmware/efi/efivars/$1-8be4df61-93ca-11d2-aa0d-00e098032b8c 2>/dev/null | tr -d ' \n'; }}
role=$(cat /etc/kftest/role)
next=$(cat /etc/kftest/next)
reg=$(cat /etc/kftest/registry)
echo "kftest: booted role=$role BootCurrent=$(var BootCurrent) BootNext=$(var BootNext) BootOrder=$(var BootOrder)"
echo "kftest: cmdline $(cat /proc/cmdline)"
up() {{ kitfleet-node-agent upgrade --esp /boot/efi --work /tmp/upgrade --insecure-registry "$reg" "$@"; }}
finish() {{ echo "kftest: $1"; sync; umount /boot/efi; poweroff -f; sleep 30; }}
case "$role" in
v1)
  method=firmware
  if [ -e /boot/efi/KEXEC ] || [ -e /boot/efi/kexec ]; then method=kexec; fi
  up --artifact "$next" --method $method --no-reboot || finish "v1 upgrade failed"
  echo "kftest: v1 staged method=$method BootNext=$(var BootNext)"
  up --artifact "$next" --method $method
  finish "v1 upgrade returned $?"
  ;;
v2)
  up --commit || finish "v2 commit refused"
  echo "kftest: v2 committed BootOrder=$(var BootOrder)"
  [ -e /boot/efi/kftest/v3tried ] && finish "v2 stable after the v3 attempt"
  mkdir -p /boot/efi/kftest
  echo tried > /boot/efi/kftest/v3tried
  sync
  up --artifact "$next" --method firmware
  finish "v2 upgrade returned $?"
  ;;
esac
finish "role $role has nothing to do"
"#
    )
}

/// The init image: busybox with the applets the script uses, `/init`, and both static binaries.
pub fn init_image(modules: &[String], agent: &Path, builder: &Path) -> Result<ImageSpec> {
    let mut l = vec![dir("bin")];
    for d in [
        "proc", "sys", "dev", "run", "tmp", "boot", "etc", "usr", "usr/bin",
    ] {
        l.push(dir(d));
    }
    l.push(file("bin/busybox", std::fs::read("/bin/busybox")?, 0o755));
    for a in APPLETS {
        l.push(Entry::symlink(format!("bin/{a}"), "busybox", MTIME));
    }
    l.push(file("init", init_script(modules).into_bytes(), 0o755));
    l.push(file(
        "usr/bin/kitfleet-node-agent",
        std::fs::read(agent)?,
        0o755,
    ));
    l.push(file(
        "usr/bin/kitfleet-build",
        std::fs::read(builder)?,
        0o755,
    ));
    // kitfleet-build's registry client wants the system's CA bundle even for plain-HTTP registries.
    for d in ["etc/ssl", "etc/ssl/certs"] {
        l.push(dir(d));
    }
    l.push(file(
        "etc/ssl/certs/ca-certificates.crt",
        std::fs::read(CA_BUNDLE)
            .with_context(|| format!("{CA_BUNDLE} (apt-get install ca-certificates)"))?,
        0o644,
    ));
    Ok(ImageSpec {
        layers: vec![l],
        ..Default::default()
    })
}

/// One built and pushed image.
#[derive(Debug, Clone)]
pub struct Built {
    /// Build key (hex).
    pub key: String,
    /// The raw-efi disk.
    pub disk: PathBuf,
    /// `repo@digest` as the guest reaches the registry (10.0.2.2).
    pub guest_ref: String,
}

/// Builds one NodeImage (`raw-efi`) with the builder's library, as `kitfleet-build build --push` does, and
/// pushes it to the registry at `reg` (host address) under `kitfleet/upgrade-qemu`.
#[allow(clippy::too_many_arguments)]
pub fn build_version(
    rt: &tokio::runtime::Runtime,
    reg: &str,
    guest_reg: &str,
    work: &Path,
    name: &str,
    cmdline: &str,
    files: &BTreeMap<&str, String>,
) -> Result<Built> {
    let mut yaml = format!(
        "apiVersion: kitfleet.dev/v1alpha1\nkind: NodeImage\nmetadata:\n  name: {name}\nspec:\n  kernel:\n    \
         image: {reg}/fixtures/upgrade-kernel:1\n    cmdline: \"{cmdline}\"\n  init:\n  - {reg}/fixtures/upgrade-init:1\n  \
         files:\n"
    );
    for (path, contents) in files {
        yaml.push_str(&format!(
            "  - path: {path}\n    contents: \"{contents}\"\n    mode: \"0644\"\n"
        ));
    }
    yaml.push_str(&format!(
        "  formats: [raw-efi]\n  output:\n    repository: {reg}/kitfleet/upgrade-qemu\n"
    ));
    let ni = NodeImage::from_yaml(&yaml).with_context(|| format!("NodeImage {name}"))?;
    let sources = Sources::new(
        Cache::open(work.join("cache"))?,
        SourceOptions {
            insecure_registries: vec![reg.to_string()],
            ..Default::default()
        },
    );
    let out = work.join(name);
    let (r, published) = rt.block_on(async {
        let (map, statuses) = build::resolve_all(&sources, &ni.spec.image, true).await?;
        let mtime = Mtime::from_env()?;
        let key = build::build_key(
            &ni.spec.image,
            &map,
            &ni.spec.formats,
            "amd64",
            mtime,
            6,
            work,
        )?;
        let plan = assemble::plan(&ni.spec.image, &map, mtime, work)?;
        let opts = BuildOptions {
            formats: ni.spec.formats.clone(),
            out_dir: out.clone(),
            name: name.into(),
            level: 6,
            base_dir: work.to_path_buf(),
            mtime,
            limits: Limits::default(),
            progress: Progress::new(false),
            stub_path: kitfleet_builder::disk::DEFAULT_STUB_PATH.into(),
        };
        let r = build::build(&sources, &plan, key, statuses, &opts).await?;
        let p =
            kitfleet_builder::push::push(&sources, &ni.spec.output.repository, &r, "amd64").await?;
        anyhow::Ok((r, p))
    })?;
    let disk = r
        .outputs
        .iter()
        .find(|o| o.role == "disk")
        .map(|o| o.path.clone())
        .context("a raw-efi disk")?;
    let guest_ref = published.pinned.replacen(reg, guest_reg, 1);
    eprintln!(
        "{name}: build key {}, {} bytes, {}",
        r.build_key,
        std::fs::metadata(&disk)?.len(),
        published.pinned
    );
    Ok(Built {
        key: r.build_key.clone(),
        disk,
        guest_ref,
    })
}

/// A q35 machine under TCG with OVMF and a writable copy of its variable store (pflash unit 1), the disk on
/// virtio and qemu's user network (the host is 10.0.2.2). Resets reboot the machine (no `-no-reboot`);
/// the run ends when the guest powers off or after `timeout`. Returns the serial console.
pub fn run_machine(
    disk: &Path,
    vars: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<(String, bool)> {
    let stderr = std::fs::File::create(log.with_extension("stderr"))?;
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-nodefaults",
        ])
        .args(["-display", "none"])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
        ])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("qemu-system-x86_64")?;
    let start = Instant::now();
    let exited = loop {
        if child.try_wait()?.is_some() {
            break true;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let serial = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
    Ok((serial, exited))
}

/// Writes an empty file `name` into the root of the ESP (GPT partition 1) of `disk` with mtools.
pub fn mark_esp(disk: &Path, name: &str) -> Result<()> {
    let mut f = std::fs::File::open(disk)?;
    let p = kitfleet_node_agent::upgrade::gpt::read_partition(&mut f, 1)?;
    let empty = disk.with_extension("flag");
    std::fs::write(&empty, b"")?;
    let o = Command::new("mcopy")
        .arg("-i")
        .arg(format!("{}@@{}", disk.display(), p.start_lba * 512))
        .arg(&empty)
        .arg(format!("::/{name}"))
        .output()?;
    if !o.status.success() {
        bail!("mcopy: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

/// The `kftest:` lines and OVMF's `BdsDxe: loading …` lines of a console, in order (for failure messages
/// and for following the run).
pub fn story(serial: &str) -> String {
    serial
        .lines()
        .filter(|l| {
            l.contains("kftest:")
                || l.contains("BdsDxe: loading")
                || l.contains("Kernel panic")
                || l.contains("staged ")
                || l.contains("committed ")
                || l.contains("ERROR")
                || l.contains("Error")
        })
        .map(|l| l.trim_end_matches('\r'))
        .collect::<Vec<_>>()
        .join("\n")
}
