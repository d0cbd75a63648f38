#![allow(dead_code)] // each test binary uses part of it
//! Set-up shared by the real-apiserver tests: the chart's operator RBAC, and a registry holding the fixture images
//! NodeImages refer to.

use std::path::Path;
use std::process::Command;

use kitfleet_builder::fixtures::{self, Registry};
use kitfleet_e2e::apiserver;
use kube::Client;
use serde_json::Value;

pub const NS: &str = "kitfleet-system";

/// The chart's operator RBAC (ServiceAccount, ClusterRole, Role and bindings), rendered by `helm` and applied.
pub async fn apply_chart_rbac(admin: &Client) {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/kitfleet");
    let out = Command::new(std::env::var("HELM").unwrap_or_else(|_| "helm".into()))
        .args(["template", "kitfleet"])
        .arg(&chart)
        .args(["--namespace", NS, "--kube-version", "1.36.0"])
        .args(["--set", "nodeAgent.clusterCIDRs={10.244.0.0/16}"])
        .args(["--show-only", "templates/operator-rbac.yaml"])
        .output()
        .expect("helm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    apiserver::ensure_namespace(admin, NS).await.unwrap();
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap();
    for d in docs.iter().filter(|d| d.is_object()) {
        apiserver::apply(admin, d).await.unwrap();
    }
}

/// Debian's `docker-registry` with `fixtures/kernel:6.1` and `fixtures/init:v1` (small marker images: resolution
/// reads manifests only).
pub async fn registry() -> Registry {
    kitfleet_builder::source::install_crypto_provider();
    let registry =
        Registry::start_with(None).expect("docker-registry (apt-get install docker-registry)");
    for (image, r) in [
        (
            fixtures::marker_image("kernel").unwrap(),
            "fixtures/kernel:6.1",
        ),
        (fixtures::marker_image("init").unwrap(), "fixtures/init:v1"),
    ] {
        image
            .build()
            .unwrap()
            .push_auth(
                &format!("{}/{r}", registry.addr),
                &oci_client::secrets::RegistryAuth::Anonymous,
            )
            .await
            .unwrap();
    }
    registry
}

/// A NodeImage of the two fixture images.
pub fn manifest(name: &str, reg: &str, extra: &str) -> kitfleet_api::NodeImage {
    kitfleet_api::NodeImage::from_yaml(&format!(
        "apiVersion: kitfleet.dev/v1alpha1\nkind: NodeImage\nmetadata:\n  name: {name}\nspec:\n  kernel:\n    image: {reg}/fixtures/kernel:6.1\n    cmdline: console=ttyS0{extra}\n  init:\n  - {reg}/fixtures/init:v1\n  formats: [kernel+initrd]\n  output:\n    repository: {reg}/kitfleet/{name}\n"
    ))
    .unwrap()
}

/// Polls `f` every 100 ms until it yields a value; panics naming `what` after 30 s.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..300 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}
