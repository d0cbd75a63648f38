//! The Helm chart, checked with the real `helm` binary and Kubernetes' schemas (`kubernetes-validate --strict`).
//! `scripts/setup.sh` installs both; under `CI=true` a missing tool fails the test instead of skipping it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/kitfleet")
}

/// The tool's path, or `None` (skip) outside CI when it is not installed.
fn tool(name: &str) -> Option<&str> {
    let found = Command::new(name)
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success());
    match (found, std::env::var("CI").as_deref()) {
        (true, _) => Some(name),
        (false, Ok("true")) => panic!("{name} is not installed (scripts/setup.sh installs it)"),
        (false, _) => {
            eprintln!("skipping: {name} is not installed (run scripts/setup.sh)");
            None
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value every install must give (the chart fails without it); later `--set`s override it.
const CLUSTER_CIDRS: &str = "nodeAgent.clusterCIDRs={10.244.0.0/16}";

fn template_command(helm: &str, sets: &[&str]) -> Command {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "kitfleet"]).arg(chart()).args([
        "--namespace",
        "kitfleet-system",
        "--kube-version",
        "1.36.0",
    ]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd
}

fn template(helm: &str, sets: &[&str]) -> String {
    let mut all = vec![CLUSTER_CIDRS];
    all.extend_from_slice(sets);
    run(&mut template_command(helm, &all))
}

fn documents(rendered: &str) -> Vec<serde_json::Value> {
    rendered
        .split("\n---")
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|d| serde_saphyr::from_str(d).unwrap_or_else(|e| panic!("{e}\n{d}")))
        .collect()
}

fn kinds(docs: &[serde_json::Value]) -> Vec<String> {
    let mut k: Vec<_> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    k.sort();
    k
}

#[test]
fn helm_lint_passes() {
    let Some(helm) = tool("helm") else { return };
    let out = run(Command::new(helm)
        .arg("lint")
        .arg(chart())
        .arg("--strict")
        .args(["--set", CLUSTER_CIDRS]));
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn rendered_manifests_pass_kubernetes_schemas() {
    let (Some(helm), Some(validate)) = (tool("helm"), tool("kubernetes-validate")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let variants: [&[&str]; 3] = [
        &[],
        &[
            "operator.insecureRegistries={127.0.0.1:5000}",
            "operator.cachePVC=kitfleet-cache",
            "nodeAgent.clusterCIDRs={10.244.0.0/16}",
        ],
        &[
            "nodeAgent.enabled=false",
            "operator.leaderElection=false",
            "operator.replicas=1",
        ],
    ];
    for (i, sets) in variants.iter().enumerate() {
        let path = dir.path().join(format!("rendered-{i}.yaml"));
        std::fs::write(&path, template(helm, sets)).unwrap();
        let out = run(Command::new(validate)
            .args(["--kubernetes-version", "1.36.0", "--strict", "--quiet"])
            .arg(&path));
        assert!(!out.contains("failed"), "{sets:?}: {out}");
    }
}

#[test]
fn the_chart_installs_what_kitfleet_runs() {
    let Some(helm) = tool("helm") else { return };
    let docs = documents(&template(helm, &[]));
    assert_eq!(
        kinds(&docs),
        [
            "CSIDriver/sandbox.kitfleet.dev",
            "ClusterRole/kitfleet-crds",
            "ClusterRole/kitfleet-node-agent",
            "ClusterRole/kitfleet-node-cleanup",
            "ClusterRole/kitfleet-operator",
            "ClusterRoleBinding/kitfleet-crds",
            "ClusterRoleBinding/kitfleet-node-agent",
            "ClusterRoleBinding/kitfleet-node-cleanup",
            "ClusterRoleBinding/kitfleet-operator",
            "ConfigMap/kitfleet-cni",
            "DaemonSet/kitfleet-node-agent",
            "DaemonSet/kitfleet-node-upgrade",
            "Deployment/kitfleet-operator",
            "Job/kitfleet-crds",
            "Job/kitfleet-node-cleanup",
            "MutatingWebhookConfiguration/kitfleet-sandbox",
            "Role/kitfleet-node-cleanup",
            "Role/kitfleet-operator",
            "RoleBinding/kitfleet-node-cleanup",
            "RoleBinding/kitfleet-operator",
            "Service/kitfleet-operator-metrics",
            "Service/kitfleet-webhook",
            "ServiceAccount/kitfleet-crds",
            "ServiceAccount/kitfleet-node-agent",
            "ServiceAccount/kitfleet-node-cleanup",
            "ServiceAccount/kitfleet-operator",
            "ValidatingAdmissionPolicy/kitfleet-node-agent",
            "ValidatingAdmissionPolicyBinding/kitfleet-node-agent",
            "ValidatingWebhookConfiguration/kitfleet-validate",
        ]
    );
    let without_agent = documents(&template(helm, &["nodeAgent.enabled=false"]));
    assert!(
        kinds(&without_agent)
            .iter()
            .all(|k| !k.contains("node-agent")
                && !k.contains("kitfleet-cni")
                && !k.contains("sandbox.kitfleet.dev"))
    );
}

#[test]
fn the_cluster_cidrs_are_required() {
    let Some(helm) = tool("helm") else { return };
    for sets in [&[][..], &["nodeAgent.clusterCIDRs=null"][..]] {
        let out = template_command(helm, sets).output().unwrap();
        assert!(!out.status.success(), "{sets:?} rendered");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("nodeAgent.clusterCIDRs is required"),
            "{sets:?}: {err}"
        );
    }
    // Without the node agent there is nothing to configure.
    run(&mut template_command(helm, &["nodeAgent.enabled=false"]));
}

#[test]
fn the_images_are_named_per_component() {
    let Some(helm) = tool("helm") else { return };
    let docs = documents(&template(helm, &["image.tag=t1"]));
    let images: Vec<String> = docs
        .iter()
        .filter_map(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].as_str())
        .map(String::from)
        .collect();
    assert!(
        images.contains(&"kitfleet-registry:5000/kitfleet/operator:t1".to_string()),
        "{images:?}"
    );
    assert!(
        images.contains(&"kitfleet-registry:5000/kitfleet/node-agent:t1".to_string()),
        "{images:?}"
    );
    let operator = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let env = &operator["spec"]["template"]["spec"]["containers"][0]["env"];
    let builder = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "KITFLEET_BUILDER_IMAGE")
        .unwrap();
    assert_eq!(
        builder["value"],
        "kitfleet-registry:5000/kitfleet/builder:t1"
    );
}

#[test]
fn the_conflist_is_one_the_plugin_accepts() {
    let Some(helm) = tool("helm") else { return };
    let docs = documents(&template(helm, &[]));
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("the CNI ConfigMap");
    let conflist: serde_json::Value =
        serde_json::from_str(cm["data"]["10-kitfleet.conflist"].as_str().unwrap()).unwrap();
    assert_eq!(conflist["plugins"][0]["type"], "kitfleet-wg");
    assert_eq!(conflist["plugins"][1]["type"], "portmap");
    // What a runtime hands the plugin: its own entry plus the list's name and version.
    let mut stdin = conflist["plugins"][0].clone();
    stdin["name"] = conflist["name"].clone();
    stdin["cniVersion"] = conflist["cniVersion"].clone();
    let conf = kitfleet_cni_wg::cni::config::parse(stdin.to_string().as_bytes())
        .expect("the plugin accepts the chart's config");
    assert_eq!(conf.state_file, Path::new("/run/kitfleet/node.json"));
    assert!(conf.masquerade);
}

#[test]
fn the_chart_crds_are_the_generated_ones() {
    for (path, yaml) in kitfleet_api::crds::files() {
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == yaml,
            "{} is stale: run `cargo run -p kitfleet-api --bin crdgen`",
            path.display()
        );
    }
    let chart_crds: Vec<_> = std::fs::read_dir(chart().join("crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(chart_crds.len(), 2, "{chart_crds:?}");
}
