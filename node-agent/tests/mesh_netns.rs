//! The mesh for real: "nodes" are network namespaces on an underlay bridge, each running the
//! `kitfleet-node-agent mesh` binary with its own key, state file and a shared directory of Node
//! manifests; "pods" are network namespaces wired to their node. Needs root, TUN and netns: fails
//! under CI=true without them, skips with a message otherwise.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kitfleet_cni_wg::state::NodeState;
use kitfleet_node_agent::mesh::nodes::ANNOTATION_PUBLIC_KEY;
use kitfleet_node_agent::mesh::source::parse_manifest;
use kitfleet_testbed::netns::{
    NodeNs, Pod, Proc, Testbed, in_ns, ns_output, require_privileges, with_netns,
};

const AGENT: &str = env!("CARGO_BIN_EXE_kitfleet-node-agent");
const MARKER: &[u8] = b"KITFLEET-PLAINTEXT-MARKER-7f3a";

fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).exists()));
    assert!(
        found,
        "{name} is needed by this test (Debian package: see node-agent/README.md)"
    );
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

struct Agent {
    node: NodeNs,
    work: PathBuf,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Agent {
    fn start(node: &NodeNs, dir: &Path, work: &Path) -> Agent {
        let work = work.join(&node.name);
        std::fs::create_dir_all(&work).unwrap();
        let mut a = Agent {
            node: node.clone(),
            work,
            dir: dir.into(),
            proc: None,
        };
        a.spawn();
        a
    }

    fn key_file(&self) -> PathBuf {
        self.work.join("keys/wg.key")
    }

    fn state_file(&self) -> PathBuf {
        self.work.join("node.json")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join("agent.log"))
            .unwrap();
        let (key, state) = (self.key_file(), self.state_file());
        let args = [
            "mesh",
            "--node-name",
            &self.node.name,
            "--nodes-dir",
            self.dir.to_str().unwrap(),
            "--nodes-dir-poll-ms",
            "100",
            "--resync-ms",
            "200",
            "--key-file",
            key.to_str().unwrap(),
            "--state-file",
            state.to_str().unwrap(),
            "--cluster-cidr",
            "10.244.0.0/16",
        ];
        let child = in_ns(&self.node.netns, AGENT, &args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.proc = Some(Proc(child));
    }

    fn stop(&mut self) {
        let status = self
            .proc
            .take()
            .and_then(|mut p| p.stop())
            .expect("agent was running");
        assert!(
            status.success(),
            "agent {} exited with {status}; log:\n{}",
            self.node.name,
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.work.join("agent.log")).unwrap_or_default()
    }

    fn state(&self) -> Option<NodeState> {
        NodeState::load(&self.state_file()).ok()
    }
}

fn published_key(dir: &Path, node: &str) -> Option<String> {
    let path = dir.join(format!("{node}.yaml"));
    let n = parse_manifest(&path, &std::fs::read_to_string(&path).ok()?).ok()?;
    n.metadata.annotations?.get(ANNOTATION_PUBLIC_KEY).cloned()
}

fn pings(tb: &Testbed, from: &Pod, to: &Pod) -> bool {
    tb.ping(from, to, 1, "0.2").is_ok()
}

/// Starts every agent and waits for published keys and a full mesh.
fn start_mesh(tb: &Testbed, dir: &Path, work: &Path) -> Vec<Agent> {
    tb.write_manifests(dir).unwrap();
    let agents: Vec<Agent> = tb
        .nodes
        .iter()
        .map(|n| Agent::start(n, dir, work))
        .collect();
    wait_until(
        "every agent to publish its key and write a healthy state file",
        Duration::from_secs(20),
        || {
            agents.iter().all(|a| {
                published_key(dir, &a.node.name).is_some()
                    && a.state().is_some_and(|s| s.mesh_healthy)
            })
        },
    );
    let mtu = agents[0].state().unwrap().mtu;
    tb.set_pod_mtu(mtu).unwrap();
    for a in &tb.nodes {
        for b in tb.nodes.iter().filter(|b| b.name != a.name) {
            wait_until(
                &format!("{} → {} over the mesh", a.name, b.name),
                Duration::from_secs(20),
                || pings(tb, &a.pods[0], &b.pods[0]),
            );
        }
    }
    agents
}

/// The node itself (its host namespace: the apiserver calling a webhook pod, a host-network pod) reaches pods on other
/// nodes: the agent gives the mesh interface the node's address (podCIDR network+1), so the source is one the peer accepts.
/// Before that address existed, the kernel chose the node's underlay address and the receiving peer dropped the packet.
#[test]
fn the_node_itself_reaches_pods_on_other_nodes() {
    if !require_privileges("mesh namespace test") {
        return;
    }
    require_tool("ping");
    let tb = Testbed::new(&format!("h{}", std::process::id() % 10000), 2, 1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (dir, work) = (tmp.path().join("nodes"), tmp.path().join("work"));
    std::fs::create_dir_all(&dir).unwrap();
    let _agents = start_mesh(&tb, &dir, &work);
    let (a, remote) = (&tb.nodes[0], &tb.nodes[1].pods[0]);
    let want = format!("{}/32", a.pod_cidr.replace(".0/24", ".1"));
    wait_until(
        &format!("{want} on {}'s kfwg0", a.name),
        Duration::from_secs(10),
        || {
            ns_output(
                &a.netns,
                "ip",
                &["-4", "-o", "addr", "show", "dev", "kfwg0"],
            )
            .is_ok_and(|o| o.contains(&want))
        },
    );
    let target = remote.ip.to_string();
    wait_until(
        &format!(
            "{} (host namespace) → pod {target} on {}",
            a.name, tb.nodes[1].name
        ),
        Duration::from_secs(10),
        || {
            in_ns(&a.netns, "ping", &["-c", "1", "-W", "1", &target])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        },
    );
}

fn tcp_echo(client: &Pod, server: &Pod, port: u16, payload: Vec<u8>) -> Vec<u8> {
    let listener = with_netns(&server.netns, move || {
        let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(&got).unwrap();
    });
    std::thread::sleep(Duration::from_millis(200));
    let dst = SocketAddr::new(server.ip.into(), port);
    let reply = with_netns(&client.netns, move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&payload).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        back
    })
    .join()
    .unwrap()
    .unwrap();
    listener.join().unwrap().unwrap();
    reply
}

fn udp_echo(client: &Pod, server: &Pod, port: u16) -> Vec<u8> {
    let srv = with_netns(&server.netns, move || {
        let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) = s.recv_from(&mut buf).unwrap();
        s.send_to(&buf[..n], from).unwrap();
    });
    std::thread::sleep(Duration::from_millis(200));
    let dst = SocketAddr::new(server.ip.into(), port);
    let got = with_netns(&client.netns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut msg = MARKER.to_vec();
        msg.extend_from_slice(b"-udp");
        s.send_to(&msg, dst).unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = s.recv_from(&mut buf).unwrap();
        buf[..n].to_vec()
    })
    .join()
    .unwrap()
    .unwrap();
    srv.join().unwrap().unwrap();
    got
}

/// Frames of a classic pcap file (Ethernet link type).
fn pcap_frames(bytes: &[u8]) -> Vec<&[u8]> {
    assert!(bytes.len() >= 24, "capture file too short");
    let magic = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    assert!(
        magic == 0xa1b2_c3d4 || magic == 0xa1b2_3c4d,
        "not a little-endian pcap file"
    );
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let incl = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let end = (at + 16 + incl).min(bytes.len());
        out.push(&bytes[at + 16..end]);
        at = end;
    }
    out
}

#[test]
fn three_nodes_encrypt_icmp_tcp_udp_between_pods() {
    if !require_privileges("mesh namespace test") {
        return;
    }
    require_tool("ping");
    require_tool("tcpdump");
    let tb = Testbed::new(&format!("m{}", std::process::id() % 10000), 3, 2).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (dir, work) = (tmp.path().join("nodes"), tmp.path().join("work"));
    std::fs::create_dir_all(&dir).unwrap();
    let agents = start_mesh(&tb, &dir, &work);

    // Key file 0600; state file contents.
    for a in &agents {
        assert_eq!(
            std::fs::metadata(a.key_file())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let s = a.state().unwrap();
        assert_eq!(s.pod_cidrs, vec![a.node.pod_cidr.clone()]);
        assert_eq!(s.mtu, 1420, "veth underlay MTU 1500 - 80");
        assert_eq!(s.wg_interface, "kfwg0");
        assert_eq!(s.cluster_cidrs, ["10.244.0.0/16"], "as configured");
    }

    // Capture the underlay while pods talk.
    let pcap = tmp.path().join("underlay.pcap");
    let mut dump = Proc(
        in_ns(
            &tb.underlay,
            "tcpdump",
            &[
                "-i",
                "br0",
                "-n",
                "-U",
                "-s",
                "0",
                "-w",
                pcap.to_str().unwrap(),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(1500));

    let (p1, p2, p3) = (
        &tb.nodes[0].pods[0],
        &tb.nodes[1].pods[1],
        &tb.nodes[2].pods[0],
    );
    let out = tb.ping(p1, p2, 3, "0.2").unwrap();
    assert!(out.contains("3 received"), "{out}");
    let out = ns_output(
        &p3.netns,
        "ping",
        &[
            "-n",
            "-c",
            "2",
            "-s",
            "1300",
            "-p",
            "4b4954464c454554",
            &p1.ip.to_string(),
        ],
    )
    .unwrap();
    assert!(out.contains("2 received"), "{out}");
    let payload: Vec<u8> = MARKER.iter().copied().cycle().take(300_000).collect();
    assert!(
        tcp_echo(p1, p2, 7000, payload.clone()) == payload,
        "TCP echo across nodes 1→2"
    );
    assert!(
        tcp_echo(p3, p1, 7001, payload.clone()) == payload,
        "TCP echo across nodes 3→1"
    );
    let got = udp_echo(p2, p3, 7002);
    assert!(got.starts_with(MARKER), "UDP echo across nodes 2→3");

    std::thread::sleep(Duration::from_millis(500));
    dump.stop();
    let bytes = std::fs::read(&pcap).unwrap();
    let frames = pcap_frames(&bytes);
    let (mut wg, mut wg_bytes) = (0, 0);
    for (i, f) in frames.iter().enumerate() {
        assert!(
            !f.windows(MARKER.len()).any(|w| w == MARKER),
            "frame {i} on the underlay carries the plaintext marker"
        );
        assert!(
            !f.windows(8).any(|w| w == b"KITFLEET"),
            "frame {i} carries the ping pattern in clear"
        );
        match u16::from_be_bytes([f[12], f[13]]) {
            0x0800 => {
                let ihl = usize::from(f[14] & 0xf) * 4;
                let proto = f[14 + 9];
                if proto == 2 && f[14 + 16] >= 224 {
                    continue; // IGMP membership reports of the namespaces' interfaces
                }
                let l4 = 14 + ihl;
                let (sp, dp) = (
                    u16::from_be_bytes([f[l4], f[l4 + 1]]),
                    u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]),
                );
                assert!(
                    proto == 17 && (sp == 51820 || dp == 51820),
                    "frame {i}: IPv4 proto {proto} {sp}→{dp} is not WireGuard"
                );
                assert!(
                    f[l4 + 8] <= 4 && f[l4 + 9..l4 + 12] == [0, 0, 0],
                    "frame {i}: not a WireGuard message"
                );
                wg += 1;
                wg_bytes += f.len();
            }
            0x0806 => {} // ARP
            0x86dd => {
                // ND and MLD only (MLD reports come behind a hop-by-hop header).
                let next = if f[14 + 6] == 0 {
                    f[14 + 40]
                } else {
                    f[14 + 6]
                };
                assert_eq!(next, 58, "frame {i}: IPv6 other than ICMPv6 (ND/MLD)");
            }
            other => panic!("frame {i}: unexpected ethertype {other:#06x}"),
        }
    }
    // Four 300 kB TCP transfers cross the underlay (GSO trains show up as large frames).
    assert!(
        wg_bytes > 1_000_000,
        "only {wg_bytes} bytes of WireGuard captured: did the traffic cross the underlay?"
    );
    eprintln!(
        "underlay capture: {} frames, {wg} WireGuard UDP ({wg_bytes} bytes), no plaintext marker",
        frames.len()
    );

    for mut a in agents {
        a.stop();
        assert!(
            !a.state().unwrap().mesh_healthy,
            "state file says unhealthy after stop"
        );
    }
}

#[test]
fn key_rotation_and_agent_restart_keep_pods_connected() {
    if !require_privileges("mesh namespace test") {
        return;
    }
    require_tool("ping");
    let tb = Testbed::new(&format!("r{}", std::process::id() % 10000), 2, 1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (dir, work) = (tmp.path().join("nodes"), tmp.path().join("work"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut agents = start_mesh(&tb, &dir, &work);
    let (p1, p2) = (&tb.nodes[0].pods[0], &tb.nodes[1].pods[0]);

    // Key rotation on node2: the file changes, the agent re-keys and re-publishes, node1 follows.
    let old = published_key(&dir, "node2").unwrap();
    let out = std::process::Command::new(AGENT)
        .args([
            "rotate-key",
            "--key-file",
            agents[1].key_file().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let new = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_ne!(new, old);
    let took = wait_until(
        "node2's new key in its annotation",
        Duration::from_secs(10),
        || published_key(&dir, "node2").as_deref() == Some(new.as_str()),
    );
    let healed = wait_until(
        "pods to talk again after the rotation",
        Duration::from_secs(15),
        || pings(&tb, p1, p2),
    );
    eprintln!("rotation: annotation updated after {took:?}, traffic flowing {healed:?} later");
    let payload: Vec<u8> = MARKER.iter().copied().cycle().take(100_000).collect();
    assert!(tcp_echo(p1, p2, 7100, payload.clone()) == payload);

    // Agent restart on node2: the TUN and its routes persist while the agent is down.
    agents[1].stop();
    let links = ns_output(&tb.nodes[1].netns, "ip", &["-o", "link", "show", "kfwg0"]).unwrap();
    assert!(links.contains("kfwg0"), "persistent TUN gone: {links}");
    let routes = ns_output(&tb.nodes[1].netns, "ip", &["route", "show", "dev", "kfwg0"]).unwrap();
    assert!(
        routes.contains(&tb.nodes[0].pod_cidr),
        "mesh route gone while the agent was down: {routes}"
    );
    let down_at = Instant::now();
    agents[1].spawn();
    wait_until(
        "pods to talk again after the agent restart",
        Duration::from_secs(15),
        || pings(&tb, p1, p2),
    );
    eprintln!(
        "restart: traffic flowing {:?} after the new agent started",
        down_at.elapsed()
    );
    assert_eq!(
        published_key(&dir, "node2").as_deref(),
        Some(new.as_str()),
        "restart keeps the key"
    );
    assert!(tcp_echo(p2, p1, 7101, payload.clone()) == payload);

    // A Node leaving the directory removes the peer and its route.
    std::fs::remove_file(dir.join("node2.yaml")).unwrap();
    wait_until(
        "node1 to drop node2's route",
        Duration::from_secs(10),
        || {
            !ns_output(&tb.nodes[0].netns, "ip", &["route", "show", "dev", "kfwg0"])
                .unwrap()
                .contains(&tb.nodes[1].pod_cidr)
        },
    );
    assert!(!pings(&tb, p1, p2));
    for a in &mut agents {
        a.stop();
    }
}

/// The `kitfleet-wg` plugin binary next to this test's target directory (built by
/// `cargo test --workspace` or `cargo build -p kitfleet-cni-wg`), or `KITFLEET_WG_PLUGIN`.
fn plugin_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KITFLEET_WG_PLUGIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("kitfleet-wg");
    p.exists().then_some(p)
}

/// Runs the plugin like a CNI runtime, from inside the node's namespace.
fn cni(
    plugin: &Path,
    node: &NodeNs,
    command: &str,
    id: &str,
    pod_ns: &str,
    conf: &serde_json::Value,
) -> serde_json::Value {
    let mut child = in_ns(&node.netns, plugin.to_str().unwrap(), &[])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{pod_ns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kitfleet-wg {command}: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn pods_wired_by_the_kitfleet_wg_plugin_talk_across_nodes() {
    if !require_privileges("mesh namespace test") {
        return;
    }
    require_tool("ping");
    let Some(plugin) = plugin_binary() else {
        eprintln!(
            "skipping: kitfleet-wg not built (cargo build -p kitfleet-cni-wg, or set KITFLEET_WG_PLUGIN)"
        );
        return;
    };
    let mut tb = Testbed::new(&format!("c{}", std::process::id() % 10000), 2, 0).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (dir, work) = (tmp.path().join("nodes"), tmp.path().join("work"));
    std::fs::create_dir_all(&dir).unwrap();
    tb.write_manifests(&dir).unwrap();
    let nodes = tb.nodes.clone();
    let mut agents: Vec<Agent> = nodes.iter().map(|n| Agent::start(n, &dir, &work)).collect();
    wait_until("healthy state files", Duration::from_secs(20), || {
        agents.iter().all(|a| {
            a.state().is_some_and(|s| s.mesh_healthy) && published_key(&dir, &a.node.name).is_some()
        })
    });
    // Two pods per node, wired by the plugin from each node's state file.
    let mut pods: Vec<(usize, String, Pod)> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for p in 0..2 {
            let ns = format!("{}p{p}", n.netns);
            tb.add_namespace(&ns).unwrap();
            let conf = serde_json::json!({
                "cniVersion": "1.0.0", "name": "kitfleet", "type": "kitfleet-wg",
                "stateFile": agents[i].state_file(), "dataDir": work.join(format!("ipam-{}", n.name)),
                "masquerade": false,
            });
            let id = format!("ctr-{}-{p}", n.name);
            let result = cni(&plugin, n, "ADD", &id, &ns, &conf);
            let addr = result["ips"][0]["address"]
                .as_str()
                .expect("ADD result has an address");
            let ip: std::net::Ipv4Addr = addr.split('/').next().unwrap().parse().unwrap();
            assert!(
                n.pod_cidr.starts_with(&format!(
                    "{}.{}.{}.",
                    ip.octets()[0],
                    ip.octets()[1],
                    ip.octets()[2]
                )),
                "{ip} in {}",
                n.pod_cidr
            );
            let mtu = ns_output(&ns, "cat", &["/sys/class/net/eth0/mtu"]).unwrap();
            assert_eq!(mtu.trim(), "1420", "pod MTU from the agent's state file");
            pods.push((i, id, Pod { netns: ns, ip }));
        }
    }
    for (_, _, a) in pods.iter().filter(|p| p.0 == 0) {
        for (_, _, b) in pods.iter().filter(|p| p.0 == 1) {
            wait_until(
                &format!("{} → {}", a.ip, b.ip),
                Duration::from_secs(15),
                || pings(&tb, a, b),
            );
        }
    }
    let payload: Vec<u8> = MARKER.iter().copied().cycle().take(200_000).collect();
    assert!(
        tcp_echo(&pods[0].2, &pods[3].2, 7200, payload.clone()) == payload,
        "TCP between plugin-wired pods"
    );
    assert!(
        udp_echo(&pods[2].2, &pods[1].2, 7201).starts_with(MARKER),
        "UDP between plugin-wired pods"
    );
    for (i, id, pod) in &pods {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "kitfleet", "type": "kitfleet-wg",
            "stateFile": agents[*i].state_file(), "dataDir": work.join(format!("ipam-{}", nodes[*i].name)),
            "masquerade": false,
        });
        cni(&plugin, &nodes[*i], "DEL", id, &pod.netns, &conf);
    }
    for a in &mut agents {
        a.stop();
    }
}
