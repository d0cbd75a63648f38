//! Fuzz checks for `kitfleet-cni-wg` (the CNI plugin): the stdin network configuration with the
//! `CNI_*` environment, and the node state file the node agent writes.

use std::time::{Duration, UNIX_EPOCH};

use kitfleet_cni_wg::cni::{config, env, result};
use kitfleet_cni_wg::state::NodeState;
use kitfleet_cni_wg::{ipam, plugin};

/// A fuzz target: its name and its check.
pub type Target = (&'static str, fn(&[u8]));

/// Every target of this file, for the corpus replay.
pub const TARGETS: &[Target] = &[("cni_config", cni_config), ("state_file", state_file)];

/// Input layout: `KEY=VALUE` lines (the `CNI_*` environment), a NUL byte, then stdin (the
/// network configuration). Without a NUL, everything is stdin and the environment is empty.
pub fn cni_config(data: &[u8]) {
    let (vars, stdin) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let vars = String::from_utf8_lossy(vars);
    let get = |k: &str| {
        vars.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.to_string())
    };
    let env = env::from_vars(get);
    let _ = plugin::error_version(stdin);
    let conf = config::parse(stdin);
    if let Ok(c) = &conf {
        assert_eq!(
            config::peek_version(stdin),
            Some(c.cni_version),
            "peek_version disagrees with parse"
        );
        for p in [Some(&c.state_file), Some(&c.data_dir), c.log_file.as_ref()]
            .into_iter()
            .flatten()
        {
            assert!(p.is_absolute(), "accepted a relative path {}", p.display());
            assert!(
                !p.components().any(|c| c.as_os_str() == ".."),
                "accepted '..' in {}",
                p.display()
            );
        }
        assert!(!c.name.is_empty() && !c.name.contains('/') && c.name != "." && c.name != "..");
        if let Some(cidr) = c.pod_cidr {
            assert_eq!(
                cidr.to_string().parse().ok(),
                Some(cidr),
                "podCIDR does not re-parse"
            );
        }
    }
    let Ok(env) = env else {
        return;
    };
    if !env.container_id.is_empty() && !env.ifname.is_empty() {
        let host = ipam::host_if_name(&env.container_id, &env.ifname);
        env::validate_ifname(&host).unwrap_or_else(|e| panic!("host interface name {host:?}: {e}"));
    }
    if let Ok(c) = &conf
        && let Some(prev) = &c.prev_result
    {
        let _ = result::expected(prev, &env.ifname, &env.netns);
        let mut r = prev.clone();
        result::normalize(&mut r, c.cni_version);
        let mut again = r.clone();
        result::normalize(&mut again, c.cni_version);
        assert_eq!(again, r, "normalize is not idempotent");
    }
}

/// The node state file as `NodeState::load` reads it (JSON, then `validate`), then what the plugin
/// derives from it, and the agent's own serialisation read back.
pub fn state_file(data: &[u8]) {
    let Ok(state) = serde_json::from_slice::<NodeState>(data) else {
        return;
    };
    let Ok(()) = state.validate() else {
        return;
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_796_000_000);
    let _ = state.mesh_down(now);
    let pod = state
        .pod_cidr_with(None)
        .expect("a valid state's own podCIDR is accepted");
    if let Some(p) = pod {
        assert!(
            state.within_cluster(p),
            "validated podCIDR {p} outside the cluster CIDRs"
        );
    }
    for c in state.cluster_cidrs_v4() {
        assert!(
            state.pod_cidr_with(Some(c)).is_ok(),
            "cluster CIDR {c} refused as an override"
        );
    }
    let json = serde_json::to_vec_pretty(&state).expect("a NodeState serialises");
    let back: NodeState = serde_json::from_slice(&json).expect("our own state file parses");
    assert_eq!(back, state, "state file round trip changed it");
    assert_eq!(back.validate(), Ok(()));
}
