use super::*;
use crate::csi::attrs::{PodInfo, Requested, VolumeAttrs, set_hash};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: Some(values.iter().map(|s| s.to_string()).collect()),
    }
}

fn policy(name: &str, uid: &str, generation: i64, app: Option<&str>) -> SecurityPolicy {
    let mut p = SecurityPolicy::new(name, Default::default());
    p.metadata.namespace = Some("shop".into());
    p.metadata.uid = Some(uid.into());
    p.metadata.generation = Some(generation);
    if let Some(app) = app {
        p.spec.pod_selector.match_labels = Some(labels(&[("app", app)]));
    }
    p
}

#[test]
fn selectors_match_like_kubernetes() {
    let l = labels(&[("app", "web"), ("tier", "front")]);
    let sel = |ml: Option<&[(&str, &str)]>, me: Vec<LabelSelectorRequirement>| LabelSelector {
        match_labels: ml.map(labels),
        match_expressions: Some(me),
    };
    let cases = [
        (sel(None, vec![]), true),
        (sel(Some(&[("app", "web")]), vec![]), true),
        (sel(Some(&[("app", "db")]), vec![]), false),
        (
            sel(None, vec![expr("tier", "In", &["front", "back"])]),
            true,
        ),
        (sel(None, vec![expr("tier", "In", &["back"])]), false),
        (sel(None, vec![expr("tier", "NotIn", &["back"])]), true),
        (sel(None, vec![expr("zone", "NotIn", &["a"])]), true),
        (sel(None, vec![expr("app", "Exists", &[])]), true),
        (sel(None, vec![expr("zone", "Exists", &[])]), false),
        (sel(None, vec![expr("zone", "DoesNotExist", &[])]), true),
        (sel(None, vec![expr("app", "Matches", &["web"])]), false),
        (
            sel(Some(&[("app", "web")]), vec![expr("tier", "In", &["back"])]),
            false,
        ),
    ];
    for (i, (s, want)) in cases.iter().enumerate() {
        assert_eq!(selector_matches(s, &l), *want, "case {i}: {s:?}");
    }
}

fn attrs_for(reqs: &[(&str, i64)], hash: String) -> VolumeAttrs {
    VolumeAttrs {
        pod: PodInfo {
            name: "web-0".into(),
            namespace: "shop".into(),
            uid: "p1".into(),
        },
        policies: reqs
            .iter()
            .map(|(n, g)| Requested {
                name: n.to_string(),
                generation: *g,
            })
            .collect(),
        set_hash: hash,
        mount_path: "/.kitfleet".into(),
    }
}

#[test]
fn set_changes_are_named() {
    let web = policy("web", "u1", 2, Some("web"));
    let base = policy("base", "u2", 1, None);
    let db = policy("db", "u3", 1, Some("db"));
    let all = vec![web.clone(), db, base.clone()];
    let set = current_set(&all, &labels(&[("app", "web")]));
    assert_eq!(
        set.iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect::<Vec<_>>(),
        ["base", "web"]
    );
    let hash = set_hash("shop", &[policy_ref(&base), policy_ref(&web)]);
    let ok = attrs_for(&[("base", 1), ("web", 2)], hash.clone());
    assert_eq!(check_set(&ok, &set), Ok(()));

    // Generation bumped.
    let mut web3 = web.clone();
    web3.metadata.generation = Some(3);
    let e = check_set(&ok, &[base.clone(), web3]).unwrap_err();
    assert_eq!(e, ["policy shop/web generation 2 → 3"]);
    // Deleted, and a new one matching.
    let extra = policy("extra", "u9", 4, None);
    let e = check_set(&ok, &[base.clone(), extra]).unwrap_err();
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].contains("shop/web (generation 2) no longer applies"),
        "{e:?}"
    );
    assert!(
        e[1].contains("shop/extra (generation 4) now matches"),
        "{e:?}"
    );
    // Recreated with the same name and generation: only the hash (uid) tells.
    let mut web_again = web.clone();
    web_again.metadata.uid = Some("u-new".into());
    let e = check_set(&ok, &[base, web_again]).unwrap_err();
    assert!(e[0].contains("deleted and created again"), "{e:?}");
}

#[tokio::test]
async fn dir_and_memory_sources_answer_alike() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(
        t.path().join("objects.yaml"),
        "apiVersion: kitfleet.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: web, namespace: shop, uid: u1, generation: 2}\nspec: {podSelector: {matchLabels: {app: web}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: shop, uid: p1, labels: {app: web}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    )
    .unwrap();
    std::fs::write(t.path().join(".hidden.yaml"), "not: [valid").unwrap();
    let dir = DirSource::new(t.path());
    let mem = MemorySource::new();
    mem.put_policy(policy("web", "u1", 2, Some("web")));
    mem.put_pod(
        "shop",
        "web-0",
        PodFacts {
            uid: "p1".into(),
            labels: labels(&[("app", "web")]),
        },
    );
    for (name, ps, pod, none) in [
        (
            "dir",
            dir.policies("shop").await.unwrap(),
            dir.pod("shop", "web-0").await.unwrap(),
            dir.pod("shop", "nope").await.unwrap(),
        ),
        (
            "memory",
            mem.policies("shop").await.unwrap(),
            mem.pod("shop", "web-0").await.unwrap(),
            mem.pod("shop", "nope").await.unwrap(),
        ),
    ] {
        assert_eq!(ps.len(), 1, "{name}");
        assert_eq!(policy_ref(&ps[0]).generation, 2, "{name}");
        assert_eq!(pod.unwrap().labels, labels(&[("app", "web")]), "{name}");
        assert!(none.is_none(), "{name}");
    }
    assert!(dir.policies("other").await.unwrap().is_empty());
    mem.delete_policy("shop", "web");
    assert!(mem.policies("shop").await.unwrap().is_empty());
    std::fs::write(
        t.path().join("bad.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: 7\n",
    )
    .unwrap();
    let e = dir.policies("shop").await.unwrap_err().to_string();
    assert!(e.contains("bad.yaml"), "{e}");
}
