//! SecurityPolicy `spec.landlock` → a Landlock layer of the compiled policy.

use super::Ctx;
use crate::policy::{FsRule, LandlockLayer, NetPorts};
use kitfleet_api::security::{LandlockPolicy, PolicyMode};

pub(super) fn landlock_layer(
    cx: &mut Ctx<'_>,
    l: &LandlockPolicy,
    mode: PolicyMode,
) -> LandlockLayer {
    if l.min_abi == Some(0) {
        cx.err("spec.landlock.minAbi", "must be at least 1");
    }
    let mut filesystem = Vec::new();
    for (i, r) in l.filesystem.iter().enumerate() {
        let field = format!("spec.landlock.filesystem[{i}]");
        if r.paths.is_empty() {
            cx.err(format!("{field}.paths"), "at least one path is required");
        }
        for (j, path) in r.paths.iter().enumerate() {
            if !path.starts_with('/') || path.contains('\0') {
                cx.err(
                    format!("{field}.paths[{j}]"),
                    format!("{path:?} is not an absolute path"),
                );
            }
        }
        if r.access.is_empty() {
            cx.err(
                format!("{field}.access"),
                "at least one access right is required",
            );
        }
        let mut access = r.access.clone();
        access.sort();
        access.dedup();
        filesystem.push(FsRule {
            paths: r.paths.clone(),
            access,
            required: r.required,
            field,
        });
    }
    let network = l.network.as_ref().map(|n| NetPorts {
        bind_tcp: ports(cx, "spec.landlock.network.bindTcp", &n.bind_tcp),
        connect_tcp: ports(cx, "spec.landlock.network.connectTcp", &n.connect_tcp),
    });
    let mut scopes = l.scopes.clone();
    scopes.sort();
    scopes.dedup();
    LandlockLayer {
        policy: cx.policy.clone(),
        mode,
        min_abi: l.min_abi,
        filesystem,
        network,
        scopes,
    }
}

fn ports(cx: &mut Ctx<'_>, field: &str, list: &[u32]) -> Vec<u16> {
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        match u16::try_from(*p) {
            Ok(p) if p != 0 => out.push(p),
            _ => cx.err(
                format!("{field}[{i}]"),
                format!("port {p} is not in 1-65535"),
            ),
        }
    }
    out.sort();
    out.dedup();
    out
}
