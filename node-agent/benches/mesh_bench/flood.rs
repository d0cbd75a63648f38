//! `kitfleet-mesh-bench --flood`: pod-to-pod TCP throughput while an attacker on the underlay sends
//! forged handshake initiations to the receiving node, against the same run without them and against
//! a control run in which the attacker sends the same datagrams at the same rate to a closed port of
//! the same node (the attacker shares the machine's cores: the control run charges its sending and the
//! kernel's delivery, so flood/control is what the data plane itself loses); then the receiving
//! agent's CPU time per forged datagram for three kinds of forgery.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kitfleet_dataplane::PublicKey;
use kitfleet_node_agent::mesh::nodes::ANNOTATION_PUBLIC_KEY;
use kitfleet_node_agent::mesh::source::parse_manifest;
use kitfleet_testbed::forge::{Forger, INITIATION_LEN};
use kitfleet_testbed::netns::{Proc, Testbed, ip, with_netns};

/// What the attacker sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    /// Random bytes shaped like an initiation: mac1 fails.
    Garbage,
    /// Valid mac1 (the target's public key is public), an unknown initiator key.
    Mac1,
    /// Valid mac1 and the encrypted static key of a real peer (node 1); random timestamp.
    Claim,
}

impl Forgery {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "garbage" => Forgery::Garbage,
            "mac1" => Forgery::Mac1,
            "claim" => Forgery::Claim,
            _ => bail!("--flood-kind {s:?}: want garbage, mac1 or claim"),
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            Forgery::Garbage => "random bytes (mac1 fails)",
            Forgery::Mac1 => "valid mac1, unknown initiator key",
            Forgery::Claim => "valid mac1, claims node 1's key",
        }
    }
}

const ATTACKER_IP: &str = "192.168.200.250";

/// Adds an attacker namespace on the underlay bridge; returns its name.
pub fn add_attacker(tb: &mut Testbed) -> Result<String> {
    let ns = format!("{}-atk", tb.underlay.trim_end_matches("-ul"));
    tb.add_namespace(&ns)?;
    ip(&[
        "-n",
        &tb.underlay,
        "link",
        "add",
        "ulatk",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &ns,
    ])?;
    ip(&[
        "-n",
        &tb.underlay,
        "link",
        "set",
        "ulatk",
        "master",
        &tb.bridge,
        "up",
    ])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{ATTACKER_IP}/24"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    Ok(ns)
}

/// The public key a node published in its manifest (under today's key, or the `kitfleet.dev/`
/// one older agents used, so `--agent` can point at an older build).
pub fn published_key(dir: &Path, node: &str) -> Result<PublicKey> {
    let path = dir.join(format!("{node}.yaml"));
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let n = parse_manifest(&path, &text)?;
    let a = n.metadata.annotations.unwrap_or_default();
    let v = a
        .get(ANNOTATION_PUBLIC_KEY)
        .or_else(|| a.get("kitfleet.dev/wg-public-key"))
        .with_context(|| format!("{node} has published no key"))?;
    Ok(v.parse()?)
}

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD on the calling thread, writing into the live struct.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let t = |v: libc::timeval| Duration::new(v.tv_sec as u64, v.tv_usec as u32 * 1000);
    t(u.ru_utime) + t(u.ru_stime)
}

/// 256 distinct forged datagrams of one kind.
pub fn pool(kind: Forgery, target: &PublicKey, claimed: &PublicKey) -> Vec<[u8; INITIATION_LEN]> {
    let f = Forger::new(target);
    (0..256u32)
        .map(|i| match kind {
            Forgery::Garbage => f.garbage(),
            Forgery::Mac1 => {
                let mut k = [0u8; 32];
                k[..4].copy_from_slice(&i.to_le_bytes());
                k[31] = 0x5a;
                f.claiming(&PublicKey(k), i)
            }
            Forgery::Claim => f.claiming(claimed, i),
        })
        .collect()
}

/// Sends `pool` round-robin to `dst` at `rate` datagrams/s (batches of up to 64 per `sendmmsg`)
/// from the attacker namespace until `stop`; returns how many were sent and the sending thread's CPU
/// time (it shares the machine's cores with everything measured).
pub fn start_flood(
    ns: &str,
    dst: SocketAddr,
    pool: Vec<[u8; INITIATION_LEN]>,
    rate: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<Result<(u64, Duration)>>> {
    with_netns(ns, move || -> Result<(u64, Duration)> {
        let cpu0 = thread_cpu();
        let s = UdpSocket::bind((ATTACKER_IP, 0))?;
        s.connect(dst)?;
        let start = Instant::now();
        let mut sent: u64 = 0;
        let mut next = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let due = (start.elapsed().as_micros() as u64 * rate / 1_000_000).saturating_sub(sent);
            if due == 0 {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            let n = due.min(64) as usize;
            let mut iov: Vec<libc::iovec> = (0..n)
                .map(|i| libc::iovec {
                    iov_base: pool[(next + i) % pool.len()].as_ptr() as *mut libc::c_void,
                    iov_len: INITIATION_LEN,
                })
                .collect();
            // SAFETY: an all-zero mmsghdr is valid (no name, no control); the iov pointers are set below.
            let mut msgs: Vec<libc::mmsghdr> =
                (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
            for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: `msgs` holds `n` headers whose iovecs point into `pool`, alive for the call.
            let r = unsafe { libc::sendmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
            if r > 0 {
                sent += r as u64;
                next = (next + r as usize) % pool.len();
            } else {
                // ENOBUFS/ECONNREFUSED under load: count nothing, try again.
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        Ok((sent, thread_cpu() - cpu0))
    })
}

/// The 1-minute load average (`/proc/loadavg`), reported with every figure: the machine is shared.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A UDP port on the target node nobody listens on: the control run sends the same datagrams there,
/// so the kernel and the attacker's own sending cost the same while the data plane sees nothing.
pub const CLOSED_PORT: u16 = 51899;

/// CPU time of every thread of process `pid` so far (from `/proc/PID/task/*/schedstat`).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let mut ns: u64 = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = t?.path().join("schedstat");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        ns += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(Duration::from_nanos(ns))
}

/// Agent CPU per forged datagram (µs): `secs` of flood at `rate` minus `secs` idle.
pub fn cpu_per_datagram(
    agent: &Proc,
    attacker: &str,
    dst: SocketAddr,
    pool: Vec<[u8; INITIATION_LEN]>,
    rate: u64,
    secs: u64,
) -> Result<(f64, f64)> {
    let pid = agent.0.id();
    let t0 = cpu_time(pid)?;
    std::thread::sleep(Duration::from_secs(secs));
    let idle = cpu_time(pid)? - t0;
    let stop = Arc::new(AtomicBool::new(false));
    let flood = start_flood(attacker, dst, pool, rate, stop.clone());
    let t1 = cpu_time(pid)?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let busy = cpu_time(pid)? - t1;
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (sent, _) = flood
        .join()
        .map_err(|_| anyhow::anyhow!("flood thread panicked"))???;
    if sent == 0 {
        bail!("the flood sent nothing");
    }
    let extra = busy.as_secs_f64() - idle.as_secs_f64() * wall.as_secs_f64() / secs as f64;
    Ok((
        extra.max(0.0) * 1e6 / sent as f64,
        sent as f64 / wall.as_secs_f64(),
    ))
}
