//! The chart grants the operator exactly what its code calls: the rendered ClusterRole and Role (real `helm
//! template`) equal `kitfleet_operator::rbac`'s lists, rule for rule. The real-apiserver tests (`tests/apiserver.rs`)
//! run the operator under these rules, which proves they are enough.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use kitfleet_operator::rbac::{CLUSTER_RULES, NAMESPACE_RULES, Rule};
use serde_json::Value;

type Flat = BTreeSet<(String, String, Vec<String>)>;

fn flat(rules: &[Rule]) -> Flat {
    rules
        .iter()
        .map(|(g, r, v)| {
            let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            v.sort();
            (g.to_string(), r.to_string(), v)
        })
        .collect()
}

/// Every (group, resource) of a rendered role with its verbs (one entry per group × resource of each rule).
fn rendered(doc: &Value) -> Flat {
    let mut out = Flat::new();
    for rule in doc["rules"].as_array().expect("rules") {
        let strs = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .unwrap_or_else(|| panic!("{k} in {rule}"))
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        let mut verbs = strs("verbs");
        verbs.sort();
        for g in strs("apiGroups") {
            for r in strs("resources") {
                assert!(
                    out.insert((g.clone(), r.clone(), verbs.clone())),
                    "{g}/{r} twice"
                );
            }
        }
    }
    out
}

#[test]
fn the_chart_grants_exactly_what_the_code_calls() {
    let helm = std::env::var("HELM").unwrap_or_else(|_| "helm".into());
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/kitfleet");
    let out = match Command::new(&helm)
        .args(["template", "kitfleet"])
        .arg(&chart)
        .args([
            "--namespace",
            "kitfleet-system",
            "--kube-version",
            "1.36.0",
            "--set",
            "nodeAgent.clusterCIDRs={10.244.0.0/16}",
            "--show-only",
            "templates/operator-rbac.yaml",
        ])
        .output()
    {
        Ok(o) => o,
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipped: {helm}: {e} (set HELM to the helm binary; CI=true fails instead)");
            return;
        }
        Err(e) => panic!("{helm}: {e}"),
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("rendered YAML");
    let role = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == "kitfleet-operator")
            .unwrap_or_else(|| panic!("no {kind} kitfleet-operator in:\n{text}"))
    };
    assert_eq!(
        rendered(role("ClusterRole")),
        flat(CLUSTER_RULES),
        "ClusterRole"
    );
    assert_eq!(rendered(role("Role")), flat(NAMESPACE_RULES), "Role");
    assert_eq!(role("Role")["metadata"]["namespace"], "kitfleet-system");
}
