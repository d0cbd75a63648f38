//! Masquerade of pod egress leaving the cluster CIDRs, with nftables.
//!
//! One table per network, `ip kitfleet_wg_<name>` (the network name verbatim: its characters,
//! `[A-Za-z0-9_.-]`, are all valid in an nft identifier, so distinct networks never share a
//! table), replaced atomically (one `nft -f` transaction). ADD applies it only when a marker in
//! the IPAM directory says this exact ruleset has been applied in this network namespace since
//! boot *and* the table the kernel holds is still the one it created (same handle, asked over
//! netlink), so the common ADD costs no `nft` exec yet a flushed ruleset is restored; GC
//! re-applies it unconditionally.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use kitfleet_netlink as netlink;

/// Masquerade errors.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` was not found.
    #[error("masquerade: nft not found (install nftables or set \"masquerade\": false)")]
    NotFound,
    /// `nft` failed.
    #[error("masquerade: nft -f failed: {0}")]
    Failed(String),
    /// The ruleset would not be bounded by the cluster CIDRs.
    #[error("masquerade: {0}")]
    Unbounded(String),
}

/// The table name for a network: `kitfleet_wg_` + the name as is. Injective; the caller passes
/// a validated network name (`[A-Za-z0-9][A-Za-z0-9_.-]*`, checked again by [`script`]).
pub fn table_name(network: &str) -> String {
    format!("kitfleet_wg_{network}")
}

/// Destinations that are never masqueraded: the cluster CIDRs, with any CIDR covered by another
/// removed (nft interval sets reject overlaps). The node's pod CIDR lies inside them.
pub fn exclusions(cluster: &[Ipv4Net]) -> Vec<Ipv4Net> {
    let mut all: Vec<Ipv4Net> = cluster.to_vec();
    all.sort_by_key(|c| (c.prefix_len(), c.network()));
    all.dedup();
    let mut out: Vec<Ipv4Net> = Vec::new();
    for c in all {
        if !out.iter().any(|o| o.contains(&c)) {
            out.push(c);
        }
    }
    out.sort_by_key(|c| c.network());
    out
}

/// The nft script: creates the table if missing, deletes it, and recreates it, in one
/// transaction. Refused unless `pod` lies inside a cluster CIDR and no cluster CIDR is `/0`
/// (the set must never cover everything), and for a name nft would not take verbatim.
pub fn script(network: &str, pod: Ipv4Net, cluster: &[Ipv4Net]) -> Result<String, NftError> {
    let name_ok = network
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && network
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !name_ok {
        return Err(NftError::Unbounded(format!(
            "network name {network:?} is not [A-Za-z0-9][A-Za-z0-9_.-]*"
        )));
    }
    if let Some(all) = cluster.iter().find(|c| c.prefix_len() == 0) {
        return Err(NftError::Unbounded(format!(
            "cluster CIDR {all} would exempt every destination"
        )));
    }
    if !cluster.iter().any(|c| c.contains(&pod)) {
        return Err(NftError::Unbounded(format!(
            "pod CIDR {pod} is not inside the cluster CIDRs"
        )));
    }
    let t = table_name(network);
    let ex: Vec<String> = exclusions(cluster).iter().map(|c| c.to_string()).collect();
    let mut s = String::new();
    let _ = writeln!(s, "table ip {t}\ndelete table ip {t}\ntable ip {t} {{");
    let _ = writeln!(
        s,
        "\tset cluster {{ type ipv4_addr; flags interval; elements = {{ {} }} }}",
        ex.join(", ")
    );
    let _ = writeln!(
        s,
        "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;"
    );
    let _ = writeln!(
        s,
        "\t\tip saddr {pod} ip daddr != @cluster masquerade\n\t}}\n}}"
    );
    Ok(s)
}

/// The `nft` binary: `$PATH` first, then the usual sbin directories.
pub fn nft_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
}

/// Runs `nft -f -` with `script`.
pub fn apply(script: &str) -> Result<(), NftError> {
    let bin = nft_binary().ok_or(NftError::NotFound)?;
    let mut child = Command::new(bin)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NftError::Failed(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NftError::Failed(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NftError::Failed(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// A key for "this script in this network namespace since this boot".
fn marker_key(script: &str) -> String {
    use sha2::{Digest, Sha256};
    let boot = crate::state::boot_id();
    let ns = std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| (m.dev(), m.ino()))
        .unwrap_or_default();
    hex::encode(Sha256::digest(format!("{script}\n{boot}\n{ns:?}")))
}

/// The marker's content: the key, a space, and the handle of the table the kernel gave us.
fn marker_content(key: &str, handle: Option<u64>) -> String {
    match handle {
        Some(h) => format!("{key} {h}"),
        None => key.to_string(),
    }
}

/// The handle of table `ip <table>` in this network namespace (`None`: no such table, or the
/// question failed, which makes the caller re-apply).
fn table_handle(table: &str) -> Option<u64> {
    match netlink::nft_table_handle(table) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask the kernel for the masquerade table");
            None
        }
    }
}

/// Applies `script` for `network` unless the marker file says it already is and the kernel
/// still holds the table it created (or `force`). Returns whether it applied.
pub fn ensure(network: &str, script: &str, marker: &Path, force: bool) -> Result<bool, NftError> {
    let key = marker_key(script);
    let table = table_name(network);
    if !force
        && let Ok(m) = std::fs::read_to_string(marker)
        && m.split_once(' ').is_some_and(|(k, _)| k == key)
        && m == marker_content(&key, table_handle(&table))
    {
        return Ok(false);
    }
    apply(script)?;
    let content = marker_content(&key, table_handle(&table));
    let tmp = marker.with_extension(format!("tmp.{}", std::process::id()));
    if std::fs::write(&tmp, content).is_ok() && std::fs::rename(&tmp, marker).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn exclusions_table() {
        let rows: &[(&[&str], &[&str])] = &[
            (&["10.244.0.0/16"], &["10.244.0.0/16"]),
            (
                &["10.244.2.0/24", "10.244.1.0/24"],
                &["10.244.1.0/24", "10.244.2.0/24"],
            ),
            (
                &["10.96.0.0/12", "10.244.0.0/16", "10.244.3.0/24"],
                &["10.96.0.0/12", "10.244.0.0/16"],
            ),
        ];
        for (cluster, want) in rows {
            let cl: Vec<_> = cluster.iter().map(|s| c(s)).collect();
            let got: Vec<String> = exclusions(&cl).iter().map(|c| c.to_string()).collect();
            assert_eq!(got, *want, "{cluster:?}");
        }
    }

    #[test]
    fn script_shape() {
        let s = script("my-net.1", c("10.244.1.0/24"), &[c("10.244.0.0/16")]).unwrap();
        assert!(
            s.starts_with("table ip kitfleet_wg_my-net.1\ndelete table ip kitfleet_wg_my-net.1\n"),
            "{s}"
        );
        assert!(s.contains("elements = { 10.244.0.0/16 }"), "{s}");
        assert!(
            s.contains("ip saddr 10.244.1.0/24 ip daddr != @cluster masquerade"),
            "{s}"
        );
    }

    #[test]
    fn table_names_are_injective() {
        let names = ["a-b", "a_b", "a.b", "ab", "a__b", "a-_b"];
        let tables: std::collections::HashSet<String> =
            names.iter().map(|n| table_name(n)).collect();
        assert_eq!(tables.len(), names.len(), "{tables:?}");
    }

    #[test]
    fn script_is_bounded_by_the_cluster_cidrs() {
        let cl = [c("10.244.0.0/16")];
        for (pod, cluster) in [
            ("0.0.0.0/0", &cl[..]),
            ("10.245.1.0/24", &cl[..]),
            ("10.244.0.0/15", &cl[..]),
            ("10.244.1.0/24", &[][..]),
            ("10.244.1.0/24", &[c("0.0.0.0/0")][..]),
        ] {
            let e = script("n", c(pod), cluster).unwrap_err().to_string();
            assert!(e.starts_with("masquerade: "), "{pod} {cluster:?}: {e}");
        }
        assert!(script("a b", c("10.244.1.0/24"), &cl).is_err());
    }
}
