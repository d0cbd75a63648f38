//! `kitfleet-mesh-bench`: pod-to-pod TCP throughput (iperf3) and ping latency across two namespace
//! "nodes", side by side for: plain routing (no encryption), the Kitfleet data plane (the
//! `kitfleet-node-agent mesh` binary of the same build), and Debian's wireguard-go configured with `wg`.
//! Prints a table. Needs root, iperf3, ping, wireguard-go and wg.
//!
//! A benchmark target (it links the test scaffolding, `kitfleet-testbed`, which no shipped binary does):
//! `cargo bench -p kitfleet-node-agent --bench mesh_bench -- --seconds 10 --rounds 2`.
//!
//! `--flood`: the Kitfleet data plane alone, with and without forged handshake initiations sent to
//! the receiving node (see `mesh_bench/flood.rs`). Needs root and iperf3.

#[path = "mesh_bench/flood.rs"]
mod flood;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use kitfleet_dataplane::PrivateKey;
use kitfleet_testbed::netns::{NodeNs, Proc, Testbed, in_ns, ip, ns_output, privileged};

#[derive(Debug, Parser)]
#[command(name = "kitfleet-mesh-bench")]
struct Args {
    /// iperf3 seconds per data plane.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Rounds (each data plane once per round; the table shows the median).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Pings per data plane and round.
    #[arg(long, default_value_t = 200)]
    pings: u32,
    /// The agent binary (default: the kitfleet-node-agent of this build).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Passed by `cargo bench` to every benchmark target; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Only these data planes (plain, kitfleet, wireguard-go); default all.
    #[arg(long = "only")]
    only: Vec<String>,
    /// Handshake-flood benchmark instead: throughput with and without forged initiations.
    #[arg(long)]
    flood: bool,
    /// Forged initiations per second.
    #[arg(long, default_value_t = 20_000)]
    flood_rate: u64,
    /// What the flood sends during the throughput run: garbage, mac1 or claim.
    #[arg(long, default_value = "mac1")]
    flood_kind: String,
    /// Seconds of flood (and of idle baseline) per CPU-per-datagram measurement (0: skip them).
    #[arg(long, default_value_t = 3)]
    cpu_seconds: u64,
}

const POD_MTU: u32 = 1420;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plane {
    Plain,
    Kitfleet,
    WireguardGo,
}

impl Plane {
    fn name(self) -> &'static str {
        match self {
            Plane::Plain => "plain",
            Plane::Kitfleet => "kitfleet",
            Plane::WireguardGo => "wireguard-go",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Plane::Plain => "plain routing (no encryption)",
            Plane::Kitfleet => "kitfleet (noise::Tunn + own I/O loop)",
            Plane::WireguardGo => "wireguard-go (Debian) + wg",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    gbits: f64,
    retransmits: f64,
    rtt_avg_ms: f64,
    rtt_max_ms: f64,
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out waiting for {what}")
}

/// Starts `kitfleet-node-agent mesh` for `node` (work files under `work/<node>`, log appended).
fn spawn_agent(agent: &Path, node: &NodeNs, dir: &Path, work: &Path) -> Result<Proc> {
    let w = work.join(&node.name);
    std::fs::create_dir_all(&w)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(w.join("agent.log"))?;
    let (key, state) = (w.join("wg.key"), w.join("node.json"));
    let args = [
        "mesh",
        "--node-name",
        &node.name,
        "--nodes-dir",
        dir.to_str().unwrap_or_default(),
        "--key-file",
        key.to_str().unwrap_or_default(),
        "--state-file",
        state.to_str().unwrap_or_default(),
        "--cluster-cidr",
        "10.244.0.0/16",
    ];
    let agent = agent.to_str().unwrap_or_default();
    Ok(Proc(
        in_ns(&node.netns, agent, &args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    ))
}

/// Pings pod 1 → pod 2 every 10 ms for 4 s while `disrupt` runs after 1 s; returns the estimated
/// interruption (lost replies × 10 ms).
fn interruption(tb: &Testbed, disrupt: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let (p1, p2) = (&tb.nodes[0].pods[0], &tb.nodes[1].pods[0]);
    let ping = in_ns(
        &p1.netns,
        "ping",
        &[
            "-n",
            "-q",
            "-i",
            "0.01",
            "-c",
            "400",
            "-W",
            "1",
            &p2.ip.to_string(),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    disrupt()?;
    let out = ping.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .context("ping summary")?;
    let nums: Vec<u64> = line
        .split(',')
        .filter_map(|p| p.split_whitespace().next()?.parse().ok())
        .collect();
    let (sent, got) = (
        nums.first().copied().unwrap_or(0),
        nums.get(1).copied().unwrap_or(0),
    );
    Ok(Duration::from_millis(sent.saturating_sub(got) * 10))
}

/// Agent restart and key rotation on node 2 under a 10 ms ping: how long traffic stops.
fn measure_disruptions(agent: &Path) -> Result<(Duration, Duration)> {
    let tb = Testbed::new(&format!("d{}", std::process::id() % 1000), 2, 1)?;
    let work = tempfile::tempdir()?;
    let mut procs = setup(Plane::Kitfleet, &tb, work.path(), agent)?;
    let dir = work.path().join("nodes");
    let node2 = tb.nodes[1].clone();
    let restart = interruption(&tb, || {
        procs[1].stop();
        procs[1] = spawn_agent(agent, &node2, &dir, work.path())?;
        Ok(())
    })?;
    std::thread::sleep(Duration::from_secs(1));
    let key = work.path().join(&node2.name).join("wg.key");
    let rotation = interruption(&tb, || {
        let st = Command::new(agent)
            .args(["rotate-key", "--key-file", key.to_str().unwrap_or_default()])
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("rotate-key failed");
        }
        Ok(())
    })?;
    Ok((restart, rotation))
}

/// Sets up `plane` on the testbed; returns the processes to keep alive.
fn setup(plane: Plane, tb: &Testbed, work: &Path, agent: &Path) -> Result<Vec<Proc>> {
    let (a, b) = (&tb.nodes[0], &tb.nodes[1]);
    let mut procs = Vec::new();
    match plane {
        Plane::Plain => {
            ip(&[
                "-n",
                &a.netns,
                "route",
                "add",
                &b.pod_cidr,
                "via",
                &b.ip.to_string(),
            ])?;
            ip(&[
                "-n",
                &b.netns,
                "route",
                "add",
                &a.pod_cidr,
                "via",
                &a.ip.to_string(),
            ])?;
        }
        Plane::Kitfleet => {
            let dir = work.join("nodes");
            std::fs::create_dir_all(&dir)?;
            tb.write_manifests(&dir)?;
            for n in &tb.nodes {
                procs.push(spawn_agent(agent, n, &dir, work)?);
            }
        }
        Plane::WireguardGo => {
            let keys = [PrivateKey::generate()?, PrivateKey::generate()?];
            for (i, n) in tb.nodes.iter().enumerate() {
                let dev = format!("wgb{}{}", std::process::id() % 1000, i);
                let log = std::fs::File::create(work.join(format!("{dev}.log")))?;
                let child = in_ns(&n.netns, "wireguard-go", &["-f", &dev])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()?;
                procs.push(Proc(child));
                let sock = PathBuf::from(format!("/var/run/wireguard/{dev}.sock"));
                wait_for("the wireguard-go socket", Duration::from_secs(10), || {
                    sock.exists()
                })?;
                let key_file = work.join(format!("{dev}.key"));
                std::fs::write(&key_file, keys[i].to_base64())?;
                let other = &tb.nodes[1 - i];
                let peer = keys[1 - i].public_key().to_string();
                let endpoint = format!("{}:51820", other.ip);
                let kf = key_file.to_str().unwrap_or_default();
                let wg_args = [
                    "set",
                    &dev,
                    "private-key",
                    kf,
                    "listen-port",
                    "51820",
                    "peer",
                    &peer,
                    "endpoint",
                    &endpoint,
                    "allowed-ips",
                    &other.pod_cidr,
                ];
                ns_output(&n.netns, "wg", &wg_args)?;
                ip(&[
                    "-n",
                    &n.netns,
                    "link",
                    "set",
                    &dev,
                    "mtu",
                    &POD_MTU.to_string(),
                    "up",
                ])?;
                ip(&["-n", &n.netns, "route", "add", &other.pod_cidr, "dev", &dev])?;
            }
        }
    }
    tb.set_pod_mtu(POD_MTU)?;
    let (p1, p2) = (&a.pods[0], &b.pods[0]);
    wait_for(
        &format!("{} pod-to-pod connectivity", plane.name()),
        Duration::from_secs(20),
        || tb.ping(p1, p2, 1, "0.2").is_ok(),
    )?;
    Ok(procs)
}

fn parse_rtt(out: &str) -> Result<(f64, f64)> {
    let line = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .context("ping printed no rtt summary")?;
    let nums: Vec<f64> = line
        .split('=')
        .nth(1)
        .unwrap_or_default()
        .trim()
        .trim_end_matches(" ms")
        .split('/')
        .filter_map(|x| x.parse().ok())
        .collect();
    if nums.len() < 3 {
        bail!("cannot parse ping summary {line:?}");
    }
    Ok((nums[1], nums[2]))
}

fn measure(plane: Plane, args: &Args, agent: &Path, round: usize) -> Result<Sample> {
    let prefix = format!("b{}{}", std::process::id() % 1000, round);
    let tb = Testbed::new(&prefix, 2, 1)?;
    let work = tempfile::tempdir()?;
    let _procs = setup(plane, &tb, work.path(), agent)?;
    let (p1, p2) = (&tb.nodes[0].pods[0], &tb.nodes[1].pods[0]);
    let ping = tb.ping(p1, p2, args.pings, "0.005")?;
    let (rtt_avg_ms, rtt_max_ms) = parse_rtt(&ping)?;
    let (gbits, retransmits) = iperf(&tb, args.seconds)?;
    Ok(Sample {
        gbits,
        retransmits,
        rtt_avg_ms,
        rtt_max_ms,
    })
}

/// iperf3 TCP from node 1's first pod to node 2's: (Gbit/s received, retransmits).
fn iperf(tb: &Testbed, seconds: u32) -> Result<(f64, f64)> {
    let (p1, p2) = (&tb.nodes[0].pods[0], &tb.nodes[1].pods[0]);
    let server = Proc(
        in_ns(&p2.netns, "iperf3", &["-s", "-1", "-B", &p2.ip.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(500));
    let out = ns_output(
        &p1.netns,
        "iperf3",
        &[
            "-c",
            &p2.ip.to_string(),
            "-t",
            &seconds.to_string(),
            "-O",
            "1",
            "-J",
        ],
    )?;
    drop(server);
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON has no end.sum_received")?;
    let retransmits = v["end"]["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0);
    Ok((bps / 1e9, retransmits))
}

/// One round of the flood benchmark, measured in the same testbed one after the other.
#[derive(Debug, Clone)]
struct FloodRound {
    /// 1-minute load average when the round started.
    load: f64,
    clean: f64,
    /// The attacker sends the same datagrams at the same rate to a closed port on node 2: its own
    /// CPU and the kernel's delivery cost the same, the data plane sees none of it.
    control: f64,
    control_attacker_cpu: f64,
    flood: f64,
    /// Forged datagrams/s achieved, and the attacker's sending thread's CPU share of one core.
    rate: f64,
    attacker_cpu: f64,
    /// Node 2's agent CPU µs per forged datagram, per kind (empty with `--cpu-seconds 0`).
    cpu_us: Vec<f64>,
}

/// One round: clean, control and flood throughput (in a rotating order), then the agent's CPU per
/// forged datagram for each kind.
fn flood_round(
    args: &Args,
    agent: &Path,
    round: usize,
    kind: flood::Forgery,
) -> Result<FloodRound> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let load = flood::load_average();
    let mut tb = Testbed::new(&format!("f{}{}", std::process::id() % 1000, round), 2, 1)?;
    let attacker = flood::add_attacker(&mut tb)?;
    let work = tempfile::tempdir()?;
    let procs = setup(Plane::Kitfleet, &tb, work.path(), agent)?;
    let dir = work.path().join("nodes");
    let target = flood::published_key(&dir, &tb.nodes[1].name)?;
    let claimed = flood::published_key(&dir, &tb.nodes[0].name)?;
    let node2: std::net::IpAddr = tb.nodes[1].ip.into();
    let dst = std::net::SocketAddr::new(node2, 51820);
    let under_attack = |to: std::net::SocketAddr| -> Result<(f64, f64, f64)> {
        let stop = Arc::new(AtomicBool::new(false));
        let pool = flood::pool(kind, &target, &claimed);
        let started = Instant::now();
        let f = flood::start_flood(&attacker, to, pool, args.flood_rate, stop.clone());
        std::thread::sleep(Duration::from_secs(1));
        let r = iperf(&tb, args.seconds);
        stop.store(true, Ordering::Relaxed);
        let (sent, cpu) = f
            .join()
            .map_err(|_| anyhow::anyhow!("flood thread panicked"))???;
        let wall = started.elapsed().as_secs_f64();
        Ok((r?.0, sent as f64 / wall, cpu.as_secs_f64() / wall))
    };
    let closed = std::net::SocketAddr::new(node2, flood::CLOSED_PORT);
    let (mut clean, mut control, mut flooded) = (None, None, None);
    for step in 0..3 {
        match (step + round) % 3 {
            0 => clean = Some(iperf(&tb, args.seconds)?.0),
            1 => control = Some(under_attack(closed)?),
            _ => flooded = Some(under_attack(dst)?),
        }
    }
    let (Some(clean), Some(control), Some(flooded)) = (clean, control, flooded) else {
        bail!("a run of the round is missing");
    };
    let mut cpu_us = Vec::new();
    for k in [
        flood::Forgery::Garbage,
        flood::Forgery::Mac1,
        flood::Forgery::Claim,
    ] {
        if args.cpu_seconds == 0 {
            break;
        }
        let pool = flood::pool(k, &target, &claimed);
        let (us, _) = flood::cpu_per_datagram(
            &procs[1],
            &attacker,
            dst,
            pool,
            args.flood_rate,
            args.cpu_seconds,
        )?;
        cpu_us.push(us);
    }
    Ok(FloodRound {
        load,
        clean,
        control: control.0,
        control_attacker_cpu: control.2,
        flood: flooded.0,
        rate: flooded.1,
        attacker_cpu: flooded.2,
        cpu_us,
    })
}

fn flood_bench(args: &Args, agent: &Path) -> Result<()> {
    let kind = flood::Forgery::parse(&args.flood_kind)?;
    let mut rows: Vec<FloodRound> = Vec::new();
    for round in 0..args.rounds.max(1) {
        let r = flood_round(args, agent, round, kind)
            .with_context(|| format!("flood round {round}"))?;
        eprintln!(
            "round {round} (load {:.2}): clean {:.2} Gbit/s; attacker to a closed port {:.2} ({:.0}%, attacker CPU {:.0}%); flood {:.0}/s {:.2} Gbit/s ({:.0}% of clean, {:.0}% of control; attacker CPU {:.0}% of a core); agent CPU µs/datagram {:.2?}",
            r.load,
            r.clean,
            r.control,
            100.0 * r.control / r.clean,
            100.0 * r.control_attacker_cpu,
            r.rate,
            r.flood,
            100.0 * r.flood / r.clean,
            100.0 * r.flood / r.control,
            100.0 * r.attacker_cpu,
            r.cpu_us
        );
        rows.push(r);
    }
    let med = |f: &dyn Fn(&FloodRound) -> f64| median(rows.iter().map(f).collect());
    let loads: Vec<String> = rows.iter().map(|r| format!("{:.1}", r.load)).collect();
    println!(
        "\nhandshake flood against node 2 (the iperf3 receiver), agent {}, iperf3 -t {} (median of {} rounds; load average at each round's start: {})",
        agent.display(),
        args.seconds,
        rows.len(),
        loads.join(", ")
    );
    println!(
        "| run | TCP Gbit/s | vs clean | vs control | datagrams/s | attacker's CPU (same cores) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    println!("| clean | {:.2} | 100% | - | 0 | - |", med(&|r| r.clean));
    println!(
        "| control: the same datagrams to closed port {} | {:.2} | {:.0}% | 100% | {:.0} | {:.0}% of a core |",
        flood::CLOSED_PORT,
        med(&|r| r.control),
        100.0 * med(&|r| r.control / r.clean),
        args.flood_rate,
        100.0 * med(&|r| r.control_attacker_cpu)
    );
    println!(
        "| flood: {} | {:.2} | {:.0}% | {:.0}% | {:.0} | {:.0}% of a core |",
        kind.label(),
        med(&|r| r.flood),
        100.0 * med(&|r| r.flood / r.clean),
        100.0 * med(&|r| r.flood / r.control),
        med(&|r| r.rate),
        100.0 * med(&|r| r.attacker_cpu)
    );
    if args.cpu_seconds == 0 {
        return Ok(());
    }
    println!(
        "\n| forged datagram ({} /s for {} s) | node 2 agent CPU per datagram (µs) |",
        args.flood_rate, args.cpu_seconds
    );
    println!("|---|---:|");
    for (i, k) in [
        flood::Forgery::Garbage,
        flood::Forgery::Mac1,
        flood::Forgery::Claim,
    ]
    .into_iter()
    .enumerate()
    {
        println!("| {} | {:.2} |", k.label(), med(&|r| r.cpu_us[i]));
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> std::process::ExitCode {
    match bench(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kitfleet-mesh-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench(args: Args) -> Result<()> {
    if !privileged() {
        bail!("needs root, /dev/net/tun and network namespaces");
    }
    let tools: &[&str] = if args.flood {
        &["iperf3", "ping"]
    } else {
        &["iperf3", "ping", "wireguard-go", "wg"]
    };
    for tool in tools {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()?
            .code()
            != Some(0)
        {
            bail!(
                "{tool} not found (apt-get install iperf3 iputils-ping wireguard-go wireguard-tools)"
            );
        }
    }
    let agent = match &args.agent {
        Some(a) => a.clone(),
        None => PathBuf::from(env!("CARGO_BIN_EXE_kitfleet-node-agent")),
    };
    if !agent.exists() {
        bail!(
            "agent binary {} not found (build it: cargo build --release -p kitfleet-node-agent)",
            agent.display()
        );
    }
    if args.flood {
        return flood_bench(&args, &agent);
    }
    let planes: Vec<Plane> = [Plane::Plain, Plane::Kitfleet, Plane::WireguardGo]
        .into_iter()
        .filter(|p| args.only.is_empty() || args.only.iter().any(|o| o == p.name()))
        .collect();
    let mut samples: Vec<(Plane, Vec<Sample>)> = planes.iter().map(|p| (*p, Vec::new())).collect();
    for round in 0..args.rounds.max(1) {
        for (plane, s) in samples.iter_mut() {
            let m = measure(*plane, &args, &agent, round)
                .with_context(|| format!("measuring {}", plane.name()))?;
            eprintln!(
                "round {round}: {:<14} {:>6.2} Gbit/s  rtt avg {:.3} ms",
                plane.name(),
                m.gbits,
                m.rtt_avg_ms
            );
            s.push(m);
        }
    }
    let gbits = |p: Plane| {
        samples
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, s)| median(s.iter().map(|x| x.gbits).collect()))
    };
    let wg_go = gbits(Plane::WireguardGo);
    println!(
        "\npod-to-pod across two namespace nodes, pod MTU {POD_MTU}, iperf3 -t {} (median of {} rounds), ping -i 0.005 x{}",
        args.seconds,
        args.rounds.max(1),
        args.pings
    );
    println!(
        "| data plane | TCP Gbit/s | vs wireguard-go | TCP retransmits | ping avg ms | ping max ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (plane, s) in &samples {
        let g = median(s.iter().map(|x| x.gbits).collect());
        let ratio = wg_go.map_or("-".to_string(), |w| format!("{:.2}x", g / w));
        let avg = median(s.iter().map(|x| x.rtt_avg_ms).collect());
        let max = median(s.iter().map(|x| x.rtt_max_ms).collect());
        let retr = median(s.iter().map(|x| x.retransmits).collect());
        println!(
            "| {} | {g:.2} | {ratio} | {retr:.0} | {avg:.3} | {max:.3} |",
            plane.label()
        );
    }
    if planes.contains(&Plane::Kitfleet) {
        let (restart, rotation) = measure_disruptions(&agent).context("measuring disruptions")?;
        println!(
            "\nkitfleet under a 10 ms ping (lost replies x 10 ms): agent restart {} ms, key rotation {} ms",
            restart.as_millis(),
            rotation.as_millis()
        );
    }
    Ok(())
}
