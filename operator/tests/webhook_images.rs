//! The mutating webhook with a real registry (Debian's `docker-registry`): a container without `command` gets the
//! image's Entrypoint + Cmd read from the registry; an unreadable image refuses the pod naming it; a digest-pinned
//! image is answered from the cache once the registry is gone.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kitfleet_api::SecurityPolicy;
use kitfleet_builder::fixtures::{ImageSpec, Registry};
use kitfleet_operator::webhook::images::RegistryImages;
use kitfleet_operator::webhook::mutate::{self, Outcome};
use serde_json::json;

fn registry() -> Option<Registry> {
    match Registry::start() {
        Ok(r) => Some(r),
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!(
                "skipped: docker-registry: {e} (apt-get install docker-registry; CI=true fails instead)"
            );
            None
        }
        Err(e) => panic!("docker-registry: {e}"),
    }
}

fn policy() -> SecurityPolicy {
    serde_json::from_value(json!({
        "apiVersion": "kitfleet.dev/v1alpha1", "kind": "SecurityPolicy",
        "metadata": {"name": "web", "namespace": "shop", "uid": "u", "generation": 1},
        "spec": {"podSelector": {}},
    }))
    .unwrap()
}

fn pod(images: &[&str]) -> Pod {
    let containers: Vec<_> = images
        .iter()
        .enumerate()
        .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
        .collect();
    serde_json::from_value(
        json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": {"containers": containers}}),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_entrypoint_only_reads_the_registry_and_caches_by_digest() {
    let Some(reg) = registry() else { return };
    let a = reg.addr.clone();
    let image = ImageSpec {
        entrypoint: Some(vec!["/bin/server".into()]),
        cmd: Some(vec!["--port".into(), "80".into()]),
        ..Default::default()
    }
    .build()
    .unwrap();
    let digest = image.push(&format!("{a}/shop/server:1")).await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let images = RegistryImages::new(
        cache.path(),
        "amd64",
        vec![a.clone()],
        None,
        Duration::from_secs(60),
    )
    .unwrap();

    let tagged = format!("{a}/shop/server:1");
    let pinned = format!("{a}/shop/server@{digest}");
    let missing = format!("{a}/shop/missing:1");
    let p = pod(&[&tagged, &pinned]);
    let wanted = mutate::images_to_look_up(&p);
    assert_eq!(wanted, vec![tagged.clone(), pinned.clone()]);
    let looked_up = images.look_up(&wanted).await;
    let out = mutate::mutate(&p, "shop", "kitfleet-system", &[policy()], &looked_up).unwrap();
    let Outcome::Mutated { patch, .. } = out else {
        panic!("{out:?}")
    };
    let commands: Vec<_> = patch
        .iter()
        .filter(|op| op["path"].as_str().unwrap().ends_with("/command"))
        .map(|op| op["value"].clone())
        .collect();
    let want = json!([
        mutate::LAUNCHER,
        "exec",
        "--policy",
        mutate::POLICY_FILE,
        "--",
        "/bin/server",
        "--port",
        "80"
    ]);
    assert_eq!(commands, vec![want.clone(), want]);

    // An image the registry does not have: refused, naming the image and the container.
    let p = pod(&[&missing]);
    let looked_up = images.look_up(&mutate::images_to_look_up(&p)).await;
    let e = mutate::mutate(&p, "shop", "kitfleet-system", &[policy()], &looked_up).unwrap_err();
    let m = e.to_string();
    assert!(
        m.starts_with(&format!("spec.containers[0].command: image {missing:?}")),
        "{m}"
    );

    // The registry goes away: both lookups are answered from memory (the tag within its TTL, the digest forever).
    drop(reg);
    assert!(images.argv(&pinned).await.is_ok());
    assert!(images.argv(&tagged).await.is_ok());
    let fresh = RegistryImages::new(cache.path(), "amd64", vec![a], None, Duration::ZERO).unwrap();
    // A new client with an expired tag must ask the registry: it fails now. The pinned digest's manifest and config
    // are in the on-disk cache by digest, so it still resolves.
    assert!(fresh.argv(&tagged).await.is_err());
    assert_eq!(
        fresh.argv(&pinned).await.unwrap().entrypoint,
        vec!["/bin/server".to_string()]
    );
}

#[test]
fn no_lookup_needed_when_every_container_has_a_command() {
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "a", "image": "nowhere.invalid/a:1", "command": ["/a"]}]}}))
    .unwrap();
    assert!(mutate::images_to_look_up(&p).is_empty());
    let out = mutate::mutate(&p, "shop", "kitfleet-system", &[policy()], &BTreeMap::new()).unwrap();
    assert!(matches!(out, Outcome::Mutated { .. }));
}
