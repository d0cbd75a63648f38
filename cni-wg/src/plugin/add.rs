//! ADD: masquerade (node-wide, idempotent), reserve an address, create the veth pair with the
//! pod end directly inside the pod namespace, configure both ends. Anything created after the
//! reservation is rolled back when a later step fails. The IPAM store stays locked until both
//! ends are configured (or rolled back), so a concurrent DEL or GC never sees a reservation
//! whose links are still being made.

use std::fs::File;
use std::net::Ipv4Addr;

use serde_json::Value;

use super::{ipam, kernel, load_state, open_netns, pod_cidr};
use crate::cni::config::NetConf;
use crate::cni::env::Env;
use crate::cni::result::{self, Attached, GATEWAY, advmss};
use crate::cni::{CniError, code};
use crate::ipam::store::{Record, Store};
use crate::ipam::{HOST_MAC, host_if_name, pod_mac};
use crate::{netns, nft};
use ipnet::Ipv4Net;
use kitfleet_netlink::{Netlink, Route, RouteScope, format_mac};

pub(super) fn add(env: &Env, conf: &NetConf) -> Result<Value, CniError> {
    let state = load_state(conf, code::TRY_AGAIN)?;
    let cidr = pod_cidr(conf, &state)?.ok_or_else(|| {
        CniError::new(
            code::TRY_AGAIN,
            "no pod CIDR: the node state file has no podCIDRs and the conflist no podCIDR",
        )
    })?;
    if conf.masquerade {
        masquerade(conf, cidr, &state.cluster_cidrs_v4())?;
    }
    let ns = open_netns(env)?;
    let mut pod_nl = netns::run_in(&ns, Netlink::open)
        .map_err(|e| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("cannot enter CNI_NETNS {:?}", env.netns),
            )
            .details(e)
        })?
        .map_err(kernel)?;
    let host_if = host_if_name(&env.container_id, &env.ifname);
    let mut nl = Netlink::open().map_err(kernel)?;
    let record = Record {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        host_if: host_if.clone(),
    };
    let store = Store::lock(&conf.data_dir, &conf.name).map_err(ipam)?;
    if nl.link(&host_if).map_err(kernel)?.is_some() {
        if store
            .find(&env.container_id, &env.ifname)
            .map_err(ipam)?
            .is_some()
        {
            return Err(CniError::new(
                code::INTERFACE_EXISTS,
                format!(
                    "host interface {host_if} for {}/{} already exists (DEL it first)",
                    env.container_id, env.ifname
                ),
            ));
        }
        // A link of this attachment without a reservation: DEL's reaper has not finished yet
        // (e.g. podman stop + start), or it died. Finish its job now.
        nl.delete_link(&host_if).map_err(kernel)?;
        store.clear_dying(&host_if).map_err(ipam)?;
        tracing::info!(host_if = %host_if, "deleted a leftover link of a DELeted attachment");
    }
    if pod_nl.link(&env.ifname).map_err(kernel)?.is_some() {
        return Err(CniError::new(
            code::INTERFACE_EXISTS,
            format!("interface {:?} already exists in {}", env.ifname, env.netns),
        ));
    }
    let ip = store.reserve(cidr, &record).map_err(ipam)?;
    let a = Attached {
        host_if,
        host_mac: format_mac(&HOST_MAC),
        pod_if: env.ifname.clone(),
        pod_mac: format_mac(&pod_mac(ip)),
        netns: env.netns.clone(),
        ip,
        mtu: state.mtu,
    };
    if let Err(e) = attach(&mut nl, &mut pod_nl, &ns, &a) {
        rollback(&mut nl, &store, &a);
        return Err(e);
    }
    drop(store);
    tracing::info!(container = %env.container_id, ifname = %env.ifname, ip = %ip, host_if = %a.host_if, port_mappings = conf.port_mappings.len(), "added");
    Ok(result::build(
        &a,
        conf.cni_version,
        conf.prev_result.as_ref(),
    ))
}

fn masquerade(conf: &NetConf, cidr: Ipv4Net, cluster: &[Ipv4Net]) -> Result<(), CniError> {
    let script = nft::script(&conf.name, cidr, cluster)
        .map_err(|e| CniError::new(code::MASQUERADE, e.to_string()))?;
    let dir = conf.data_dir.join(&conf.name);
    std::fs::create_dir_all(&dir).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("dataDir {}: cannot create", dir.display()),
        )
        .details(e)
    })?;
    match nft::ensure(&conf.name, &script, &dir.join("masquerade.applied"), false) {
        Ok(applied) => {
            if applied {
                tracing::info!(table = %nft::table_name(&conf.name), "masquerade rules applied");
            }
            Ok(())
        }
        Err(e) => Err(CniError::new(code::MASQUERADE, e.to_string())),
    }
}

fn attach(nl: &mut Netlink, pod_nl: &mut Netlink, ns: &File, a: &Attached) -> Result<(), CniError> {
    super::fault::point("after-reserve")?;
    nl.create_veth(
        (&a.host_if, HOST_MAC),
        (&a.pod_if, pod_mac(a.ip)),
        ns,
        a.mtu,
    )
    .map_err(|e| {
        if e.errno() == nix::errno::Errno::EEXIST {
            CniError::new(
                code::INTERFACE_EXISTS,
                format!("interface {:?} already exists in {}", a.pod_if, a.netns),
            )
        } else {
            kernel(e)
        }
    })?;
    super::fault::point("after-veth")?;
    // Pod side: up, the /32, a link route to the gateway, a permanent neighbour entry for it
    // (no proxy ARP needed on the host), and the default route with MTU/advmss metrics.
    let missing = || {
        CniError::new(
            code::KERNEL,
            format!("{} vanished from {} after creation", a.pod_if, a.netns),
        )
    };
    let pod_idx = pod_nl
        .link(&a.pod_if)
        .map_err(kernel)?
        .ok_or_else(missing)?
        .index;
    pod_nl.set_up(pod_idx).map_err(kernel)?;
    pod_nl.add_addr(pod_idx, a.ip, 32).map_err(kernel)?;
    super::fault::point("after-pod-addr")?;
    let gw_route = Route {
        dst: GATEWAY,
        prefix: 32,
        gw: None,
        oif: Some(pod_idx),
    };
    pod_nl
        .add_route(&gw_route, RouteScope::Link, None)
        .map_err(kernel)?;
    pod_nl
        .add_neigh(pod_idx, GATEWAY, HOST_MAC)
        .map_err(kernel)?;
    let default = Route {
        dst: Ipv4Addr::UNSPECIFIED,
        prefix: 0,
        gw: Some(GATEWAY),
        oif: Some(pod_idx),
    };
    pod_nl
        .add_route(&default, RouteScope::Universe, Some((a.mtu, advmss(a.mtu))))
        .map_err(kernel)?;
    super::fault::point("after-pod-routes")?;
    // Host side: up and a /32 route to the pod.
    let host_missing = || {
        CniError::new(
            code::KERNEL,
            format!("{} vanished after creation", a.host_if),
        )
    };
    let host_idx = nl
        .link(&a.host_if)
        .map_err(kernel)?
        .ok_or_else(host_missing)?
        .index;
    nl.set_up(host_idx).map_err(kernel)?;
    super::fault::point("after-host-up")?;
    nl.add_route(
        &Route {
            dst: a.ip,
            prefix: 32,
            gw: None,
            oif: Some(host_idx),
        },
        RouteScope::Link,
        None,
    )
    .map_err(kernel)?;
    super::fault::point("after-host-route")
}

/// Undoes a partial ADD under the store lock ADD still holds: the veth pair (its routes go with
/// it) and the reservation.
fn rollback(nl: &mut Netlink, store: &Store, a: &Attached) {
    if let Err(e) = nl.delete_link(&a.host_if) {
        tracing::warn!(error = %e, "rollback: delete link");
    }
    if let Err(e) = store.release_ip(a.ip) {
        tracing::warn!(error = %e, "rollback: release address");
    }
    tracing::info!(ip = %a.ip, host_if = %a.host_if, "rolled back");
}
