//! The Kitfleet worker NodeImage (`examples/nodeimage-worker.yaml`, issue 17) built by `kitfleet-build` and booted
//! under qemu alone (q35 + OVMF, TCG): two builds are byte-identical in every format; the worker boots, formats its
//! empty `/var` disk, containerd answers on its socket and the kubelet service starts; without metadata it says what is
//! missing once and waits (no crash loop); with a wrong CA hash `kubeadm join` refuses the cluster (a real
//! kube-apiserver from the fixture serves `cluster-info`; the refusal is kubeadm's own pin-mismatch error).
//!
//! Every test is `#[ignore]`: they need the ingredient images of `scripts/worker/images.sh` in the registry and take
//! minutes under TCG. Run them with `bash scripts/worker/test.sh` (images, the CLI, then
//! `cargo test -p kitfleet-e2e --test worker_boot -- --ignored --test-threads=1`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kitfleet_e2e::apiserver::Apiserver;

const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
const FORMATS: [&str; 6] = [
    "kernel+initrd",
    "tar",
    "tar-kernel-initrd",
    "iso-efi-initrd",
    "raw-efi",
    "qcow2-efi",
];
/// Each boot test stays under 3 minutes.
const BOOT_TIMEOUT: Duration = Duration::from_secs(170);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cache_root() -> PathBuf {
    std::env::var_os("KITFLEET_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kitfleet"))
}

/// The manifest `scripts/worker/images.sh` rendered with its digests.
fn manifest() -> PathBuf {
    let m = std::env::var_os("KITFLEET_WORKER_MANIFEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_root().join("worker/nodeimage-worker.yaml"));
    assert!(
        m.is_file(),
        "{} is missing: run bash scripts/worker/images.sh (or scripts/worker/test.sh)",
        m.display()
    );
    m
}

fn kitfleet_build() -> PathBuf {
    let b = std::env::var_os("KITFLEET_BUILD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/kitfleet-build"));
    assert!(
        b.is_file(),
        "{} is missing: cargo build -p kitfleet-builder --bin kitfleet-build",
        b.display()
    );
    b
}

fn registry_of(manifest: &Path) -> String {
    let text = std::fs::read_to_string(manifest).unwrap();
    let image = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("image: "))
        .expect("an image reference");
    image.split('/').next().unwrap().to_string()
}

/// `kitfleet-build build` into `out` with its own cache; returns the output file names.
fn build(out: &Path, cache: &Path, formats: &[&str]) -> Vec<String> {
    let m = manifest();
    let t = Instant::now();
    let res = Command::new(kitfleet_build())
        .arg("build")
        .arg(&m)
        .arg("-o")
        .arg(out)
        .arg("--format")
        .arg(formats.join(","))
        .arg("--insecure-registry")
        .arg(registry_of(&m))
        .arg("--cache")
        .arg(cache)
        .args(["--no-progress", "--json"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(res.status.success(), "kitfleet-build: {}", res.status);
    let json: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    eprintln!(
        "built {formats:?} in {:.1} s (build key {})",
        t.elapsed().as_secs_f64(),
        json["build"]["buildKey"]
    );
    json["build"]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            Path::new(o["path"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// One raw-efi build per test process, in `$KITFLEET_CACHE/worker/test-raw` (replaced by each run, kept outside
/// `/tmp`; its builder cache makes the next run's build warm).
fn raw_disk() -> &'static Path {
    static DISK: OnceLock<PathBuf> = OnceLock::new();
    DISK.get_or_init(|| {
        let dir = cache_root().join("worker/test-raw");
        let out = dir.join("out");
        let _ = std::fs::remove_dir_all(&out);
        build(&out, &dir.join("cache"), &["raw-efi"]);
        out.join("worker-efi.raw")
    })
}

#[test]
#[ignore = "needs scripts/worker/images.sh; run bash scripts/worker/test.sh"]
fn two_builds_are_byte_identical_in_every_format() {
    let root = tempfile::tempdir().unwrap();
    let a = build(
        &root.path().join("a"),
        &root.path().join("cache-a"),
        &FORMATS,
    );
    let b = build(
        &root.path().join("b"),
        &root.path().join("cache-b"),
        &FORMATS,
    );
    assert_eq!(a, b, "the same files");
    for name in &a {
        let (pa, pb) = (
            root.path().join("a").join(name),
            root.path().join("b").join(name),
        );
        let (da, db) = (std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
        assert!(da == db, "{name} differs between two cold builds");
        let allocated = std::fs::metadata(&pa).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.blocks() * 512
        });
        eprintln!(
            "{name}: {} bytes ({} MiB; {} MiB allocated), identical",
            da.len(),
            da.len() >> 20,
            allocated.unwrap_or(0) >> 20
        );
    }
    for f in [
        "worker-kernel",
        "worker-initrd.img",
        "worker-efi.raw",
        "worker-efi.qcow2",
    ] {
        assert!(a.iter().any(|n| n == f), "{f} in {a:?}");
    }
}

/// A qemu run of the raw-efi disk with a blank 2 GiB `/var` disk and user-mode networking.
struct Vm {
    serial: PathBuf,
    child: std::process::Child,
    start: Instant,
    _dir: tempfile::TempDir,
}

impl Vm {
    fn boot(join: Option<&str>) -> Vm {
        let disk = raw_disk();
        let dir = tempfile::tempdir().unwrap();
        let var = dir.path().join("var.img");
        std::fs::File::create(&var)
            .unwrap()
            .set_len(2 << 30)
            .unwrap();
        let serial = dir.path().join("serial.log");
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel", "tcg", "-m", "2048", "-smp", "2", "-machine", "q35",
        ])
        .args([
            "-bios",
            OVMF,
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,readonly=on",
            disk.display()
        ))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", var.display()))
        .args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ]);
        if let Some(join) = join {
            let f = dir.path().join("join.env");
            std::fs::write(&f, join).unwrap();
            cmd.arg("-fw_cfg")
                .arg(format!("name=opt/dev.kitfleet/join,file={}", f.display()));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("qemu.stderr")).unwrap())
            .spawn()
            .expect("qemu-system-x86_64 (apt-get install qemu-system-x86 qemu-utils ovmf)");
        Vm {
            serial,
            child,
            start: Instant::now(),
            _dir: dir,
        }
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits until every text in `all` is on the console; panics with the console's Kitfleet lines after the timeout.
    fn wait_for(&mut self, all: &[&str]) -> Duration {
        loop {
            let c = self.console();
            if all.iter().all(|t| c.contains(t)) {
                return self.start.elapsed();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("qemu exited ({st}) before {all:?}:\n{}", kitfleet_lines(&c));
            }
            if self.start.elapsed() > BOOT_TIMEOUT {
                panic!(
                    "no {all:?} within {BOOT_TIMEOUT:?}:\n{}",
                    kitfleet_lines(&c)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kitfleet_lines(console: &str) -> String {
    console
        .lines()
        .filter(|l| l.contains("kitfleet") || l.contains("Kernel panic") || l.contains("ERRO"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[ignore = "needs scripts/worker/images.sh; run bash scripts/worker/test.sh"]
fn boots_starts_containerd_and_kubelet_and_waits_without_metadata() {
    let mut vm = Vm::boot(None);
    let ready = vm.wait_for(&[
        "kitfleet-containerd: ready on /run/containerd/containerd.sock",
        "kitfleet-kubelet: not joining",
        "kitfleet-init: boot done",
    ]);
    // No crash loop: 20 s later the kubelet service has said it once and is still waiting.
    std::thread::sleep(Duration::from_secs(20));
    let c = vm.console();
    eprintln!("{}", kitfleet_lines(&c));
    for marker in [
        "kitfleet-format: formatting /dev/vdb",
        "kitfleet-mount: /dev/vdb (kitfleet-var) on /var",
        "kitfleet-init: service containerd started",
        "kitfleet-init: service kubelet started",
        "kitfleet-sysctl: applied /etc/sysctl.d/00-kitfleet-worker.conf",
        "kitfleet-modprobe: br_netfilter loaded",
        "kitfleet-modprobe: overlay loaded",
    ] {
        assert!(c.contains(marker), "no {marker:?}:\n{}", kitfleet_lines(&c));
    }
    let waiting: Vec<&str> = c
        .lines()
        .filter(|l| l.contains("kitfleet-kubelet:"))
        .collect();
    assert_eq!(
        waiting.len(),
        1,
        "the kubelet service said more than once: {waiting:?}"
    );
    for missing in ["KITFLEET_APISERVER", "KITFLEET_TOKEN", "KITFLEET_CA_HASH"] {
        assert!(
            waiting[0].contains(missing),
            "{missing} named: {}",
            waiting[0]
        );
    }
    assert!(!c.contains("Kernel panic"), "{}", kitfleet_lines(&c));
    eprintln!(
        "containerd ready and kubelet waiting {:.1} s after qemu started (TCG, wall)",
        ready.as_secs_f64()
    );
}

/// base64url without padding.
fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    s
}

fn hmac_sha256(key: &str, data: &str) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-binary", "-hmac", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(data.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// sha256 of the CA certificate's SubjectPublicKeyInfo, as kubeadm pins it.
fn ca_hash(ca: &Path) -> String {
    let sh = format!(
        "openssl x509 -in '{}' -noout -pubkey | openssl pkey -pubin -outform DER | openssl dgst -sha256 -hex | sed 's/^.* //'",
        ca.display()
    );
    let out = Command::new("sh").args(["-c", &sh]).output().unwrap();
    let hex = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(hex.len(), 64, "{hex}");
    format!("sha256:{hex}")
}

const TOKEN_ID: &str = "kf17ab";
const TOKEN_SECRET: &str = "0123456789abcdef";

/// A real apiserver publishing `cluster-info` as a kubeadm control plane does (kubeconfig with the CA and the
/// server address the VM uses, the JWS the bootstrap signer would add for the token, anonymous read access).
fn cluster_info(api: &Apiserver) -> (String, String) {
    let port = api.url().rsplit(':').next().unwrap().to_string();
    let server = format!("https://10.0.2.2:{port}");
    let ca = std::fs::read(api.dir().join("ca.crt")).unwrap();
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {server}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\npreferences: {{}}\nusers: null\n",
        standard_b64(&ca)
    );
    let header = b64url(format!(r#"{{"alg":"HS256","kid":"{TOKEN_ID}"}}"#).as_bytes());
    let payload = b64url(kubeconfig.as_bytes());
    let sig = b64url(&hmac_sha256(TOKEN_SECRET, &format!("{header}.{payload}")));
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": kubeconfig, format!("jws-kubeconfig-{TOKEN_ID}"): format!("{header}..{sig}")},
    });
    let rbac = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "kubeadm:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cluster-info"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "kubeadm:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kubeadm:bootstrap-signer-clusterinfo"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}]},
        cm,
    ]});
    let mut child = api
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rbac.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        format!("10.0.2.2:{port}"),
        ca_hash(&api.dir().join("ca.crt")),
    )
}

fn standard_b64(data: &[u8]) -> String {
    let mut s = b64url(data).replace('-', "+").replace('_', "/");
    while !s.len().is_multiple_of(4) {
        s.push('=');
    }
    s
}

fn join_env(apiserver: &str, hash: &str) -> String {
    format!(
        "KITFLEET_APISERVER={apiserver}\nKITFLEET_TOKEN={TOKEN_ID}.{TOKEN_SECRET}\nKITFLEET_CA_HASH={hash}\nKITFLEET_NODE_NAME=kf-worker-test\n"
    )
}

#[test]
#[ignore = "needs scripts/worker/images.sh; run bash scripts/worker/test.sh"]
fn refuses_to_join_with_a_wrong_ca_hash() {
    let api = Apiserver::start().expect("apiserver fixture (scripts/k8s-build.sh)");
    let (addr, right) = cluster_info(&api);
    let wrong = format!("sha256:{}", "0".repeat(64));
    assert_ne!(right, wrong);
    let mut vm = Vm::boot(Some(&join_env(&addr, &wrong)));
    let t = vm.wait_for(&["kitfleet-kubelet: refusing to join"]);
    let c = vm.console();
    eprintln!("{}", kitfleet_lines(&c));
    assert!(c.contains(&format!(
        "kitfleet-kubelet: joining {addr} as kf-worker-test"
    )));
    assert!(c.contains(&wrong), "the refusal names the pinned hash");
    assert!(
        !c.contains("kitfleet-kubelet: starting"),
        "kubelet must not start"
    );
    eprintln!("refused {:.1} s after qemu started", t.as_secs_f64());
}
