//! The validating webhook's pure core: a NodeImage or SecurityPolicy object (as the apiserver sends it, already
//! pruned to the CRD's schema) → `Ok`, or every problem as `path: message` lines.
//!
//! The same checks run in the controllers (their `Degraded` path stays for objects stored while no webhook ran).

use kitfleet_api::{NodeImage, SecurityPolicy};
use kitfleet_sandbox::compile::{Options, compile};
use serde_json::Value;

/// A refused object: every problem, each naming its field (`spec.seccomp.rules[0].names[1]: …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Refused(pub Vec<String>);

fn unreadable(e: serde_json::Error) -> Refused {
    Refused(vec![format!("spec: cannot be read: {e}")])
}

/// Checks a NodeImage with `kitfleet_api::validate::nodeimage`.
pub fn nodeimage(object: Value) -> Result<(), Refused> {
    let ni: NodeImage = serde_json::from_value(object).map_err(unreadable)?;
    kitfleet_api::validate::nodeimage(&ni.spec)
        .map_err(|e| Refused(e.0.iter().map(ToString::to_string).collect()))
}

/// Checks a SecurityPolicy with `kitfleet_api::validate::security_policy`, then compiles it alone with
/// `kitfleet-sandbox`'s compiler for every architecture it knows (what a node would compile).
pub fn security_policy(object: Value) -> Result<(), Refused> {
    let p: SecurityPolicy = serde_json::from_value(object).map_err(unreadable)?;
    kitfleet_api::validate::security_policy(&p.spec)
        .map_err(|e| Refused(e.0.iter().map(ToString::to_string).collect()))?;
    compile(std::slice::from_ref(&p), &Options::default())
        .map(|_| ())
        .map_err(|e| {
            Refused(
                e.0.iter()
                    .map(|c| format!("{}: {} (kitfleet-sandbox compiler)", c.field, c.message))
                    .collect(),
            )
        })
}

/// Compiles the set of policies matching one pod together (they stack). `Err` lists every problem.
pub fn policy_set(policies: &[SecurityPolicy]) -> Result<(), Refused> {
    compile(policies, &Options::default())
        .map(|_| ())
        .map_err(|e| {
            Refused(
                e.0.iter()
                    .map(|c| format!("securitypolicy {}: {}: {}", c.policy, c.field, c.message))
                    .collect(),
            )
        })
}
