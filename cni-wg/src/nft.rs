//! Masquerade of pod egress leaving the cluster CIDRs, with nftables.
//!
//! One table per network, `ip kitfleet_wg_<name>`, replaced atomically (one `nft -f`
//! transaction). ADD applies it only when a marker in the IPAM directory says this exact ruleset
//! has not been applied in this network namespace since boot, so the common ADD costs no `nft`
//! exec; GC re-applies it unconditionally.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cidr::Ipv4Cidr;

/// Masquerade errors.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` was not found.
    #[error("masquerade: nft not found (install nftables or set \"masquerade\": false)")]
    NotFound,
    /// `nft` failed.
    #[error("masquerade: nft -f failed: {0}")]
    Failed(String),
}

/// The table name for a network (`nft` identifiers: letters, digits, `_`).
pub fn table_name(network: &str) -> String {
    let safe: String = network
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("kitfleet_wg_{safe}")
}

/// Destinations that are never masqueraded: the cluster CIDRs plus the node's pod CIDR, with
/// any CIDR covered by another removed (nft interval sets reject overlaps).
pub fn exclusions(pod: Ipv4Cidr, cluster: &[Ipv4Cidr]) -> Vec<Ipv4Cidr> {
    let mut all: Vec<Ipv4Cidr> = cluster.iter().copied().chain([pod]).collect();
    all.sort_by_key(|c| (c.prefix(), c.network()));
    all.dedup();
    let mut out: Vec<Ipv4Cidr> = Vec::new();
    for c in all {
        if !out.iter().any(|o| o.contains(c.network())) {
            out.push(c);
        }
    }
    out.sort_by_key(|c| c.network());
    out
}

/// The nft script: creates the table if missing, deletes it, and recreates it, in one transaction.
pub fn script(network: &str, pod: Ipv4Cidr, cluster: &[Ipv4Cidr]) -> String {
    let t = table_name(network);
    let ex: Vec<String> = exclusions(pod, cluster)
        .iter()
        .map(|c| c.to_string())
        .collect();
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
    s
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
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let ns = std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| (m.dev(), m.ino()))
        .unwrap_or_default();
    hex::encode(Sha256::digest(format!("{script}\n{boot}\n{ns:?}")))
}

/// Applies `script` unless the marker file says it already is (or `force`).
pub fn ensure(script: &str, marker: &Path, force: bool) -> Result<bool, NftError> {
    let key = marker_key(script);
    if !force && std::fs::read_to_string(marker).is_ok_and(|m| m == key) {
        return Ok(false);
    }
    apply(script)?;
    let tmp = marker.with_extension(format!("tmp.{}", std::process::id()));
    if std::fs::write(&tmp, &key).is_ok() && std::fs::rename(&tmp, marker).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn exclusions_table() {
        let rows: &[(&str, &[&str], &[&str])] = &[
            ("10.244.1.0/24", &[], &["10.244.1.0/24"]),
            ("10.244.1.0/24", &["10.244.0.0/16"], &["10.244.0.0/16"]),
            (
                "10.244.1.0/24",
                &["10.244.2.0/24", "10.244.1.0/24"],
                &["10.244.1.0/24", "10.244.2.0/24"],
            ),
            (
                "10.244.1.0/24",
                &["10.96.0.0/12", "10.244.0.0/16", "10.244.3.0/24"],
                &["10.96.0.0/12", "10.244.0.0/16"],
            ),
        ];
        for (pod, cluster, want) in rows {
            let cl: Vec<_> = cluster.iter().map(|s| c(s)).collect();
            let got: Vec<String> = exclusions(c(pod), &cl)
                .iter()
                .map(|c| c.to_string())
                .collect();
            assert_eq!(got, *want, "{pod} {cluster:?}");
        }
    }

    #[test]
    fn script_shape() {
        let s = script("my-net.1", c("10.244.1.0/24"), &[c("10.244.0.0/16")]);
        assert!(
            s.starts_with("table ip kitfleet_wg_my_net_1\ndelete table ip kitfleet_wg_my_net_1\n"),
            "{s}"
        );
        assert!(s.contains("elements = { 10.244.0.0/16 }"), "{s}");
        assert!(
            s.contains("ip saddr 10.244.1.0/24 ip daddr != @cluster masquerade"),
            "{s}"
        );
    }
}
