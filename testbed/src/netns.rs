//! Throwaway network namespaces: one [`Netns`], or a multi-node [`Testbed`] for the mesh's namespace
//! tests and the benchmark: an underlay netns with a bridge, N "node" netns each joined to it by a veth, and per
//! node M "pod" netns wired Calico-style (pod /32, default route via 169.254.1.1, which the host
//! veth owns; host /32 route). Everything is deleted on drop. Needs root (CAP_NET_ADMIN, /dev/net/tun).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

/// One simulated node.
#[derive(Debug, Clone)]
pub struct NodeNs {
    /// Node name (also the Node object's name).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Underlay address (the Node's InternalIP).
    pub ip: Ipv4Addr,
    /// podCIDR `10.244.<i+1>.0/24`.
    pub pod_cidr: String,
    pub pods: Vec<Pod>,
}

/// One simulated pod.
#[derive(Debug, Clone)]
pub struct Pod {
    pub netns: String,
    pub ip: Ipv4Addr,
}

/// The whole topology.
#[derive(Debug)]
pub struct Testbed {
    pub underlay: String,
    pub bridge: String,
    pub nodes: Vec<NodeNs>,
    namespaces: Vec<String>,
}

/// Runs `ip ARGS…`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

/// Runs a command to completion, failing with its stderr.
pub fn run(prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("running {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip netns exec NS PROG ARGS…` as a Command.
pub fn in_ns(ns: &str, prog: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, prog]).args(args);
    c
}

/// Runs a command inside a netns to completion; returns stdout.
pub fn ns_output(ns: &str, prog: &str, args: &[&str]) -> Result<String> {
    let out = in_ns(ns, prog, args)
        .output()
        .with_context(|| format!("running {prog} in {ns}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {} in {ns}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this process can build the topology (root, netns, TUN).
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Path::new("/dev/net/tun").exists() && Path::new("/proc/self/ns/net").exists()
}

/// The privileged tests' gate: true when [`privileged`]; otherwise, under `CI=true`, a panic naming
/// `what` (a privileged test fails there instead of skipping), else a "skipping" message and false.
pub fn require_privileges(what: &str) -> bool {
    if privileged() {
        return true;
    }
    let msg = format!("{what}: needs root, /dev/net/tun and network namespaces");
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{msg} (CI=true: failing, not skipping)"
    );
    eprintln!("skipping: {msg}");
    false
}

/// A named network namespace with `lo` up, created fresh (a leftover of the same name is deleted
/// first) and deleted on drop.
#[derive(Debug)]
pub struct Netns(String);

impl Netns {
    /// Creates namespace `name` (keep it short and unique per test, e.g. with the process id).
    pub fn new(name: &str) -> Result<Self> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", name])?;
        let ns = Netns(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `f` on a thread that has entered network namespace `ns` (so std sockets live there).
pub fn with_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid netns fd affects only this thread, which we own.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    })
}

impl Testbed {
    /// Builds `nodes` nodes with `pods` pods each; names start with `prefix` (keep it ≤ 6 chars).
    pub fn new(prefix: &str, nodes: usize, pods: usize) -> Result<Self> {
        let mut tb = Testbed {
            underlay: format!("{prefix}-ul"),
            bridge: "br0".into(),
            nodes: Vec::new(),
            namespaces: Vec::new(),
        };
        tb.add_ns(&tb.underlay.clone())?;
        let ul = tb.underlay.clone();
        ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &ul, "link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let n = i + 1;
            let node_ns = format!("{prefix}-n{n}");
            tb.add_ns(&node_ns)?;
            let node_ip = Ipv4Addr::new(192, 168, 200, n as u8);
            ip(&[
                "-n",
                &ul,
                "link",
                "add",
                &format!("ul{n}"),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &node_ns,
            ])?;
            ip(&[
                "-n",
                &ul,
                "link",
                "set",
                &format!("ul{n}"),
                "master",
                "br0",
                "up",
            ])?;
            ip(&[
                "-n",
                &node_ns,
                "addr",
                "add",
                &format!("{node_ip}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &node_ns, "link", "set", "eth0", "up"])?;
            ns_output(&node_ns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
            let mut node = NodeNs {
                name: format!("node{n}"),
                netns: node_ns.clone(),
                ip: node_ip,
                pod_cidr: format!("10.244.{n}.0/24"),
                pods: Vec::new(),
            };
            for p in 0..pods {
                let pod_ns = format!("{prefix}-n{n}p{p}");
                tb.add_ns(&pod_ns)?;
                let pod_ip = Ipv4Addr::new(10, 244, n as u8, 10 + p as u8);
                let host = format!("cali{p}");
                ip(&[
                    "-n", &node_ns, "link", "add", &host, "type", "veth", "peer", "name", "eth0",
                    "netns", &pod_ns,
                ])?;
                ip(&["-n", &node_ns, "link", "set", &host, "up"])?;
                // The host end owns the pods' gateway address, so it answers their ARP for it.
                ip(&[
                    "-n",
                    &node_ns,
                    "addr",
                    "add",
                    "169.254.1.1/32",
                    "dev",
                    &host,
                    "scope",
                    "link",
                ])?;
                ip(&[
                    "-n",
                    &node_ns,
                    "route",
                    "add",
                    &format!("{pod_ip}/32"),
                    "dev",
                    &host,
                ])?;
                ip(&[
                    "-n",
                    &pod_ns,
                    "addr",
                    "add",
                    &format!("{pod_ip}/32"),
                    "dev",
                    "eth0",
                ])?;
                ip(&["-n", &pod_ns, "link", "set", "eth0", "up"])?;
                ip(&[
                    "-n",
                    &pod_ns,
                    "route",
                    "add",
                    "169.254.1.1",
                    "dev",
                    "eth0",
                    "scope",
                    "link",
                ])?;
                ip(&[
                    "-n",
                    &pod_ns,
                    "route",
                    "add",
                    "default",
                    "via",
                    "169.254.1.1",
                    "dev",
                    "eth0",
                ])?;
                node.pods.push(Pod {
                    netns: pod_ns,
                    ip: pod_ip,
                });
            }
            tb.nodes.push(node);
        }
        Ok(tb)
    }

    /// Creates an empty network namespace that is deleted with the test bed (e.g. a pod for a CNI plugin).
    pub fn add_namespace(&mut self, ns: &str) -> Result<()> {
        self.add_ns(ns)
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    /// Sets the pod-facing MTU (veth both ends) on every node, e.g. the state file's pod MTU.
    pub fn set_pod_mtu(&self, mtu: u32) -> Result<()> {
        for n in &self.nodes {
            for (p, pod) in n.pods.iter().enumerate() {
                ip(&[
                    "-n",
                    &n.netns,
                    "link",
                    "set",
                    &format!("cali{p}"),
                    "mtu",
                    &mtu.to_string(),
                ])?;
                ip(&[
                    "-n",
                    &pod.netns,
                    "link",
                    "set",
                    "eth0",
                    "mtu",
                    &mtu.to_string(),
                ])?;
            }
        }
        Ok(())
    }

    /// Writes one Node manifest per node into `dir` (YAML; podCIDR and InternalIP set, no annotations).
    pub fn write_manifests(&self, dir: &Path) -> Result<()> {
        for n in &self.nodes {
            let yaml = format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {}\nspec:\n  podCIDR: {}\n  podCIDRs: [\"{}\"]\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {}\n  - type: Hostname\n    address: {}\n",
                n.name, n.pod_cidr, n.pod_cidr, n.ip, n.name
            );
            std::fs::write(dir.join(format!("{}.yaml", n.name)), yaml)?;
        }
        Ok(())
    }

    /// Ping from pod `from` to `to` (count, interval seconds); returns ping's stdout.
    pub fn ping(&self, from: &Pod, to: &Pod, count: u32, interval: &str) -> Result<String> {
        ns_output(
            &from.netns,
            "ping",
            &[
                "-n",
                "-c",
                &count.to_string(),
                "-i",
                interval,
                "-W",
                "1",
                &to.ip.to_string(),
            ],
        )
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A child process that is sent SIGTERM and reaped on drop.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Proc {
    /// Sends `sig` to the process (by its own pid).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }

    /// SIGTERM, then wait.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        self.0.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.signal(libc::SIGTERM);
            for _ in 0..50 {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            self.signal(libc::SIGKILL);
            let _ = self.0.wait();
        }
    }
}
