//! The kind executor: a **simulation** of a node upgrade for kind clusters, where no kernel changes.
//!
//! Restarting a kind node's container changes its IP under podman (kind issue #2272), so the "reboot" happens inside
//! the node: a transient systemd unit of the node's own systemd (reached through PID 1's mount namespace; the pod runs
//! with hostPID) stops the kubelet, kills every container of every pod but the executor's own (the node's `ctr`),
//! restarts containerd and starts the kubelet, which then starts the node's pods again. Because the unit belongs to
//! the node's systemd, it finishes even if the executor's pod dies half-way; the executor records the unit in its
//! state directory (a hostPath) and, when restarted, waits for that unit instead of starting another.
//!
//! Staging pulls the artifact with `kitfleet-build pull` (every blob's digest checked) and checks its build key, as
//! on a real node. What it reports as booted is the key of its last finished simulated reboot, recorded once the
//! kubelet reported the Node Ready again after the restart — a recorded key, which only this simulation may use (real
//! nodes report what the running kernel's command line says).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::artifact;
use super::node_exec::{ExecError, NodeExecutor, SwitchMethod, check_pulled_key};

/// Runs a program in the node (its mount namespace: the node's own binaries and systemd).
pub trait HostCommand {
    /// Runs `argv`; stdout on success, else a message with stderr.
    fn run(&mut self, argv: &[String]) -> Result<String, String>;
}

/// [`HostCommand`] through `setns(2)` into `/proc/1/ns/mnt` (needs hostPID, CAP_SYS_ADMIN, CAP_SYS_CHROOT and
/// CAP_SYS_PTRACE to open another root process's namespace).
#[derive(Debug, Clone)]
pub struct NodeMountNs {
    pub ns: PathBuf,
}

impl Default for NodeMountNs {
    fn default() -> Self {
        NodeMountNs {
            ns: "/proc/1/ns/mnt".into(),
        }
    }
}

impl HostCommand for NodeMountNs {
    fn run(&mut self, argv: &[String]) -> Result<String, String> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let ns =
            std::fs::File::open(&self.ns).map_err(|e| format!("{}: {e}", self.ns.display()))?;
        let fd = ns.as_raw_fd();
        let (prog, args) = argv.split_first().ok_or("empty command")?;
        let mut cmd = Command::new(prog);
        cmd.args(args).env_clear().env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        // SAFETY: runs in the forked child before exec; setns(2) is async-signal-safe, touches no memory of the
        // parent, and `fd` stays open (owned by `ns`) until after the spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd
            .output()
            .map_err(|e| format!("{prog} in the node: {e}"))?;
        drop(ns);
        if !out.status.success() {
            return Err(format!(
                "{} in the node failed ({}): {}",
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Configuration of the kind executor.
#[derive(Debug, Clone)]
pub struct KindConfig {
    /// hostPath directory for the records (`kind-reboot.json`, `kind-booted`) and pulled artifacts.
    pub state_dir: PathBuf,
    /// The executor's own pod UID (its containers survive the simulated reboot).
    pub pod_uid: String,
    pub builder: PathBuf,
    pub insecure: Vec<String>,
    /// How long to wait for the restart unit to finish.
    pub unit_timeout: Duration,
}

/// A simulated reboot the executor started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reboot {
    pub key: String,
    /// The transient unit running the restart.
    pub unit: String,
    /// When it was started (RFC 3339): the Node's Ready heartbeat must be newer.
    pub started: String,
    /// The unit finished successfully.
    pub finished: bool,
}

/// The kind executor.
#[derive(Debug)]
pub struct KindNode<H> {
    cfg: KindConfig,
    host: H,
}

/// The script the transient unit runs in the node: stop the kubelet, kill every pod container but `keep_uid`'s,
/// restart containerd, start the kubelet. (`SIGKILL` goes to each task's init process, which ends its PID namespace;
/// `ctr tasks kill --all` reported success on kind's cgroup-v1 nodes but left pause processes running.)
pub fn restart_script(keep_uid: &str) -> String {
    format!(
        r#"set -u
systemctl stop kubelet
for id in $(ctr -n k8s.io tasks ls -q); do
  uid=$(ctr -n k8s.io containers info "$id" | jq -r '.Labels["io.kubernetes.pod.uid"] // ""')
  [ "$uid" = "{keep_uid}" ] && continue
  ctr -n k8s.io tasks kill -s SIGKILL "$id" || true
done
for i in $(seq 1 50); do
  left=0
  for id in $(ctr -n k8s.io tasks ls -q); do
    uid=$(ctr -n k8s.io containers info "$id" | jq -r '.Labels["io.kubernetes.pod.uid"] // ""')
    [ "$uid" = "{keep_uid}" ] && continue
    st=$(ctr -n k8s.io tasks ls | awk -v id="$id" '$1 == id {{print $3}}')
    [ "$st" = "RUNNING" ] && left=1
  done
  [ "$left" = 0 ] && break
  sleep 0.2
done
systemctl restart containerd
systemctl start kubelet
"#
    )
}

/// The Node is Ready, as posted by a kubelet heartbeat at or after `since`.
pub fn ready_since(node: &Node, since: Timestamp) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| {
            c.status == "True"
                && c.last_heartbeat_time
                    .as_ref()
                    .is_some_and(|t| t.0.as_second() >= since.as_second())
        })
}

impl<H: HostCommand> KindNode<H> {
    pub fn new(cfg: KindConfig, host: H) -> Self {
        KindNode { cfg, host }
    }

    fn reboot_path(&self) -> PathBuf {
        self.cfg.state_dir.join("kind-reboot.json")
    }

    fn booted_path(&self) -> PathBuf {
        self.cfg.state_dir.join("kind-booted")
    }

    /// The last simulated reboot started, if any.
    pub fn reboot(&self) -> Option<Reboot> {
        let b = std::fs::read(self.reboot_path()).ok()?;
        serde_json::from_slice(&b).ok()
    }

    fn write(&self, path: &Path, data: &[u8]) -> Result<(), ExecError> {
        let tmp = path.with_extension("tmp");
        let r = (|| {
            std::fs::create_dir_all(&self.cfg.state_dir)?;
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        r.map_err(|e| ExecError::Transient(format!("{}: {e}", path.display())))
    }

    fn save(&self, r: &Reboot) -> Result<(), ExecError> {
        self.write(
            &self.reboot_path(),
            &serde_json::to_vec(r).expect("plain data serializes"),
        )
    }

    fn host(&mut self, argv: &[&str]) -> Result<String, String> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        self.host.run(&argv)
    }

    /// Starts the restart unit (without waiting for it).
    fn start(&mut self, key: &str) -> Result<Reboot, ExecError> {
        let now = Timestamp::now();
        let r = Reboot {
            key: key.to_string(),
            unit: format!("kitfleet-sim-reboot-{}", now.as_millisecond()),
            started: now.to_string(),
            finished: false,
        };
        // Recorded first: a restarted executor then waits for this unit rather than starting a second one.
        self.save(&r)?;
        // The script goes into a file of the node first: systemd keeps a transient unit's command line in a unit
        // file, where a multi-line argument would be cut at its newlines.
        let script = restart_script(&self.cfg.pod_uid);
        let path = format!("/run/{}.sh", r.unit);
        self.host(&[
            "/bin/sh",
            "-c",
            "umask 077 && printf '%s' \"$1\" > \"$2\"",
            "sh",
            &script,
            &path,
        ])
        .map_err(ExecError::Transient)?;
        let unit = format!("--unit={}", r.unit);
        self.host(&[
            "systemd-run",
            &unit,
            "--no-block",
            "--property=Type=oneshot",
            "--property=RemainAfterExit=yes",
            "/bin/sh",
            &path,
        ])
        .map_err(ExecError::Transient)?;
        tracing::info!(key, unit = %r.unit, "simulated reboot started");
        Ok(r)
    }

    /// Waits for the unit: `Ok(())` once it exited successfully.
    fn wait(&mut self, r: &Reboot) -> Result<(), ExecError> {
        let start = Instant::now();
        loop {
            let show = self
                .host(&[
                    "systemctl",
                    "show",
                    "--property=ActiveState,Result",
                    &r.unit,
                ])
                .map_err(ExecError::Transient)?;
            let field = |k: &str| {
                show.lines()
                    .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                    .unwrap_or("")
                    .to_string()
            };
            match (field("ActiveState").as_str(), field("Result").as_str()) {
                ("active", _) => return Ok(()),
                ("failed", res) => {
                    let log = self
                        .host(&["journalctl", "--no-pager", "-n", "20", "-u", &r.unit])
                        .unwrap_or_default();
                    return Err(ExecError::Terminal(format!(
                        "the simulated reboot (unit {}) failed ({res}): {}",
                        r.unit,
                        log.trim()
                    )));
                }
                // Not started yet (its start job is queued), or gone: give it a little while.
                ("inactive", _) if start.elapsed() > Duration::from_secs(20) => {
                    return Err(ExecError::Terminal(format!(
                        "the simulated reboot's unit {} never ran (or is gone without a result)",
                        r.unit
                    )));
                }
                _ => {}
            }
            if start.elapsed() > self.cfg.unit_timeout {
                return Err(ExecError::Transient(format!(
                    "the simulated reboot (unit {}) still runs after {:?}",
                    r.unit, self.cfg.unit_timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl<H: HostCommand> NodeExecutor for KindNode<H> {
    fn stage(&mut self, key: &str, reference: &str) -> Result<(), ExecError> {
        let dir = self.cfg.state_dir.join("artifacts").join(key);
        let pulled = artifact::pull(&self.cfg.builder, reference, &dir, &self.cfg.insecure)
            .map_err(ExecError::classify)?;
        check_pulled_key(reference, &pulled.build_key, key).map_err(ExecError::classify)?;
        tracing::info!(
            key,
            files = pulled.files.len(),
            "artifact pulled and verified"
        );
        Ok(())
    }

    fn activate(&mut self, key: &str, _artifact: &str, _m: SwitchMethod) -> Result<(), ExecError> {
        let mut r = match self.reboot() {
            Some(r) if r.key == key => r,
            _ => self.start(key)?,
        };
        if !r.finished {
            self.wait(&r)?;
            r.finished = true;
            self.save(&r)?;
            tracing::info!(key, unit = %r.unit, "simulated reboot finished; waiting for the Node to be Ready");
        }
        Ok(())
    }

    fn booted(&mut self, node: &Node) -> Option<String> {
        let recorded = std::fs::read_to_string(self.booted_path())
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let Some(r) = self.reboot().filter(|r| r.finished) else {
            return recorded;
        };
        if recorded.as_deref() == Some(r.key.as_str()) {
            return recorded;
        }
        let since = r.started.parse::<Timestamp>().ok();
        if since.is_some_and(|t| ready_since(node, t)) {
            if let Err(e) = self.write(&self.booted_path(), r.key.as_bytes()) {
                tracing::warn!(error = %e, "recording the booted key");
            }
            tracing::info!(key = %r.key, "the Node is Ready after the simulated reboot");
            return Some(r.key);
        }
        recorded
    }

    fn commit(&mut self, _key: &str) -> Result<(), ExecError> {
        Ok(())
    }
}

#[cfg(test)]
#[path = "kind_tests.rs"]
mod tests;
