//! The CRD upgrade path (`kitfleet-operator crds apply`, the chart's pre-install/pre-upgrade hook) against a real
//! kube-apiserver, as the hook's ServiceAccount under the chart's own hook RBAC (rendered by `helm`): an older
//! NodeImage CRD (without `rollout.healthCheck.podSelector`) prunes the field; after the hook's apply the field is
//! kept; a second apply changes nothing; the hook's role cannot touch another CRD.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kitfleet_e2e::apiserver;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

const NS: &str = "kitfleet-system";
const CRD: &str = "nodeimages.kitfleet.dev";

/// The generated NodeImage CRD with `spec.rollout.healthCheck.podSelector` taken out (as it was before it existed).
fn older_crd() -> Value {
    let (_, crd) = kitfleet_api::crds::definitions()
        .into_iter()
        .find(|(f, _)| f.starts_with("nodeimages"))
        .unwrap();
    let mut v = serde_json::to_value(crd).unwrap();
    v.as_object_mut().unwrap().remove("status");
    let hc = &mut v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["rollout"]["properties"]["healthCheck"]["properties"];
    assert!(
        hc.as_object_mut().unwrap().remove("podSelector").is_some(),
        "the current CRD has healthCheck.podSelector"
    );
    v
}

fn nodeimage(name: &str) -> Value {
    json!({
        "apiVersion": "kitfleet.dev/v1alpha1", "kind": "NodeImage",
        "metadata": {"name": name},
        "spec": {
            "kernel": {"image": "kitfleet-registry:5000/k:1"},
            "init": ["kitfleet-registry:5000/i:1"],
            "formats": ["kernel+initrd"],
            "output": {"repository": "kitfleet-registry:5000/kitfleet/nodes/x"},
            "rollout": {"healthCheck": {"podSelector": {"matchLabels": {"app": "web"}}}}
        }
    })
}

async fn pod_selector_kept(client: &kube::Client, name: &str) -> bool {
    let api: Api<kube::api::DynamicObject> = Api::all_with(
        client.clone(),
        &kube::discovery::ApiResource::erase::<kitfleet_api::NodeImage>(&()),
    );
    let _ = api.delete(name, &DeleteParams::default()).await;
    for _ in 0..100 {
        if api.get_opt(name).await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A plain create (a server-side apply refuses a field the schema lacks instead of pruning it).
    let obj: kube::api::DynamicObject = serde_json::from_value(nodeimage(name)).unwrap();
    api.create(&Default::default(), &obj).await.unwrap();
    let back = serde_json::to_value(api.get(name).await.unwrap()).unwrap();
    !back["spec"]["rollout"]["healthCheck"]["podSelector"].is_null()
}

async fn hook_client(api: &apiserver::Apiserver, admin: &kube::Client) -> kube::Client {
    let docs = apiserver::helm_template(&[
        "nodeAgent.clusterCIDRs={10.244.0.0/16}",
        "hooks.nodeCleanup.enabled=false",
    ])
    .unwrap();
    apiserver::ensure_service_account(admin, NS, "kitfleet-crds")
        .await
        .unwrap();
    let mut applied = 0;
    for d in docs.iter().filter(|d| {
        d["metadata"]["name"] == "kitfleet-crds"
            && matches!(
                d["kind"].as_str(),
                Some("ClusterRole" | "ClusterRoleBinding")
            )
    }) {
        let hook = d["metadata"]["annotations"]["helm.sh/hook"].as_str();
        assert_eq!(hook, Some("pre-install,pre-upgrade"), "{d}");
        apiserver::apply(admin, d).await.unwrap();
        applied += 1;
    }
    assert_eq!(applied, 2, "the chart's hook ClusterRole and binding");
    api.service_account_client(NS, "kitfleet-crds")
        .await
        .unwrap()
}

#[tokio::test]
async fn the_hook_upgrades_the_crds_under_its_own_rbac() {
    let Some(api) = apiserver::shared() else {
        return;
    };
    let admin = api.admin_client().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());

    // An older CRD, as a first `helm install` of an older chart leaves it: the new field is pruned.
    apiserver::apply(&admin, &older_crd()).await.unwrap();
    apiserver::wait_established(&admin, CRD, Duration::from_secs(10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pod_selector_kept(&admin, "crds-before").await,
        "the older CRD should prune healthCheck.podSelector"
    );

    let hook = hook_client(api, &admin).await;
    let names = kitfleet_operator::crds_apply::apply_all(&hook, Duration::from_secs(30))
        .await
        .expect("the hook applies under the chart's RBAC");
    assert_eq!(names, [CRD, "securitypolicies.kitfleet.dev"]);
    let crd = crds.get(CRD).await.unwrap();
    let managers: Vec<_> = (crd.metadata.managed_fields.iter().flatten())
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.iter().any(|m| m == "kitfleet-crds"),
        "{managers:?}"
    );
    // The apiserver picks up a changed schema asynchronously: allow it a moment.
    let mut kept = false;
    for _ in 0..20 {
        if pod_selector_kept(&admin, "crds-after").await {
            kept = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        kept,
        "healthCheck.podSelector pruned after the hook's apply"
    );

    // Idempotent: a second run changes nothing.
    let rv = crds.get(CRD).await.unwrap().metadata.resource_version;
    kitfleet_operator::crds_apply::apply_all(&hook, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(crds.get(CRD).await.unwrap().metadata.resource_version, rv);

    // The hook's role reaches Kitfleet's CRDs only.
    let other = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object"}}}]}
    });
    apiserver::apply(&admin, &other).await.unwrap();
    let hook_crds: Api<CustomResourceDefinition> = Api::all(hook.clone());
    let patch = json!({"metadata": {"labels": {"touched": "yes"}}});
    let err = hook_crds
        .patch(
            "widgets.example.com",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .expect_err("the hook may not patch another CRD");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err}"
    );
    assert!(hook_crds.get("widgets.example.com").await.is_err());
}

#[test]
fn a_crd_that_is_not_established_is_reported_with_its_reason() {
    let crd = CustomResourceDefinition {
        status: Some(
            serde_json::from_value(json!({"conditions": [
                {"type": "NamesAccepted", "status": "False", "reason": "ListKindConflict",
                 "message": "\"NodeImageList\" is already in use", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ]}))
            .unwrap(),
        ),
        ..Default::default()
    };
    assert_eq!(
        kitfleet_operator::crds_apply::readiness(&crd),
        Err("NamesAccepted=False: \"NodeImageList\" is already in use".into())
    );
}
