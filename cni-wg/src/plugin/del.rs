//! DEL: delete the host-side veth (the pod end and both routes go with it), release the
//! address. Idempotent: a missing netns, a missing link, an empty CNI_NETNS or a missing
//! prevResult are all fine.

use super::{ipam, kernel};
use crate::cni::CniError;
use crate::cni::config::NetConf;
use crate::cni::env::Env;
use crate::ipam::host_if_name;
use crate::ipam::store::Store;
use crate::netlink::Netlink;

pub(super) fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let host_if = host_if_name(&env.container_id, &env.ifname);
    let existed = Netlink::open().and_then(|mut nl| nl.delete_link(&host_if)).map_err(kernel)?;
    let released = Store::lock(&conf.data_dir, &conf.name)
        .and_then(|s| s.release(&env.container_id, &env.ifname))
        .map_err(ipam)?;
    let ips: Vec<String> = released.iter().map(|e| e.ip.to_string()).collect();
    tracing::info!(container = %env.container_id, ifname = %env.ifname, link_existed = existed, released = ?ips, "deleted");
    Ok(())
}
