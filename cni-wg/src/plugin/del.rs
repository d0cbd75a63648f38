//! DEL: stop the pod's traffic (remove the host route), release the address, and delete the
//! veth pair. Idempotent: a missing netns, a missing link, an empty CNI_NETNS or a missing
//! prevResult are all fine.
//!
//! Deleting a netdev makes the kernel wait for RCU grace periods (~15–30 ms here, nearly all
//! of it sleeping), so the link itself is deleted by a detached reaper process (this binary with
//! `KITFLEET_WG_REAP` set). A marker under `dataDir/<network>/dying/` records the pending
//! deletion: GC finishes it if the reaper died, and an ADD for the same attachment deletes a
//! leftover link synchronously first.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{ipam, kernel};
use crate::cni::config::NetConf;
use crate::cni::env::Env;
use crate::cni::{CniError, code};
use crate::ipam::host_if_name;
use crate::ipam::store::{Store, parse_dying};
use crate::state::boot_id;
use kitfleet_netlink::Netlink;

/// Environment variable that turns the binary into the link reaper (value: the ifindex).
pub const REAP_ENV: &str = "KITFLEET_WG_REAP";
/// The dying marker the reaper removes when done.
pub const REAP_MARKER_ENV: &str = "KITFLEET_WG_REAP_MARKER";

pub(super) fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let host_if = host_if_name(&env.container_id, &env.ifname);
    let mut nl = Netlink::open().map_err(kernel)?;
    let link = nl.link(&host_if).map_err(kernel)?;
    let store = Store::lock(&conf.data_dir, &conf.name).map_err(ipam)?;
    let held = store.find(&env.container_id, &env.ifname).map_err(ipam)?;
    if let (Some(l), Some(e)) = (&link, &held) {
        nl.delete_route(e.ip, 32, l.index).map_err(kernel)?;
    }
    let released = store
        .release(&env.container_id, &env.ifname)
        .map_err(ipam)?;
    let marker = match &link {
        Some(l) => Some(store.mark_dying(&host_if, l.index).map_err(ipam)?),
        None => None,
    };
    drop(store);
    if let (Some(marker), Some(l)) = (&marker, &link)
        && let Err(e) = spawn_reaper(l.index, marker)
    {
        tracing::warn!(error = %e, "cannot spawn the reaper; deleting the link inline");
        nl.delete_link(&host_if).map_err(kernel)?;
        let _ = std::fs::remove_file(marker);
    }
    let ips: Vec<String> = released.iter().map(|e| e.ip.to_string()).collect();
    tracing::info!(
        container = %env.container_id,
        ifname = %env.ifname,
        netns = ?env.netns,
        prev_result = conf.prev_result.is_some(),
        link_existed = marker.is_some(),
        released = ?ips,
        "deleted"
    );
    Ok(())
}

fn spawn_reaper(index: i32, marker: &Path) -> std::io::Result<()> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env_clear();
    super::fault::pass_reap_delay(&mut cmd);
    cmd.env(REAP_ENV, index.to_string())
        .env(REAP_MARKER_ENV, marker)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
}

/// Reaper mode: deletes the link with ifindex `index` (the pod end goes with it; a newer link
/// with the same name, from a quick re-ADD, is never touched) and removes the marker. The
/// marker is required: it names the link (`<host_if>@<index>`) and the boot; a link whose name
/// or kind (veth) differs, or a marker of another boot, is left alone.
pub fn reap(index: &str, marker: Option<&Path>) -> Result<(), CniError> {
    let index: i32 = index.parse().map_err(|_| {
        CniError::new(
            code::INVALID_ENV,
            format!("{REAP_ENV}: {index:?} is not an ifindex"),
        )
    })?;
    let marker = marker.ok_or_else(|| {
        CniError::new(code::INVALID_ENV, format!("{REAP_MARKER_ENV}: is required"))
    })?;
    let name = marker
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let written = std::fs::read_to_string(marker).unwrap_or_default();
    let d = parse_dying(marker.into(), &name, written.trim(), &boot_id());
    if d.index != index || !d.this_boot {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "{REAP_MARKER_ENV}: {} is not a marker of ifindex {index} from this boot",
                marker.display()
            ),
        ));
    }
    super::fault::reap_delay();
    Netlink::open()
        .and_then(|mut nl| nl.delete_link_checked(index, &d.host_if, "veth"))
        .map_err(kernel)?;
    let _ = std::fs::remove_file(marker);
    Ok(())
}
