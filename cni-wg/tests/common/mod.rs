//! Test harness: throwaway network namespaces and a CNI "runtime" that execs a plugin binary the
//! way real runtimes do (env vars, config on stdin, result on stdout), from inside a simulated
//! node namespace.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_kitfleet-wg");

/// Privileged tests need root and network namespaces. Outside CI they skip (returning false)
/// with a message; with CI=true they fail.
pub fn privileged() -> bool {
    let ok = nix::unistd::geteuid().is_root()
        && Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: this test needs root and iproute2"
        );
        eprintln!("SKIP: needs root and iproute2");
    }
    ok
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "kfwt-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
    pub fn file(&self) -> File {
        File::open(self.path()).expect("open netns")
    }
    /// `ip -j -n NS ARGS…` parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-j", "-d", "-n", &self.name];
        a.extend_from_slice(args);
        let out = Command::new("ip").args(&a).output().expect("ip");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]))
    }
    pub fn links(&self) -> Vec<String> {
        let v = self.ip_json(&["link", "show"]);
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }
    pub fn has_link(&self, name: &str) -> bool {
        self.links().iter().any(|l| l == name)
    }
    /// Runs a command inside this namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A simulated node: its own network namespace, node state file and IPAM directory.
#[derive(Debug)]
pub struct Node {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    pub pod_cidr: String,
}

impl Node {
    pub fn new(pod_cidr: &str) -> Self {
        let node = Self {
            ns: Netns::new("node"),
            dir: tempfile::tempdir().unwrap(),
            pod_cidr: pod_cidr.into(),
        };
        node.write_state(json!({
            "podCIDRs": [pod_cidr], "mtu": 1420, "meshHealthy": true,
            "clusterCIDRs": ["10.244.0.0/16"], "wgInterface": "kfwg0"
        }));
        node
    }
    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("node.json")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }
    pub fn write_state(&self, v: Value) {
        std::fs::write(self.state_file(), v.to_string()).unwrap();
    }
    /// A conflist entry (one plugin config) for `version`.
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version, "name": "kfwtest", "type": "kitfleet-wg",
            "stateFile": self.state_file(), "dataDir": self.data_dir(), "masquerade": false,
        })
    }
    /// Addresses recorded in the IPAM store.
    pub fn reserved(&self) -> Vec<String> {
        let dir = self.data_dir().join("kfwtest");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return vec![];
        };
        let mut v: Vec<String> = rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
            .collect();
        v.sort();
        v
    }
    /// Host-side veths created by the plugin.
    pub fn host_veths(&self) -> Vec<String> {
        self.ns
            .links()
            .into_iter()
            .filter(|l| l.starts_with("kfw"))
            .collect()
    }
    /// Invokes the plugin in this node's namespace.
    pub fn cni(&self, inv: &Invocation<'_>) -> CniOut {
        run_plugin(PLUGIN, Some(&self.ns.file()), inv)
    }
}

/// One plugin invocation.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
    pub conf: Value,
    pub extra_env: Vec<(String, String)>,
}

impl<'a> Invocation<'a> {
    pub fn new(command: &'a str, conf: Value) -> Self {
        Self {
            command,
            container_id: "",
            netns: "",
            ifname: "eth0",
            args: "",
            conf,
            extra_env: vec![],
        }
    }
    pub fn attach(mut self, container_id: &'a str, netns: &'a str) -> Self {
        self.container_id = container_id;
        self.netns = netns;
        self
    }
}

/// What the plugin printed and returned.
#[derive(Debug)]
pub struct CniOut {
    pub ok: bool,
    pub stdout: Value,
    pub stderr: String,
}

impl CniOut {
    pub fn code(&self) -> Option<u64> {
        self.stdout.get("code").and_then(Value::as_u64)
    }
    #[track_caller]
    pub fn expect_ok(&self) -> &Value {
        assert!(self.ok, "plugin failed: {} / {}", self.stdout, self.stderr);
        &self.stdout
    }
    #[track_caller]
    pub fn expect_code(&self, code: u64) {
        assert!(!self.ok, "plugin unexpectedly succeeded: {}", self.stdout);
        assert_eq!(
            self.code(),
            Some(code),
            "stdout={} stderr={}",
            self.stdout,
            self.stderr
        );
    }
}

pub fn command(bin: &str, inv: &Invocation<'_>) -> Command {
    let mut c = Command::new(bin);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", inv.command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.args)
        .env("CNI_PATH", Path::new(bin).parent().unwrap())
        .envs(inv.extra_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Execs `bin` like a CNI runtime does, from inside `node_ns` (a dedicated thread joins it, so
/// the child inherits it), and waits.
pub fn run_plugin(bin: &str, node_ns: Option<&File>, inv: &Invocation<'_>) -> CniOut {
    let cmd = command(bin, inv);
    let stdin = inv.conf.to_string();
    let spawn = move || -> std::io::Result<Output> {
        let mut cmd = cmd;
        let mut child = cmd.spawn()?;
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin.as_bytes())?;
        child.wait_with_output()
    };
    let out = match node_ns {
        Some(ns) => kitfleet_cni_wg::netns::run_in(ns, spawn).expect("enter node netns"),
        None => spawn(),
    }
    .expect("spawn plugin");
    let stdout = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    };
    CniOut {
        ok: out.status.success(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Polls `cond` for up to 5 s (DEL leaves the link deletion to a detached reaper).
#[track_caller]
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Lazily unmounts whatever is still mounted below `dir` (container runtimes in tests).
pub fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in points {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
}

/// `conf` with `prevResult` set.
pub fn with_prev(mut conf: Value, prev: &Value) -> Value {
    conf["prevResult"] = prev.clone();
    conf
}
