//! The admission webhooks served over real TLS to a real kube-apiserver (the `kitfleet-e2e` fixture), running under
//! the chart's operator RBAC, with the chart's two webhook configurations applied (their `clientConfig.service`
//! swapped for a URL on 127.0.0.1: the fixture has no Service network). The fixture has no kubelet: the test asserts
//! on the stored pod.
//!
//! Proves: the operator creates its certificate Secret and patches `caBundle`, labels a namespace that has a
//! SecurityPolicy, the apiserver calls the mutating webhook for a pod created there and stores the wrapped pod, a pod
//! in an unlabelled namespace is untouched, and the validating webhook refuses a bad SecurityPolicy with field paths.

mod common;

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kitfleet_api::SecurityPolicy;
use kitfleet_e2e::apiserver;
use kitfleet_operator::webhook::certs;
use kitfleet_operator::webhook::server::{self, WebhookSettings};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use tokio::sync::watch;

use common::{NS, eventually};

const SHOP: &str = "wh-shop";
const PLAIN: &str = "wh-plain";

/// The chart's webhook configurations, pointed at `https://127.0.0.1:port`.
fn chart_webhooks(port: u16) -> Vec<Value> {
    let docs = apiserver::helm_template(&["nodeAgent.clusterCIDRs={10.244.0.0/16}"]).unwrap();
    let mut out = Vec::new();
    for mut d in docs {
        let kind = d["kind"].as_str().unwrap_or_default().to_string();
        if kind != "MutatingWebhookConfiguration" && kind != "ValidatingWebhookConfiguration" {
            continue;
        }
        for w in d["webhooks"].as_array_mut().unwrap() {
            let path = w["clientConfig"]["service"]["path"]
                .as_str()
                .unwrap()
                .to_string();
            w["clientConfig"] = json!({"url": format!("https://127.0.0.1:{port}{path}")});
        }
        out.push(d);
    }
    assert_eq!(out.len(), 2, "the chart has both configurations");
    out
}

fn pod(name: &str, ns: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
        "spec": {"automountServiceAccountToken": false,
                 "containers": [{"name": "app", "image": "registry.invalid/app:1", "command": ["/bin/app"], "args": ["--port", "80"]}]}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apiserver_calls_the_webhooks_over_tls() {
    let Some(api) = apiserver::shared() else {
        return;
    };
    let admin = api.admin_client().await.unwrap();
    common::apply_chart_rbac(&admin).await;
    for ns in [SHOP, PLAIN] {
        apiserver::ensure_service_account(&admin, ns, "default")
            .await
            .unwrap();
    }
    let client = api
        .service_account_client(NS, "kitfleet-operator")
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    for d in chart_webhooks(port) {
        apiserver::apply(&admin, &d).await.unwrap();
    }
    let settings = WebhookSettings {
        listen: listener.local_addr().unwrap(),
        namespace: NS.into(),
        names: vec!["127.0.0.1".into()],
        // Longer than the test: the namespace label must follow SecurityPolicy changes at once, not the refresh
        // (with a refresh-only label pass, pods created in the first minute after a namespace's first policy
        // started unconfined — found by the kind policy suite).
        refresh: Duration::from_secs(3600),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let served = tokio::spawn(server::run_on(client, settings, None, listener, stop_rx));

    // The certificate Secret, and its CA in the configurations' caBundle.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let bundle = eventually("the certificate Secret", || async {
        secrets
            .get_opt(certs::SECRET_NAME)
            .await
            .unwrap()
            .as_ref()
            .and_then(certs::from_secret)
    })
    .await;
    let configs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    eventually("caBundle", || async {
        let c = configs.get(server::MUTATING_CONFIGURATION).await.unwrap();
        let b = c.webhooks.unwrap()[0].client_config.ca_bundle.clone();
        (b.map(|b| b.0) == Some(bundle.ca_pem.clone().into_bytes())).then_some(())
    })
    .await;

    // A SecurityPolicy (admitted by the validating webhook) gets its namespace labelled.
    let policies: Api<SecurityPolicy> = Api::namespaced(admin.clone(), SHOP);
    let p: SecurityPolicy = serde_json::from_value(json!({
        "apiVersion": "kitfleet.dev/v1alpha1", "kind": "SecurityPolicy",
        "metadata": {"name": "web", "namespace": SHOP},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                 "seccomp": {"defaultAction": "allow", "rules": [{"names": ["ptrace"], "action": "kill-process"}]}}
    }))
    .unwrap();
    let created = policies.create(&PostParams::default(), &p).await.unwrap();
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let labelled_after = std::time::Instant::now();
    eventually("the sandbox label", || async {
        let n = namespaces.get(SHOP).await.unwrap();
        n.metadata
            .labels
            .and_then(|l| {
                l.get(kitfleet_api::constants::LABEL_SANDBOX_NAMESPACE)
                    .cloned()
            })
            .filter(|v| v == "true")
    })
    .await;
    eprintln!(
        "namespace labelled {:?} after the policy was created",
        labelled_after.elapsed()
    );

    // A pod in the labelled namespace is stored wrapped. The webhook's policy store may lag the label by a moment:
    // retry until the stored pod carries the volume (each attempt is a fresh pod).
    let pods: Api<Pod> = Api::namespaced(admin.clone(), SHOP);
    let stored = eventually("a wrapped pod", || {
        let pods = pods.clone();
        async move {
            let _ = pods.delete("web-0", &Default::default()).await;
            let mut pp = pod("web-0", SHOP);
            pp.metadata.name = None;
            pp.metadata.generate_name = Some("web-".into());
            let s = pods.create(&PostParams::default(), &pp).await.unwrap();
            let wrapped = s
                .spec
                .as_ref()
                .unwrap()
                .volumes
                .iter()
                .flatten()
                .any(|v| v.name == "kitfleet-sandbox");
            wrapped.then_some(s)
        }
    })
    .await;
    let spec = stored.spec.unwrap();
    let c = &spec.containers[0];
    assert_eq!(
        c.command.clone().unwrap(),
        [
            "/.kitfleet/kitfleet-sandbox",
            "exec",
            "--policy",
            "/.kitfleet/policy.json",
            "--",
            "/bin/app",
            "--port",
            "80"
        ]
    );
    assert!(c.args.is_none());
    let m = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "kitfleet-sandbox")
        .unwrap();
    assert_eq!(
        (m.mount_path.as_str(), m.read_only),
        ("/.kitfleet", Some(true))
    );
    let v = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "kitfleet-sandbox")
        .unwrap();
    let csi = v.csi.unwrap();
    assert_eq!(csi.driver, "sandbox.kitfleet.dev");
    assert_eq!(csi.read_only, Some(true));
    let attrs = csi.volume_attributes.unwrap();
    let generation = created.metadata.generation.unwrap();
    assert_eq!(
        attrs["sandbox.kitfleet.dev/policies"],
        format!("web@{generation}")
    );
    let hash = &attrs["sandbox.kitfleet.dev/set-hash"];
    let want = kitfleet_operator::webhook::mutate::set_hash(
        SHOP,
        &[kitfleet_operator::webhook::mutate::PolicyRef {
            name: "web".into(),
            uid: created.metadata.uid.clone().unwrap(),
            generation,
        }],
    );
    assert_eq!(hash, &want);
    let sp = spec.security_context.unwrap().seccomp_profile.unwrap();
    assert_eq!(sp.type_, "Localhost");
    assert_eq!(
        sp.localhost_profile.unwrap(),
        format!("kitfleet/{hash}.json")
    );

    // An unlabelled namespace: the apiserver does not call the webhook; the pod is stored as written.
    let plain: Api<Pod> = Api::namespaced(admin.clone(), PLAIN);
    let s = plain
        .create(&PostParams::default(), &pod("web-0", PLAIN))
        .await
        .unwrap();
    assert_eq!(
        s.spec.unwrap().containers[0].command.clone().unwrap(),
        ["/bin/app"]
    );

    // The validating webhook refuses a bad SecurityPolicy with the field path, through the apiserver.
    let mut bad = p.clone();
    bad.metadata.name = Some("bad".into());
    bad.spec.seccomp.as_mut().unwrap().rules[0].names = vec!["open".into()];
    let e = policies
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("kitfleet-validate") || msg.contains("objects.kitfleet.dev"),
        "{msg}"
    );
    assert!(msg.contains("spec.seccomp.rules[0].names[0]"), "{msg}");

    // Deleting the policy removes the label.
    policies.delete("web", &Default::default()).await.unwrap();
    eventually("the label removed", || async {
        let n = namespaces.get(SHOP).await.unwrap();
        (!n.metadata
            .labels
            .unwrap_or_default()
            .contains_key(kitfleet_api::constants::LABEL_SANDBOX_NAMESPACE))
        .then_some(())
    })
    .await;

    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
