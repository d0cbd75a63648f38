//! The operator/builder contract, for real: the operator resolves a NodeImage against Debian's `docker-registry` on
//! 127.0.0.1, generates its build Job, and the Job's container command line runs with the real `kitfleet-build`
//! binary (paths of the Job's volumes mapped to temporary directories, the pod's environment only). Then the
//! operator's artifact lookup must find what the build pushed, under the operator's build key, with the digests the
//! build reported — and the decision adopts it.
//!
//! Needs `docker-registry`, `busybox-static` and `linux-image-cloud-amd64` (Debian). Builds `kitfleet-build` with
//! cargo unless `KITFLEET_BUILD_BIN` names the binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::jiff::Timestamp;
use kitfleet_api::{NodeImage, NodeImageStatus};
use kitfleet_builder::fixtures::{self, Registry};
use kitfleet_operator::build::decide::{self, Action, JobState, JobView, Lookup, Observed, Policy};
use kitfleet_operator::build::job::{self, ANNOTATION_MANIFEST, JobSettings};
use kitfleet_operator::build::registry::{ArtifactRegistry, BuilderRegistry, PullSecret};
use kitfleet_operator::config::BuildSettings;
use oci_client::secrets::RegistryAuth;

/// The `kitfleet-build` binary of this workspace, built now so that it matches the builder library linked here.
fn builder_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KITFLEET_BUILD_BIN") {
        return PathBuf::from(p);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", "kitfleet-builder", "--bin", "kitfleet-build"])
        .current_dir(workspace)
        .status()
        .expect("running cargo");
    assert!(
        status.success(),
        "cargo build -p kitfleet-builder --bin kitfleet-build failed"
    );
    // target/debug/deps/contract-… → target/debug/kitfleet-build
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("kitfleet-build");
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

fn settings(registry: &str) -> JobSettings {
    JobSettings {
        builder_image: "kitfleet-build:test".into(),
        namespace: "kitfleet-system".into(),
        cache_pvc: None,
        insecure_registries: vec![registry.to_string()],
        arch: "amd64".into(),
        build: BuildSettings::default(),
    }
}

/// Runs the Job's container as the kubelet would, with its volumes as directories under `root`.
fn run_job_container(
    job: &k8s_openapi::api::batch::v1::Job,
    bin: &Path,
    root: &Path,
    secret: Option<&[u8]>,
) -> serde_json::Value {
    let tpl = &job.spec.as_ref().unwrap().template;
    let manifest =
        &tpl.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[ANNOTATION_MANIFEST];
    let c = &tpl.spec.as_ref().unwrap().containers[0];
    let map = |p: &str| -> String {
        for (inside, outside) in [
            ("/etc/kitfleet/build", "manifest"),
            ("/work", "work"),
            ("/cache", "cache"),
            ("/var/run/kitfleet/push", "push"),
        ] {
            if let Some(rest) = p.strip_prefix(inside) {
                return format!("{}{rest}", root.join(outside).display());
            }
        }
        p.to_string()
    };
    for d in ["manifest", "work", "cache", "push"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    // The secret volume, when the pod has one.
    let has_secret = tpl
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .any(|v| v.secret.is_some());
    assert_eq!(
        has_secret,
        secret.is_some(),
        "the push secret is mounted exactly when named"
    );
    if let Some(s) = secret {
        std::fs::write(map(job::DOCKER_CONFIG_PATH), s).unwrap();
    }
    // The downward-API volume: the annotation becomes the file.
    std::fs::write(map(job::MANIFEST_PATH), manifest).unwrap();
    let argv: Vec<String> = c.command.as_ref().unwrap().iter().map(|a| map(a)).collect();
    assert_eq!(argv[0], "kitfleet-build");
    let mut cmd = Command::new(bin);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    for e in c.env.as_ref().unwrap() {
        cmd.env(&e.name, map(e.value.as_deref().unwrap_or_default()));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "the Job's command failed ({}): {}\nargv: {argv:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json summary on stdout")
}

#[test]
fn the_job_command_builds_and_pushes_what_the_operator_then_adopts() {
    contract(false);
}

/// The same against a registry that requires basic auth: the NodeImage names a push secret; the operator reads with
/// its credentials, the Job gets it mounted and passes it as `--docker-config`.
#[test]
fn with_a_push_secret_against_an_authenticating_registry() {
    contract(true);
}

const USER: &str = "kit";
const PASSWORD: &str = "s3cret";

fn push(rt: &tokio::runtime::Runtime, image: fixtures::ImageSpec, reference: &str, auth: bool) {
    let creds = if auth {
        RegistryAuth::Basic(USER.into(), PASSWORD.into())
    } else {
        RegistryAuth::Anonymous
    };
    rt.block_on(image.build().unwrap().push_auth(reference, &creds))
        .unwrap();
}

fn contract(auth: bool) {
    let bin = builder_binary();
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let reg = Registry::start_with(auth.then_some((USER, hash.as_str())))
        .expect("docker-registry (apt-get install docker-registry)");
    let a = reg.addr.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let docker_config =
        format!(r#"{{"auths":{{"{a}":{{"username":"{USER}","password":"{PASSWORD}"}}}}}}"#)
            .into_bytes();
    let secret = auth.then(|| PullSecret(docker_config.clone()));
    let secret = secret.as_ref();
    push(
        &rt,
        fixtures::kernel_image().unwrap(),
        &format!("{a}/fixtures/kernel:6.1"),
        auth,
    );
    push(
        &rt,
        fixtures::init_image().unwrap(),
        &format!("{a}/fixtures/init:v1"),
        auth,
    );
    let mut ni = NodeImage::from_yaml(&format!(
        "apiVersion: kitfleet.dev/v1alpha1\nkind: NodeImage\nmetadata:\n  name: contract\nspec:\n  kernel:\n    image: {a}/fixtures/kernel:6.1\n    cmdline: console=ttyS0\n  init:\n  - {a}/fixtures/init:v1\n  files:\n  - path: etc/kitfleet/hello\n    contents: hello\n  formats: [kernel+initrd, tar]\n  output:\n    repository: {a}/kitfleet/contract\n{}",
        if auth { "    pushSecretName: push\n" } else { "" }
    ))
    .unwrap();
    ni.metadata.uid = Some("uid-contract".into());
    ni.metadata.generation = Some(1);

    // The operator resolves and finds nothing published yet.
    let work = tempfile::tempdir().unwrap();
    let registry = BuilderRegistry::new(
        &work.path().join("operator-cache"),
        "amd64",
        vec![a.clone()],
        None,
    )
    .unwrap();
    let resolution = rt.block_on(registry.resolve(&ni.spec, secret)).unwrap();
    let key = resolution
        .build_key
        .clone()
        .expect("every fixture reference resolves");
    assert!(
        resolution
            .resolved
            .iter()
            .all(|r| r.digest.is_some() && r.error.is_none()),
        "{resolution:?}"
    );
    assert_eq!(
        rt.block_on(registry.lookup(&ni.spec.output.repository, &key, secret))
            .unwrap(),
        None
    );
    if auth {
        let e = rt.block_on(registry.resolve(&ni.spec, None)).unwrap();
        assert!(
            e.build_key.is_none(),
            "anonymous resolution must fail against the authenticating registry"
        );
        let e = rt.block_on(registry.lookup(&ni.spec.output.repository, &key, None));
        assert!(
            e.is_err(),
            "an anonymous lookup is an error, not \"absent\": {e:?}"
        );
    }

    // Its decision: one build Job, generated from the recorded digests.
    let now = Timestamp::now();
    let policy = Policy {
        retry_base: std::time::Duration::from_secs(30),
        retry_max: std::time::Duration::from_secs(900),
    };
    let obs = Observed {
        ni: &ni,
        resolution: Some(&resolution),
        jobs: &[],
        lookup: &Lookup::Absent,
        secret_error: None,
        now,
    };
    let d = decide::decide(&obs, &policy);
    assert_eq!(
        d.action,
        Action::Build {
            build_key: key.clone(),
            attempt: 1
        }
    );
    ni.status = d.status.clone();
    let job = job::build_job(&ni, &key, 1, &settings(&a)).unwrap();

    // A tag moves upstream after the resolution: the Job still builds the recorded digests.
    push(
        &rt,
        fixtures::marker_image("moved").unwrap(),
        &format!("{a}/fixtures/init:v1"),
        auth,
    );

    let summary = run_job_container(
        &job,
        &bin,
        &work.path().join("pod"),
        auth.then_some(docker_config.as_slice()),
    );
    let built_key = summary["build"]["buildKey"].as_str().unwrap();
    assert_eq!(
        format!("sha256:{built_key}"),
        key,
        "the Job computed another build key than the operator"
    );
    let published = &summary["published"];
    let pushed_digest = published["digest"].as_str().unwrap();
    assert_eq!(
        published["reference"].as_str().unwrap(),
        format!("{a}/kitfleet/contract:bk-{built_key}"),
        "pushed under the tag derived from the build key"
    );

    // The operator's lookup finds that artifact, with the digests the build reported.
    let found = rt
        .block_on(registry.lookup(&ni.spec.output.repository, &key, secret))
        .unwrap()
        .expect("artifact found");
    assert_eq!(found.digest, pushed_digest);
    assert_eq!(found.short_digest, pushed_digest[7..19]);
    assert_eq!(
        found.reference,
        format!("{a}/kitfleet/contract:bk-{built_key}@{pushed_digest}")
    );
    let output = |format: &str, role: &str| {
        summary["build"]["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["format"] == format && o["role"] == role)
            .unwrap_or_else(|| panic!("no {format}/{role} output in {summary}"))
            .clone()
    };
    let formats: Vec<(String, String, i64)> = found
        .formats
        .iter()
        .map(|f| (f.format.clone(), f.digest.clone(), f.size))
        .collect();
    let want: Vec<(String, String, i64)> = [("kernel+initrd", "initrd"), ("tar", "tar")]
        .iter()
        .map(|(f, r)| {
            let o = output(f, r);
            (
                f.to_string(),
                o["digest"].as_str().unwrap().to_string(),
                o["size"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(formats, want);

    // The decisions: the succeeded Job's artifact is recorded; without the Job, the artifact is adopted.
    let done = [JobView {
        name: job::job_name(&ni, &key, 1),
        build_key: key.clone(),
        attempt: 1,
        state: JobState::Succeeded,
        finished: Some(now),
    }];
    let lookup = Lookup::Found(found.clone());
    let d = decide::decide(
        &Observed {
            ni: &ni,
            resolution: None,
            jobs: &done,
            lookup: &lookup,
            secret_error: None,
            now,
        },
        &policy,
    );
    assert!(
        matches!(&d.action, Action::Built { artifact, .. } if *artifact == found),
        "{:?}",
        d.action
    );
    let d = decide::decide(
        &Observed {
            ni: &ni,
            resolution: None,
            jobs: &[],
            lookup: &lookup,
            secret_error: None,
            now,
        },
        &policy,
    );
    assert_eq!(d.action, Action::Adopt(found.clone()));
    let status: NodeImageStatus = d.status.unwrap();
    assert_eq!(status.artifact, Some(found));
    assert_eq!(status.build_key.as_deref(), Some(key.as_str()));
}
