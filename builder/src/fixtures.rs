//! Test, benchmark and demo support (not used by builds): a throwaway Debian `docker-registry`
//! on 127.0.0.1, OCI images built from filesystem entries (pushed to a registry or written as an
//! OCI layout), the fixture images of the boot test, and a qemu runner.
//!
//! Everything here reads only local Debian files (`busybox-static`, `runc`, `linux-image-cloud-amd64`)
//! and talks only to loopback.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use oci_client::{Reference, RegistryOperation};

use crate::cpio::gzip;
use crate::digest::sha256;
use crate::oci::{Descriptor, Document, MT_OCI_CONFIG, MT_OCI_MANIFEST};
use crate::tarout::to_tar;
use crate::tree::{Entry, Kind};

/// A `docker-registry` serving on a random loopback port; stopped on drop.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// HTTP status of `GET path` on `addr` (plain HTTP/1.0).
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Registry {
    /// Starts `docker-registry` with its own config and storage in a temporary directory.
    /// `htpasswd`: optional (user, bcrypt-hash) enabling basic auth.
    pub fn start_with(htpasswd: Option<(&str, &str)>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((user, hash)) = htpasswd {
            let pw = dir.path().join("htpasswd");
            std::fs::write(&pw, format!("{user}:{hash}\n"))?;
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kitfleet-test\n    path: {}\n",
                pw.display()
            ));
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry (apt-get install docker-registry)")?;
        let mut reg = Registry {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(code) = http_status(&reg.addr, "/v2/")
                && (code == 200 || code == 401)
            {
                return Ok(reg);
            }
            if let Some(st) = reg.child.try_wait()? {
                bail!("docker-registry exited early: {st}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = reg.child.kill();
        bail!("docker-registry did not answer on {} within 20 s", reg.addr)
    }

    /// Starts an anonymous registry.
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An image to build: layers of entries plus run configuration.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    /// Layers, bottom first.
    pub layers: Vec<Vec<Entry>>,
    /// Entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Cmd.
    pub cmd: Option<Vec<String>>,
    /// Env.
    pub env: Option<Vec<String>>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// A built image: its blobs and manifest.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// Manifest bytes.
    pub manifest: Vec<u8>,
    /// Manifest digest.
    pub digest: String,
    /// Config bytes.
    pub config: Vec<u8>,
    /// Layer blobs (gzip) with their digests.
    pub layers: Vec<(String, Vec<u8>)>,
}

impl ImageSpec {
    /// Builds the blobs (deterministically; gzip level 1 to keep fixtures fast).
    pub fn build(&self) -> Result<OciImage> {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for l in &self.layers {
            let tar = to_tar(l)?;
            diff_ids.push(sha256(&tar));
            let gz = gzip(&tar, 1);
            layers.push((sha256(&gz), gz));
        }
        Ok(self.assemble(layers, diff_ids))
    }

    /// Builds from raw uncompressed layer tars (for hostile layers no writer would produce).
    pub fn build_raw(&self, raw_layers: &[Vec<u8>]) -> OciImage {
        let diff_ids = raw_layers.iter().map(|t| sha256(t)).collect();
        let layers = raw_layers
            .iter()
            .map(|t| gzip(t, 1))
            .map(|g| (sha256(&g), g))
            .collect();
        self.assemble(layers, diff_ids)
    }

    fn assemble(&self, layers: Vec<(String, Vec<u8>)>, diff_ids: Vec<String>) -> OciImage {
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": self.entrypoint,
                "Cmd": self.cmd,
                "Env": self.env,
                "Labels": self.labels,
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = serde_json::to_vec(&config).expect("json");
        let manifest = Document {
            schema_version: 2,
            media_type: Some(MT_OCI_MANIFEST.into()),
            artifact_type: None,
            config: Some(Descriptor {
                media_type: MT_OCI_CONFIG.into(),
                digest: sha256(&config),
                size: config.len() as u64,
                platform: None,
                annotations: BTreeMap::new(),
            }),
            layers: Some(
                layers
                    .iter()
                    .map(|(d, b)| Descriptor {
                        media_type: crate::oci::MT_LAYER_GZIP[0].into(),
                        digest: d.clone(),
                        size: b.len() as u64,
                        platform: None,
                        annotations: BTreeMap::new(),
                    })
                    .collect(),
            ),
            manifests: None,
            annotations: BTreeMap::new(),
        };
        let manifest = serde_json::to_vec(&manifest).expect("json");
        OciImage {
            digest: sha256(&manifest),
            manifest,
            config,
            layers,
        }
    }
}

impl OciImage {
    /// Pushes to `reference` (`127.0.0.1:PORT/name:tag`) over plain HTTP.
    pub async fn push(&self, reference: &str) -> Result<String> {
        self.push_auth(reference, &oci_client::secrets::RegistryAuth::Anonymous)
            .await
    }

    /// Pushes with credentials.
    pub async fn push_auth(
        &self,
        reference: &str,
        auth: &oci_client::secrets::RegistryAuth,
    ) -> Result<String> {
        crate::source::install_crypto_provider();
        let r: Reference = reference.parse()?;
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        client.auth(&r, auth, RegistryOperation::Push).await?;
        client
            .push_blob(&r, self.config.clone(), &sha256(&self.config))
            .await?;
        for (d, b) in &self.layers {
            client.push_blob(&r, b.clone(), d).await?;
        }
        client
            .push_manifest_raw(&r, self.manifest.clone(), MT_OCI_MANIFEST.parse()?)
            .await?;
        Ok(self.digest.clone())
    }

    /// Writes an OCI image layout at `dir` with the manifest tagged `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Result<()> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        let put =
            |d: &str, b: &[u8]| std::fs::write(blobs.join(d.trim_start_matches("sha256:")), b);
        put(&self.digest, &self.manifest)?;
        put(&sha256(&self.config), &self.config)?;
        for (d, b) in &self.layers {
            put(d, b)?;
        }
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": MT_OCI_MANIFEST, "digest": self.digest, "size": self.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]});
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
        Ok(())
    }
}

fn read_host(path: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .with_context(|| format!("reading {path} (see builder/README.md for the Debian packages)"))
}

fn file(path: &str, data: Vec<u8>, mode: u32) -> Entry {
    Entry::file(path, data, mode, 1_700_000_000)
}

fn dir(path: &str) -> Entry {
    Entry::dir(path, 0o755, 1_700_000_000)
}

/// The Debian cloud kernel's version directory under `/lib/modules`.
pub fn host_kernel() -> Result<(PathBuf, String)> {
    for e in std::fs::read_dir("/boot")? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(ver) = name.strip_prefix("vmlinuz-")
            && ver.ends_with("cloud-amd64")
        {
            return Ok((PathBuf::from(format!("/boot/{name}")), ver.to_string()));
        }
    }
    bail!("no /boot/vmlinuz-*-cloud-amd64: apt-get install linux-image-cloud-amd64")
}

/// A LinuxKit kernel image: `/kernel` (Debian's cloud vmlinuz) and `/kernel.tar` holding
/// `lib/modules/<version>/` metadata and the overlay module.
pub fn kernel_image() -> Result<ImageSpec> {
    let (vmlinuz, ver) = host_kernel()?;
    let kernel = std::fs::read(&vmlinuz)?;
    let base = format!("lib/modules/{ver}");
    let mut modules = vec![dir("lib"), dir("lib/modules"), dir(&base)];
    for f in ["modules.order", "modules.builtin", "modules.dep"] {
        if let Ok(d) = std::fs::read(format!("/{base}/{f}")) {
            modules.push(file(&format!("{base}/{f}"), d, 0o644));
        }
    }
    let ovl = format!("{base}/kernel/fs/overlayfs/overlay.ko");
    if let Ok(d) = std::fs::read(format!("/{ovl}")) {
        for p in ["kernel", "kernel/fs", "kernel/fs/overlayfs"] {
            modules.push(dir(&format!("{base}/{p}")));
        }
        modules.push(file(&ovl, d, 0o644));
    }
    let ktar = to_tar(&modules)?;
    Ok(ImageSpec {
        layers: vec![vec![
            file("kernel", kernel, 0o644),
            file("kernel.tar", ktar, 0o644),
        ]],
        ..Default::default()
    })
}

/// [`kernel_image`] plus the named modules of Debian's cloud kernel (`virtio_net`, `vfat`…) and every module
/// they depend on (from `modules.dep`), at their `lib/modules/<version>/kernel/…` paths, for fixtures whose
/// init loads drivers with `insmod` (Debian's modules are not compressed). Returns the image and the module
/// files relative to `/`, dependencies first (the order to load them in).
pub fn kernel_image_with_modules(names: &[&str]) -> Result<(ImageSpec, Vec<String>)> {
    let (_, ver) = host_kernel()?;
    let base = format!("lib/modules/{ver}");
    let dep = std::fs::read_to_string(format!("/{base}/modules.dep"))
        .with_context(|| format!("/{base}/modules.dep"))?;
    let deps: BTreeMap<&str, Vec<&str>> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m, d.split_whitespace().collect()))
        .collect();
    let mut order: Vec<String> = Vec::new();
    fn visit(m: &str, deps: &BTreeMap<&str, Vec<&str>>, order: &mut Vec<String>) {
        if order.iter().any(|o| o == m) {
            return;
        }
        for d in deps.get(m).into_iter().flatten() {
            visit(d, deps, order);
        }
        order.push(m.to_string());
    }
    for name in names {
        let want = format!("/{name}.ko");
        let m = deps
            .keys()
            .find(|k| k.ends_with(&want))
            .with_context(|| format!("module {name} is not in /{base}/modules.dep"))?;
        visit(m, &deps, &mut order);
    }
    let mut img = kernel_image()?;
    let mut ktar_entries = vec![dir("lib"), dir("lib/modules"), dir(&base)];
    let mut dirs = std::collections::BTreeSet::new();
    for m in &order {
        let mut p = Path::new(m.as_str()).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().into_owned());
            p = d.parent();
        }
    }
    for d in &dirs {
        ktar_entries.push(dir(&format!("{base}/{d}")));
    }
    for m in &order {
        ktar_entries.push(file(
            &format!("{base}/{m}"),
            read_host(&format!("/{base}/{m}"))?,
            0o644,
        ));
    }
    let layer = &mut img.layers[0];
    layer.retain(|e| e.path != "kernel.tar");
    layer.push(file("kernel.tar", to_tar(&ktar_entries)?, 0o644));
    Ok((img, order.iter().map(|m| format!("{base}/{m}")).collect()))
}

const APPLETS: [&str; 24] = [
    "sh", "echo", "cat", "ls", "mount", "umount", "mkdir", "basename", "poweroff", "sleep",
    "uname", "grep", "sync", "reboot", "halt", "dmesg", "rm", "ln", "chmod", "true", "false",
    "test", "[", "printf",
];

fn busybox_layer(with_dirs: &[&str]) -> Result<Vec<Entry>> {
    let mut l = vec![dir("bin")];
    for d in with_dirs {
        l.push(dir(d));
    }
    l.push(file("bin/busybox", read_host("/bin/busybox")?, 0o755));
    for a in APPLETS {
        l.push(Entry::symlink(format!("bin/{a}"), "busybox", 1_700_000_000));
    }
    Ok(l)
}

/// The init script of the init fixture: mounts, runs every onboot bundle with runc, powers off.
pub const INIT_SCRIPT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
mkdir -p /sys/fs/cgroup /run /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /run
echo "kitfleet-init: $(uname -r), running onboot containers"
for b in /containers/onboot/*; do
  [ -e "$b/config.json" ] || continue
  n=$(basename "$b")
  /usr/bin/runc --root /run/runc run --no-pivot --bundle "$b" "$n"
  echo "kitfleet-init: onboot $n exited $?"
done
echo "kitfleet-init: done, powering off"
sync
poweroff -f
"#;

/// An init image: busybox-static with applets, `/init`, Debian's runc and the libraries it links.
pub fn init_image() -> Result<ImageSpec> {
    let mut l = busybox_layer(&[
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "usr",
        "usr/bin",
        "lib",
        "lib64",
        "lib/x86_64-linux-gnu",
    ])?;
    l.push(file("init", INIT_SCRIPT.as_bytes().to_vec(), 0o755));
    l.push(file("usr/bin/runc", read_host("/usr/sbin/runc")?, 0o755));
    for lib in [
        "lib/x86_64-linux-gnu/libseccomp.so.2",
        "lib/x86_64-linux-gnu/libc.so.6",
        "lib64/ld-linux-x86-64.so.2",
    ] {
        let real = std::fs::canonicalize(format!("/{lib}"))
            .with_context(|| format!("/{lib} (apt-get install runc)"))?;
        l.push(file(lib, std::fs::read(real)?, 0o755));
    }
    Ok(ImageSpec {
        layers: vec![l],
        ..Default::default()
    })
}

/// An onboot image printing `marker`: busybox rootfs, command and `readonly: true` in its
/// `org.mobyproject.config` label.
pub fn marker_image(marker: &str) -> Result<ImageSpec> {
    let l = busybox_layer(&[])?;
    let label = serde_json::json!({"readonly": true, "command": ["/bin/echo", marker]}).to_string();
    Ok(ImageSpec {
        layers: vec![l],
        entrypoint: Some(vec!["/bin/sh".into()]),
        env: Some(vec!["PATH=/bin".into()]),
        labels: BTreeMap::from([(crate::oci_config::LABEL.to_string(), label)]),
        ..Default::default()
    })
}

/// The outcome of a qemu boot.
#[derive(Debug)]
pub struct Boot {
    /// Serial console output.
    pub console: String,
    /// Whether qemu exited by itself (guest power-off) before the timeout.
    pub exited: bool,
    /// Wall time.
    pub elapsed: Duration,
}

/// Boots `kernel` + `initrd` under `qemu-system-x86_64 -accel tcg`, serial console captured;
/// `echo` copies the console to stderr as it arrives.
pub fn boot_qemu(
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    timeout: Duration,
    echo: bool,
) -> Result<Boot> {
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "512",
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86 qemu-utils)")?;
    let mut out = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut console = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            if echo {
                let _ = std::io::stderr().write_all(&buf[..n]);
            }
            console.extend_from_slice(&buf[..n]);
        }
        console
    });
    let mut exited = false;
    while start.elapsed() < timeout {
        if child.try_wait()?.is_some() {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let console = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    Ok(Boot {
        console,
        exited,
        elapsed: start.elapsed(),
    })
}

/// Returns an entry's data if it is a regular file.
pub fn file_data(e: &Entry) -> Option<&[u8]> {
    match &e.kind {
        Kind::File(b) => Some(b),
        _ => None,
    }
}
