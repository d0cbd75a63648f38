//! ADD and DEL latency of `kitfleet-wg` next to Debian's reference `bridge` + `host-local`,
//! both exec'd the same way (from a simulated node namespace, config on stdin), one run, side
//! by side. Prints a table. Needs root; the reference plugins come from Debian's
//! `containernetworking-plugins` (/usr/lib/cni).
//!
//! `cargo bench -p kitfleet-cni-wg --bench add_del [-- ITERATIONS]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::time::{Duration, Instant};

use kitfleet_netlink::Netlink;

use common::*;
use serde_json::{Value, json};

const REF_DIR: &str = "/usr/lib/cni";

#[derive(Default)]
struct Sample {
    add: Vec<Duration>,
    del: Vec<Duration>,
    /// From the start of DEL until the host veth is no longer visible (kitfleet-wg deletes it
    /// in a detached reaper; bridge deletes synchronously, so this equals DEL there).
    gone: Vec<Duration>,
}

struct Plugin {
    name: &'static str,
    bin: String,
    node: File,
    conf: Value,
    /// Whether the first result interface is a host veth whose deletion is deferred.
    deferred: bool,
    sample: Sample,
}

/// One ADD + DEL of a fresh pod namespace.
fn once(p: &mut Plugin, i: usize, warm: bool, nl: &mut Netlink) {
    let pod = Netns::new("bench");
    let id = format!("bench{i}");
    let path = pod.path();
    let t = Instant::now();
    let out = run_plugin(
        &p.bin,
        Some(&p.node),
        &Invocation::new("ADD", p.conf.clone()).attach(&id, &path),
    );
    let add = t.elapsed();
    let res = out.expect_ok().clone();
    let t = Instant::now();
    run_plugin(
        &p.bin,
        Some(&p.node),
        &Invocation::new("DEL", with_prev(p.conf.clone(), &res)).attach(&id, &path),
    )
    .expect_ok();
    let del = t.elapsed();
    if p.deferred {
        let host_if = res["interfaces"][0]["name"].as_str().unwrap();
        while nl.link(host_if).unwrap().is_some() {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let gone = t.elapsed();
    if warm {
        p.sample.add.push(add);
        p.sample.del.push(del);
        p.sample.gone.push(gone);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn stats(v: &[Duration]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort();
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
    (mean, ms(v[v.len() / 2]), ms(v[v.len() * 9 / 10]))
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test --all-targets` this runs as a 1-round smoke.
    let benching = std::env::args().any(|a| a == "--bench");
    let iterations: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if benching { 40 } else { 1 });
    if !nix::unistd::geteuid().is_root() {
        eprintln!("add_del bench needs root (network namespaces)");
        std::process::exit(if std::env::var("CI").as_deref() == Ok("true") {
            1
        } else {
            0
        });
    }
    let bridge = format!("{REF_DIR}/bridge");
    if !std::path::Path::new(&bridge).exists() {
        eprintln!("{bridge} missing: apt-get install containernetworking-plugins");
        std::process::exit(1);
    }
    let node = Node::new("10.244.20.0/24");
    let mut ours = node.conf("1.0.0");
    ours["masquerade"] = json!(true);
    let mut ours_nomasq = node.conf("1.0.0");
    ours_nomasq["masquerade"] = json!(false);
    let ref_node = Netns::new("refnode");
    let ref_dir = tempfile::tempdir().unwrap();
    let reference = json!({
        "cniVersion": "1.0.0", "name": "kfwbench", "type": "bridge", "bridge": "kfwbr0",
        "isGateway": true, "ipMasq": false,
        "ipam": {"type": "host-local", "subnet": "10.250.0.0/24", "dataDir": ref_dir.path()},
    });
    let mut plugins = [
        Plugin {
            name: "kitfleet-wg (masquerade on)",
            bin: PLUGIN.into(),
            node: node.ns.file(),
            conf: ours,
            deferred: true,
            sample: Sample::default(),
        },
        Plugin {
            name: "kitfleet-wg (masquerade off)",
            bin: PLUGIN.into(),
            node: node.ns.file(),
            conf: ours_nomasq,
            deferred: true,
            sample: Sample::default(),
        },
        Plugin {
            name: "bridge + host-local (Debian)",
            bin: bridge,
            node: ref_node.file(),
            conf: reference,
            deferred: false,
            sample: Sample::default(),
        },
    ];
    let mut nl = kitfleet_cni_wg::netns::run_in(&node.ns.file(), Netlink::open)
        .unwrap()
        .unwrap();
    // Interleaved, so background load on this shared machine hits every plugin alike; the first
    // 3 rounds warm caches (and apply the masquerade table once).
    for i in 0..iterations + 3 {
        for p in plugins.iter_mut() {
            once(p, i, i >= 3, &mut nl);
        }
    }
    let mean_total = |s: &Sample| stats(&s.add).0 + stats(&s.del).0;
    let median_total = |s: &Sample| stats(&s.add).1 + stats(&s.del).1;
    let gone_total = |s: &Sample| stats(&s.add).0 + stats(&s.gone).0;
    let base = &plugins[2].sample;
    let (bm, bmed, bg) = (mean_total(base), median_total(base), gone_total(base));
    println!("CNI ADD/DEL latency, {iterations} interleaved rounds, ms (mean / median / p90)");
    println!(
        "{:<30} {:>22} {:>22} {:>22} {:>9} {:>9} {:>11}",
        "plugin", "ADD", "DEL", "DEL until link gone", "ratio", "ratio", "ratio"
    );
    println!(
        "{:<30} {:>22} {:>22} {:>22} {:>9} {:>9} {:>11}",
        "", "", "", "", "(mean)", "(median)", "(link gone)"
    );
    for p in &plugins {
        let s = &p.sample;
        let f = |x: (f64, f64, f64)| format!("{:.2} / {:.2} / {:.2}", x.0, x.1, x.2);
        println!(
            "{:<30} {:>22} {:>22} {:>22} {:>8.2}x {:>8.2}x {:>10.2}x",
            p.name,
            f(stats(&s.add)),
            f(stats(&s.del)),
            f(stats(&s.gone)),
            mean_total(s) / bm,
            median_total(s) / bmed,
            gone_total(s) / bg
        );
    }
    println!(
        "ratio = ADD+DEL of the plugin / ADD+DEL of bridge+host-local (mean, median, or ADD + DEL until the link is gone)"
    );
    println!("floor: <= 0.50x, goal: <= 0.25x");
}
