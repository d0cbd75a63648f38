//! Image sources against a real `docker-registry` and local OCI layouts: multi-platform indexes
//! with `--arch`, basic auth from a Docker config file, plain HTTP only for insecure registries,
//! layout selection by tag and digest.

use std::collections::BTreeMap;

use kitfleet_builder::Error;
use kitfleet_builder::auth::Credentials;
use kitfleet_builder::cache::Cache;
use kitfleet_builder::digest::sha256;
use kitfleet_builder::fixtures::{ImageSpec, Registry};
use kitfleet_builder::oci::{Descriptor, Document, MT_OCI_INDEX, MT_OCI_MANIFEST, Platform};
use kitfleet_builder::reference::ImageRef;
use kitfleet_builder::source::{SourceOptions, Sources};
use kitfleet_builder::tree::Entry;
use oci_client::secrets::RegistryAuth;

fn tiny(text: &str) -> ImageSpec {
    ImageSpec {
        layers: vec![vec![Entry::file(
            "hello",
            text.as_bytes().to_vec(),
            0o644,
            0,
        )]],
        ..Default::default()
    }
}

fn sources(dir: &std::path::Path, insecure: &[&str], creds: Credentials, arch: &str) -> Sources {
    Sources::new(
        Cache::open(dir).unwrap(),
        SourceOptions {
            arch: arch.into(),
            insecure_registries: insecure.iter().map(|s| s.to_string()).collect(),
            credentials: creds,
            offline: false,
        },
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn index_selects_the_platform_and_insecure_is_opt_in() {
    let reg = Registry::start().unwrap();
    let a = reg.addr.clone();
    let amd = tiny("amd64").build().unwrap();
    let arm = tiny("arm64").build().unwrap();
    amd.push(&format!("{a}/multi/img:amd")).await.unwrap();
    arm.push(&format!("{a}/multi/img:arm")).await.unwrap();
    let entry = |img: &kitfleet_builder::fixtures::OciImage, arch: &str| Descriptor {
        media_type: MT_OCI_MANIFEST.into(),
        digest: img.digest.clone(),
        size: img.manifest.len() as u64,
        platform: Some(Platform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: None,
        }),
        annotations: BTreeMap::new(),
    };
    let index = Document {
        schema_version: 2,
        media_type: Some(MT_OCI_INDEX.into()),
        artifact_type: None,
        config: None,
        layers: None,
        manifests: Some(vec![entry(&arm, "arm64"), entry(&amd, "amd64")]),
        annotations: BTreeMap::new(),
    };
    let body = serde_json::to_vec(&index).unwrap();
    let index_digest = sha256(&body);
    kitfleet_builder::source::install_crypto_provider();
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let r: oci_client::Reference = format!("{a}/multi/img:v1").parse().unwrap();
    client
        .auth(
            &r,
            &RegistryAuth::Anonymous,
            oci_client::RegistryOperation::Push,
        )
        .await
        .unwrap();
    client
        .push_manifest_raw(&r, body, MT_OCI_INDEX.parse().unwrap())
        .await
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let reference = ImageRef::parse(&format!("{a}/multi/img:v1"), "init[0]").unwrap();
    for (arch, want) in [("amd64", &amd), ("arm64", &arm)] {
        let s = sources(
            &tmp.path().join(arch),
            &[&a],
            Credentials::anonymous(),
            arch,
        );
        let res = s.resolve(&reference, "init[0]").await.unwrap();
        assert_eq!(
            res.digest, index_digest,
            "the build key records the index digest"
        );
        assert_eq!(res.manifest_digest, want.digest, "{arch}");
    }
    let s = sources(
        &tmp.path().join("riscv"),
        &[&a],
        Credentials::anonymous(),
        "riscv64",
    );
    let e = s.resolve(&reference, "init[0]").await.unwrap_err();
    assert!(matches!(e, Error::NoPlatform { .. }), "{e}");
    assert!(e.to_string().contains("linux/arm64, linux/amd64"), "{e}");

    // Without --insecure-registry the client speaks HTTPS and fails against the plain-HTTP registry.
    let s = sources(
        &tmp.path().join("secure"),
        &[],
        Credentials::anonymous(),
        "amd64",
    );
    let e = s.resolve(&reference, "init[0]").await.unwrap_err();
    assert!(matches!(e, Error::Registry { .. }), "{e}");
    assert_eq!(e.exit_code(), 3);

    // A pinned digest resolves offline once cached, and a wrong pin is refused.
    let pinned = ImageRef::parse(&format!("{a}/multi/img@{index_digest}"), "init[0]").unwrap();
    let offline = Sources::new(
        Cache::open(tmp.path().join("amd64")).unwrap(),
        SourceOptions {
            offline: true,
            ..Default::default()
        },
    );
    assert_eq!(
        offline
            .resolve(&pinned, "init[0]")
            .await
            .unwrap()
            .manifest_digest,
        amd.digest
    );
    let missing =
        ImageRef::parse(&format!("{a}/multi/img@sha256:{}", "0".repeat(64)), "x").unwrap();
    let s = sources(
        &tmp.path().join("missing"),
        &[&a],
        Credentials::anonymous(),
        "amd64",
    );
    assert!(matches!(
        s.resolve(&missing, "x").await.unwrap_err(),
        Error::Registry { .. }
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_from_a_docker_config() {
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let reg = Registry::start_with(Some(("kit", &hash))).unwrap();
    let a = reg.addr.clone();
    let img = tiny("private").build().unwrap();
    img.push_auth(
        &format!("{a}/private/img:v1"),
        &RegistryAuth::Basic("kit".into(), "s3cret".into()),
    )
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let reference = ImageRef::parse(&format!("{a}/private/img:v1"), "init[0]").unwrap();

    let anon = sources(
        &tmp.path().join("anon"),
        &[&a],
        Credentials::anonymous(),
        "amd64",
    );
    let e = anon.resolve(&reference, "init[0]").await.unwrap_err();
    assert!(matches!(e, Error::Registry { .. }), "{e}");

    let cfg = tmp.path().join("config.json");
    let auth = base64_encode("kit:s3cret");
    std::fs::write(
        &cfg,
        format!(r#"{{"auths":{{"{a}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let creds = Credentials::from_file(&cfg).unwrap();
    let s = sources(&tmp.path().join("auth"), &[&a], creds, "amd64");
    let res = s.resolve(&reference, "init[0]").await.unwrap();
    assert_eq!(res.digest, img.digest);
    let blob = s.blob(&res.reference, &res.layers()[0]).await.unwrap();
    assert_eq!(sha256(&blob), res.layers()[0].digest);
}

fn base64_encode(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn layouts_select_by_tag_and_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tiny("layout").build().unwrap();
    let dir = tmp.path().join("lay");
    img.write_layout(&dir, "v1").unwrap();
    let s = sources(
        &tmp.path().join("cache"),
        &[],
        Credentials::anonymous(),
        "amd64",
    );
    for r in [
        format!("oci:{}:v1", dir.display()),
        format!("oci:{}@{}", dir.display(), img.digest),
        format!("oci:{}", dir.display()),
    ] {
        let res = s
            .resolve(&ImageRef::parse(&r, "init[0]").unwrap(), "init[0]")
            .await
            .unwrap();
        assert_eq!(res.digest, img.digest, "{r}");
    }
    let e = s
        .resolve(
            &ImageRef::parse(&format!("oci:{}:nope", dir.display()), "x").unwrap(),
            "x",
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no manifest tagged \"nope\""), "{e}");
    // A tampered blob is detected.
    let layer = &img.layers[0].0;
    std::fs::write(
        dir.join("blobs/sha256")
            .join(layer.trim_start_matches("sha256:")),
        b"tampered",
    )
    .unwrap();
    let res = s
        .resolve(
            &ImageRef::parse(&format!("oci:{}:v1", dir.display()), "x").unwrap(),
            "x",
        )
        .await
        .unwrap();
    let desc = res.layers()[0].clone();
    assert_eq!(&desc.digest, layer);
    let e = s.blob(&res.reference, &desc).await.unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
}
