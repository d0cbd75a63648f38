//! CHECK: the pod interface, its address, routes and MTU, the host end and its route, and the
//! IPAM record, all against `prevResult` and the node state.

use super::{kernel, load_state};
use crate::cni::config::NetConf;
use crate::cni::env::Env;
use crate::cni::result::{self, Expected};
use crate::cni::{CniError, code};
use crate::ipam::host_if_name;
use crate::ipam::store::Store;
use crate::netns;
use kitfleet_netlink::{Link, Netlink};

fn fail(what: String) -> CniError {
    CniError::new(code::CHECK_FAILED, what)
}

pub(super) fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "prevResult: is required for CHECK"))?;
    let want = result::expected(prev, &env.ifname, &env.netns)?;
    let mtu = load_state(conf, code::TRY_AGAIN)?.mtu;
    let ns = super::open_netns(env)?;
    let mut pod_nl = netns::run_in(&ns, Netlink::open)
        .map_err(|e| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("cannot enter CNI_NETNS {:?}", env.netns),
            )
            .details(e)
        })?
        .map_err(kernel)?;
    let pod = pod_nl.link(&env.ifname).map_err(kernel)?.ok_or_else(|| {
        fail(format!(
            "interface {:?} is missing from {}",
            env.ifname, env.netns
        ))
    })?;
    check_link(&pod, &env.ifname, mtu, want.mac.as_deref())?;
    check_pod_addrs_routes(&mut pod_nl, &pod, &env.ifname, &want)?;

    let host_if = host_if_name(&env.container_id, &env.ifname);
    let mut nl = Netlink::open().map_err(kernel)?;
    let host = nl
        .link(&host_if)
        .map_err(kernel)?
        .ok_or_else(|| fail(format!("host interface {host_if} is missing")))?;
    check_link(&host, &host_if, mtu, None)?;
    let routes = nl.routes().map_err(kernel)?;
    for (ip, _) in &want.addrs {
        if !routes
            .iter()
            .any(|r| r.dst == *ip && r.prefix == 32 && r.oif == Some(host.index))
        {
            return Err(fail(format!("host route {ip}/32 dev {host_if} is missing")));
        }
    }
    let entry = Store::lock(&conf.data_dir, &conf.name)
        .and_then(|s| s.find(&env.container_id, &env.ifname))
        .map_err(super::ipam)?;
    match entry {
        Some(e) if want.addrs.iter().any(|(ip, _)| *ip == e.ip) => Ok(()),
        Some(e) => Err(fail(format!(
            "IPAM holds {} for this attachment, prevResult says {:?}",
            e.ip, want.addrs
        ))),
        None => Err(fail(format!(
            "IPAM has no address for {}/{}",
            env.container_id, env.ifname
        ))),
    }
}

fn check_link(l: &Link, name: &str, mtu: u32, mac: Option<&str>) -> Result<(), CniError> {
    if l.kind != "veth" {
        return Err(fail(format!("{name} is a {:?} link, not veth", l.kind)));
    }
    if !l.up {
        return Err(fail(format!("{name} is down")));
    }
    if l.mtu != mtu {
        return Err(fail(format!(
            "{name} has MTU {}, the node state says {mtu}",
            l.mtu
        )));
    }
    if let Some(m) = mac.filter(|m| !m.eq_ignore_ascii_case(&l.mac)) {
        return Err(fail(format!(
            "{name} has MAC {}, prevResult says {m}",
            l.mac
        )));
    }
    Ok(())
}

fn check_pod_addrs_routes(
    nl: &mut Netlink,
    pod: &Link,
    ifname: &str,
    want: &Expected,
) -> Result<(), CniError> {
    let have = nl.addrs(pod.index).map_err(kernel)?;
    for (ip, p) in &want.addrs {
        if !have.contains(&(*ip, *p)) {
            return Err(fail(format!(
                "{ifname} lacks address {ip}/{p} (has {have:?})"
            )));
        }
    }
    let routes = nl.routes().map_err(kernel)?;
    for (dst, p, gw) in &want.routes {
        let found = routes
            .iter()
            .any(|r| r.dst == *dst && r.prefix == *p && r.gw == *gw && r.oif == Some(pod.index));
        if !found {
            let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return Err(fail(format!(
                "route {dst}/{p}{via} dev {ifname} is missing"
            )));
        }
    }
    Ok(())
}
