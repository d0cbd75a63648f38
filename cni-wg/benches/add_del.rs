//! ADD and DEL latency of `kitfleet-wg` next to Debian's reference `bridge` + `host-local`,
//! both exec'd the same way (from a simulated node namespace, config on stdin), one run, side
//! by side. Prints a table. Needs root; the reference plugins come from Debian's
//! `containernetworking-plugins` (/usr/lib/cni).
//!
//! `cargo bench -p kitfleet-cni-wg --bench add_del [-- ITERATIONS]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const REF_DIR: &str = "/usr/lib/cni";

struct Sample {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

fn measure(bin: &str, node: &Netns, conf: &Value, iterations: usize) -> Sample {
    let mut s = Sample {
        add: vec![],
        del: vec![],
    };
    let ns = node.file();
    for i in 0..iterations + 3 {
        let pod = Netns::new("bench");
        let id = format!("bench{i}");
        let path = pod.path();
        let t = Instant::now();
        let out = run_plugin(
            bin,
            Some(&ns),
            &Invocation::new("ADD", conf.clone()).attach(&id, &path),
        );
        let add = t.elapsed();
        let res = out.expect_ok().clone();
        let t = Instant::now();
        run_plugin(
            bin,
            Some(&ns),
            &Invocation::new("DEL", with_prev(conf.clone(), &res)).attach(&id, &path),
        )
        .expect_ok();
        let del = t.elapsed();
        if i >= 3 {
            // The first runs warm caches (and apply the masquerade table once).
            s.add.push(add);
            s.del.push(del);
        }
    }
    s
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
    let iterations: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(40);
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
    let rows = [
        (
            "kitfleet-wg (masquerade on)",
            measure(PLUGIN, &node.ns, &ours, iterations),
        ),
        (
            "kitfleet-wg (masquerade off)",
            measure(PLUGIN, &node.ns, &ours_nomasq, iterations),
        ),
        (
            "bridge + host-local (Debian)",
            measure(&bridge, &ref_node, &reference, iterations),
        ),
    ];
    let total = |s: &Sample| stats(&s.add).0 + stats(&s.del).0;
    let base = total(&rows[2].1);
    println!(
        "CNI ADD/DEL latency, {iterations} sequential attachments each, ms (mean / median / p90)"
    );
    println!(
        "{:<30} {:>22} {:>22} {:>10} {:>8}",
        "plugin", "ADD", "DEL", "ADD+DEL", "ratio"
    );
    for (name, s) in &rows {
        let (a, d) = (stats(&s.add), stats(&s.del));
        let f = |x: (f64, f64, f64)| format!("{:.2} / {:.2} / {:.2}", x.0, x.1, x.2);
        println!(
            "{name:<30} {:>22} {:>22} {:>10.2} {:>7.2}x",
            f(a),
            f(d),
            total(s),
            total(s) / base
        );
    }
    println!("floor: ratio <= 0.50x, goal: <= 0.25x (ratio = mean ADD+DEL / bridge+host-local's)");
}
