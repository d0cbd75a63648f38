//! STATUS (50: no state file or no podCIDR; 51: mesh down) and GC.

use std::collections::HashSet;

use super::{ipam, kernel, load_state, pod_cidr};
use crate::cni::config::{Attachment, NetConf};
use crate::cni::{CniError, code};
use crate::ipam::store::Store;
use crate::nft;
use kitfleet_netlink::Netlink;

pub(super) fn status(conf: &NetConf) -> Result<(), CniError> {
    let state = load_state(conf, code::NOT_AVAILABLE)?;
    let bounded = pod_cidr(conf, &state).map_err(|e| CniError::new(code::NOT_AVAILABLE, e.msg))?;
    if bounded.is_none() {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            "the node has no pod CIDR yet (node state podCIDRs is empty)",
        ));
    }
    if conf.masquerade && nft::nft_binary().is_none() {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            "masquerade is on but nft is not installed",
        ));
    }
    if let Some(why) = state.mesh_down(std::time::SystemTime::now()) {
        return Err(CniError::new(code::LIMITED_CONNECTIVITY, why));
    }
    Ok(())
}

pub(super) fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid: HashSet<Attachment> = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "cni.dev/valid-attachments: is required for GC",
            )
        })?
        .iter()
        .cloned()
        .collect();
    let store = Store::lock(&conf.data_dir, &conf.name).map_err(ipam)?;
    let mut nl = Netlink::open().map_err(kernel)?;
    let mut reclaimed = 0;
    for e in store.entries().map_err(ipam)? {
        if let Some(r) = &e.record {
            let att = Attachment {
                container_id: r.container_id.clone(),
                ifname: r.ifname.clone(),
            };
            if valid.contains(&att) {
                continue;
            }
            nl.delete_link(&r.host_if).map_err(kernel)?;
        }
        store.release_ip(e.ip).map_err(ipam)?;
        reclaimed += 1;
        tracing::info!(ip = %e.ip, record = ?e.record, "gc: reclaimed");
    }
    for d in store.dying().map_err(ipam)? {
        // A marker of another boot (or without one) names an ifindex that means nothing now.
        let deleted = d.this_boot
            && d.index > 0
            && nl
                .delete_link_checked(d.index, &d.host_if, "veth")
                .map_err(kernel)?;
        let _ = std::fs::remove_file(&d.path);
        tracing::info!(host_if = %d.host_if, index = d.index, this_boot = d.this_boot, deleted,
            "gc: finished a pending link deletion");
    }
    drop(store);
    if conf.masquerade {
        reapply_masquerade(conf);
    }
    tracing::info!(reclaimed, valid = valid.len(), "gc done");
    Ok(())
}

/// GC is periodic: it re-applies the masquerade table in case it was flushed.
fn reapply_masquerade(conf: &NetConf) {
    let Ok(state) = load_state(conf, code::NOT_AVAILABLE) else {
        return;
    };
    let Ok(Some(cidr)) = pod_cidr(conf, &state) else {
        return;
    };
    let cluster = state.cluster_cidrs_v4();
    let marker = conf.data_dir.join(&conf.name).join("masquerade.applied");
    let applied = nft::script(&conf.name, cidr, &cluster)
        .and_then(|s| nft::ensure(&conf.name, &s, &marker, true));
    if let Err(e) = applied {
        tracing::warn!(error = %e, "gc: masquerade re-apply failed");
    }
}
