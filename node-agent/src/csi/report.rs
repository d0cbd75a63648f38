//! The node's sandbox report (`kitfleet_api::security::NodeSandboxReport`): built purely from the driver's volume
//! records, the launchers' last outcomes and the publishes that failed closed ([`build`], [`encode`]), and written as
//! the Node annotation `agent.kitfleet.dev/sandbox-report` whenever it changes ([`run`]). README.md ("Sandbox
//! report") has the schema; the operator aggregates the reports of every node into SecurityPolicy status.

use crate::csi::driver::{Driver, EndedRefusal, Outcome, PublishFailure, Record};
use crate::csi::source::PolicySource;
use k8s_openapi::api::core::v1::Node;
use kitfleet_api::constants::ANNOTATION_SANDBOX_REPORT;
use kitfleet_api::security::{NodeSandboxReport, PodRefusal, PolicySetOutcome};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The Node patch failed.
    #[error("patching Node {node} annotation {ANNOTATION_SANDBOX_REPORT}: {source}")]
    Patch {
        /// The node.
        node: String,
        /// The error.
        source: kube::Error,
    },
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn text(s: &str) -> String {
    clip(s, NodeSandboxReport::MAX_TEXT)
}

fn push_bounded(v: &mut Vec<String>, s: String) {
    if v.len() < NodeSandboxReport::MAX_DETAILS && !v.contains(&s) {
        v.push(s);
    }
}

/// What one launcher outcome says, for the report.
#[derive(Debug, Default, PartialEq)]
struct Parsed {
    enforced: bool,
    refused: Option<String>,
    not_applied: Vec<String>,
    dropped: Vec<String>,
}

/// Whether a launcher's outcome report says it refused the pod (or failed to start it).
pub fn is_refusal(report: &serde_json::Value) -> bool {
    parse_outcome(report).refused.is_some()
}

fn parse_outcome(report: &serde_json::Value) -> Parsed {
    let s = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let mut p = Parsed::default();
    match s(report, "event").as_deref() {
        Some("enforced" | "enforcing") => p.enforced = true,
        Some(ev @ ("refused" | "error")) => {
            p.refused = Some(s(report, "reason").unwrap_or_else(|| format!("launcher {ev}")));
        }
        _ => {}
    }
    for layer in report
        .get("landlock")
        .and_then(|l| l.as_array())
        .into_iter()
        .flatten()
    {
        let policy = s(layer, "policy").unwrap_or_default();
        if layer.get("applied").and_then(|a| a.as_bool()) == Some(false) {
            let why = s(layer, "reason").unwrap_or_else(|| "not applied".into());
            p.not_applied.push(text(&format!("{policy}: {why}")));
        }
        for rule in layer
            .get("rules")
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
        {
            if s(rule, "status").as_deref() == Some("dropped") {
                p.dropped.push(text(&format!(
                    "{policy} {} {}: {}",
                    s(rule, "field").unwrap_or_default(),
                    s(rule, "path").unwrap_or_default(),
                    s(rule, "reason").unwrap_or_else(|| "dropped".into())
                )));
            }
        }
    }
    p
}

fn namespace_of(pod: &str) -> &str {
    pod.split_once('/').map_or("", |(ns, _)| ns)
}

/// The report for the given state. Pure: sets sorted by (namespace, set hash), refusals newest last (launch
/// refusals of current volumes first, by pod, then those of volumes already unpublished, then publish failures, each
/// in the order they happened), every list bounded as [`NodeSandboxReport`] says.
pub fn build(
    landlock_abi: u32,
    records: &[Record],
    outcomes: &BTreeMap<String, Outcome>,
    ended: &[EndedRefusal],
    failures: &[PublishFailure],
    publish_failed_total: u32,
) -> NodeSandboxReport {
    let mut r = NodeSandboxReport {
        landlock_abi,
        ..Default::default()
    };
    r.counts.publish_failed = publish_failed_total;
    let mut sets: BTreeMap<(String, String), PolicySetOutcome> = BTreeMap::new();
    let mut refusals = Vec::new();
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by(|a, b| (&a.pod, &a.volume_id).cmp(&(&b.pod, &b.volume_id)));
    for rec in sorted {
        let ns = namespace_of(&rec.pod).to_string();
        let set = sets
            .entry((ns.clone(), rec.set_hash.clone()))
            .or_insert_with(|| PolicySetOutcome {
                namespace: ns,
                policies: rec.policies.clone(),
                set_hash: rec.set_hash.clone(),
                ..Default::default()
            });
        set.volumes += 1;
        r.counts.volumes += 1;
        let Some(o) = outcomes.get(&rec.volume_id) else {
            continue;
        };
        let p = parse_outcome(&o.report);
        if p.enforced {
            set.enforced += 1;
            r.counts.enforced += 1;
        }
        r.counts.dropped_rules += p.dropped.len() as u32;
        for d in p.dropped {
            push_bounded(&mut set.dropped_rules, d);
        }
        for n in p.not_applied {
            push_bounded(&mut set.landlock_not_applied, n);
        }
        if let Some(reason) = p.refused {
            set.refused += 1;
            r.counts.refused += 1;
            refusals.push(PodRefusal {
                pod: rec.pod.clone(),
                pod_uid: rec.pod_uid.clone(),
                policies: rec.policies.clone(),
                stage: "launch".into(),
                reason: text(&reason),
            });
        }
    }
    let current: std::collections::BTreeSet<&str> =
        records.iter().map(|r| r.pod_uid.as_str()).collect();
    for e in ended
        .iter()
        .filter(|e| !current.contains(e.pod_uid.as_str()))
    {
        if let Some(reason) = parse_outcome(&e.report).refused {
            refusals.push(PodRefusal {
                pod: e.pod.clone(),
                pod_uid: e.pod_uid.clone(),
                policies: e.policies.clone(),
                stage: "launch".into(),
                reason: text(&reason),
            });
        }
    }
    refusals.extend(failures.iter().map(|f| PodRefusal {
        pod: f.pod.clone(),
        pod_uid: f.pod_uid.clone(),
        policies: f.policies.clone(),
        stage: "publish".into(),
        reason: text(&f.reason),
    }));
    let keep = NodeSandboxReport::MAX_REFUSALS;
    if refusals.len() > keep {
        r.refusals_omitted = (refusals.len() - keep) as u32;
        refusals.drain(..refusals.len() - keep);
    }
    r.refusals = refusals;
    let mut sets: Vec<PolicySetOutcome> = sets.into_values().collect();
    if sets.len() > NodeSandboxReport::MAX_SETS {
        r.sets_omitted = (sets.len() - NodeSandboxReport::MAX_SETS) as u32;
        sets.truncate(NodeSandboxReport::MAX_SETS);
    }
    r.sets = sets;
    r
}

/// The annotation value: compact JSON under [`NodeSandboxReport::MAX_BYTES`] (details of the last sets, then
/// refusals, are dropped and counted as omitted until it fits; the counts always stay).
pub fn encode(report: &NodeSandboxReport) -> String {
    let mut r = report.clone();
    loop {
        let s = serde_json::to_string(&r).expect("report serialises");
        if s.len() < NodeSandboxReport::MAX_BYTES {
            return s;
        }
        if r.sets.pop().is_some() {
            r.sets_omitted += 1;
        } else if !r.refusals.is_empty() {
            r.refusals.remove(0);
            r.refusals_omitted += 1;
        } else {
            return s;
        }
    }
}

/// The node's Landlock ABI (0 when the kernel has none or the syscall fails).
pub fn landlock_abi() -> u32 {
    kitfleet_sandbox::landlock::sys::abi().unwrap_or(0)
}

/// Patches `agent.kitfleet.dev/sandbox-report` on Node `node` (a merge patch of that one annotation: the chart's
/// ValidatingAdmissionPolicy lets an agent change only its own Node's `agent.kitfleet.dev/` keys).
pub async fn write(client: &kube::Client, node: &str, value: &str) -> Result<(), ReportError> {
    let api: kube::Api<Node> = kube::Api::all(client.clone());
    let patch =
        serde_json::json!({"metadata": {"annotations": {ANNOTATION_SANDBOX_REPORT: value}}});
    api.patch(
        node,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| ReportError::Patch {
        node: node.to_string(),
        source,
    })
}

/// Every `interval`, builds the report and writes it when it differs from the last one written (the first one
/// always), until `shutdown` completes. Failures are logged and retried at the next tick.
pub async fn run<S: PolicySource>(
    driver: Arc<Driver<S>>,
    client: kube::Client,
    interval: Duration,
    shutdown: impl Future<Output = ()> + Send,
) {
    let node = driver.config().node_id.clone();
    let abi = landlock_abi();
    let mut last: Option<String> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut shutdown => return,
        }
        let records = match driver.records() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "sandbox report: reading volume records");
                continue;
            }
        };
        let (failures, total) = driver.publish_failures();
        let ended = driver.ended_refusals();
        let value = encode(&build(
            abi,
            &records,
            &driver.outcomes(),
            &ended,
            &failures,
            total,
        ));
        if last.as_deref() == Some(value.as_str()) {
            continue;
        }
        match write(&client, &node, &value).await {
            Ok(()) => {
                tracing::info!(%node, bytes = value.len(), "sandbox report written");
                last = Some(value);
            }
            Err(e) => tracing::warn!(error = %e, "sandbox report"),
        }
    }
}

#[cfg(test)]
mod tests;
