//! Against a real kube-apiserver (the fixture of `kitfleet_e2e::apiserver`): the fixture itself (RBAC,
//! ServiceAccount clients, cleanup of killed runs), Kitfleet's CRDs and examples applied without a warning, and the
//! CRDs' CEL rules answering the shared bad objects (`crds/testdata/cel-cases.yaml`) exactly as kube's offline CEL does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node};
use kitfleet_e2e::apiserver::{self, ApplyOptions, apply, apply_raw, describe};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test]
async fn the_fixture_has_rbac_and_service_account_clients() {
    let Some(api) = apiserver::shared() else {
        return;
    };
    let t = api.start_times();
    eprintln!(
        "fixture ready in {:?}, with CRDs in {:?}",
        t.ready, t.with_crds
    );
    let admin = api.admin_client().await.unwrap();
    Api::<Namespace>::all(admin.clone())
        .get("kube-system")
        .await
        .unwrap();
    // A ServiceAccount without bindings is authenticated, and RBAC denies it.
    let sa = api
        .service_account_client("e2e-fixture", "nobody")
        .await
        .unwrap();
    match Api::<Node>::all(sa).list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(
                s.message
                    .contains("system:serviceaccount:e2e-fixture:nobody"),
                "{s:?}"
            );
        }
        other => panic!("RBAC must deny listing nodes: {other:?}"),
    }
    // The admin kubeconfig works with kubectl from the same build.
    let out = api
        .kubectl()
        .args(["get", "--raw", "/readyz"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok", "{out:?}");
}

#[tokio::test]
async fn crds_and_examples_apply_without_a_warning() {
    let Some(api) = apiserver::shared() else {
        return;
    };
    // Warnings when the fixture created the CRDs...
    let mut warnings: Vec<String> = api.crd_warnings().to_vec();
    let admin = api.admin_client().await.unwrap();
    for crd in apiserver::chart_crds().unwrap() {
        // ...when updating them...
        let a = apply(&admin, &crd).await.unwrap();
        warnings.extend(
            a.warnings
                .iter()
                .map(|w| format!("update {}: {w}", describe(&crd))),
        );
        // ...and creating the same definition under another group (dry run: nothing is stored).
        let mut copy = crd.clone();
        let plural = crd["spec"]["names"]["plural"].as_str().unwrap();
        copy["spec"]["group"] = json!("warncheck.kitfleet.dev");
        copy["metadata"]["name"] = json!(format!("{plural}.warncheck.kitfleet.dev"));
        let a = apply_raw(&admin, &copy, ApplyOptions { dry_run: true })
            .await
            .unwrap();
        assert_eq!(a.status, 201, "{}", a.body);
        warnings.extend(
            a.warnings
                .iter()
                .map(|w| format!("create {}: {w}", describe(&copy))),
        );
    }
    assert_eq!(warnings, Vec::<String>::new());
    let mut examples: Vec<_> = std::fs::read_dir(workspace().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 2, "{examples:?}");
    for path in examples {
        for obj in apiserver::documents(&std::fs::read_to_string(&path).unwrap()).unwrap() {
            if let Some(ns) = obj["metadata"]["namespace"].as_str() {
                apiserver::ensure_namespace(&admin, ns).await.unwrap();
            }
            let a = apply(&admin, &obj)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                a.warnings,
                Vec::<String>::new(),
                "{}: {}",
                path.display(),
                describe(&obj)
            );
        }
    }
}

/// One entry of `crds/testdata/cel-cases.yaml` (see there).
#[derive(serde::Deserialize)]
struct CelCase {
    name: String,
    example: String,
    set: BTreeMap<String, Value>,
    errors: Vec<String>,
}

/// Writes `value` at JSON pointer `pointer` (the parent must exist).
fn set(obj: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    match obj
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{parent} is missing"))
    {
        Value::Array(a) => a[key.parse::<usize>().unwrap()] = value,
        Value::Object(o) => {
            o.insert(key.to_string(), value);
        }
        other => panic!("{parent} is {other}"),
    }
}

#[tokio::test]
async fn cel_rules_reject_the_shared_bad_objects_server_side() {
    let Some(api) = apiserver::shared() else {
        return;
    };
    let admin = api.admin_client().await.unwrap();
    let cases: Vec<CelCase> = serde_saphyr::from_str(
        &std::fs::read_to_string(workspace().join("crds/testdata/cel-cases.yaml")).unwrap(),
    )
    .unwrap();
    assert!(cases.len() >= 15);
    for case in cases {
        let text =
            std::fs::read_to_string(workspace().join("examples").join(&case.example)).unwrap();
        let mut obj: Value = serde_saphyr::from_str(&text).unwrap();
        for (pointer, value) in &case.set {
            set(&mut obj, pointer, value.clone());
        }
        if let Some(ns) = obj["metadata"]["namespace"].as_str() {
            apiserver::ensure_namespace(&admin, ns).await.unwrap();
        }
        let a = apply_raw(&admin, &obj, ApplyOptions { dry_run: true })
            .await
            .unwrap();
        if case.errors.is_empty() {
            assert!(
                (200..300).contains(&a.status),
                "{}: HTTP {}: {}",
                case.name,
                a.status,
                a.body
            );
            continue;
        }
        assert_eq!(a.status, 422, "{}: {}", case.name, a.body);
        let causes = a.body["details"]["causes"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no causes: {}", case.name, a.body));
        assert_eq!(causes.len(), case.errors.len(), "{}: {}", case.name, a.body);
        for (cause, want) in causes.iter().zip(&case.errors) {
            // The apiserver writes "Invalid value: <value>: <rule message>".
            let (field, message) = want.split_once(": ").unwrap();
            assert_eq!(cause["field"], field, "{}: {}", case.name, a.body);
            assert!(
                cause["message"]
                    .as_str()
                    .is_some_and(|m| m.ends_with(&format!(": {message}"))),
                "{}: {cause} is not {want:?}",
                case.name
            );
        }
    }
}

/// Not a test by itself: `a_killed_run_leaves_nothing_behind` runs it in a child process, which it then kills.
#[test]
#[ignore = "helper of a_killed_run_leaves_nothing_behind"]
fn helper_hold_a_fixture_until_killed() {
    if std::env::var_os("KITFLEET_E2E_HOLD_FIXTURE").is_none() {
        return;
    }
    let api = apiserver::Apiserver::start().unwrap();
    let pids = std::fs::read_to_string(api.dir().join("pids")).unwrap();
    println!(
        "dir={} pids={}",
        api.dir().display(),
        pids.split_whitespace().collect::<Vec<_>>().join(",")
    );
    std::thread::sleep(Duration::from_secs(600));
}

fn alive(pid: u32) -> bool {
    // A zombie (state Z) has exited: only its parent's wait is missing.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z'))
    })
}

#[test]
fn a_killed_run_leaves_nothing_behind() {
    if apiserver::shared().is_none() {
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "helper_hold_a_fixture_until_killed",
            "--nocapture",
        ])
        .env("KITFLEET_E2E_HOLD_FIXTURE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let line = loop {
        let mut l = String::new();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut l).unwrap() > 0,
            "the helper ended"
        );
        if l.starts_with("dir=") {
            break l;
        }
    };
    let (dir, pids) = line.trim().split_once(" pids=").unwrap();
    let dir = PathBuf::from(dir.trim_start_matches("dir="));
    let pids: Vec<u32> = pids.split(',').map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| alive(p)));
    child.kill().unwrap(); // SIGKILL: no exit handler runs
    child.wait().unwrap();
    // PR_SET_PDEATHSIG: etcd and the apiserver die with their owner.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "{pids:?} outlived their owner");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The directory stays until the next start cleans it.
    assert!(dir.is_dir(), "{}", dir.display());
    apiserver::reap_stale();
    assert!(!dir.exists(), "{} was not cleaned", dir.display());
}

#[test]
fn reaping_kills_a_stale_process_and_spares_live_fixtures() {
    // A fixture directory whose owner is gone (a pid with another start time) and whose "etcd" still runs.
    let root = Path::new(apiserver::FIXTURES_ROOT);
    std::fs::create_dir_all(root).unwrap();
    let dir = root.join(format!("stale-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut stale = Command::new("bash")
        .arg("-c")
        .arg(format!("exec -a {}/etcd sleep 600", dir.display()))
        .spawn()
        .unwrap();
    std::fs::write(dir.join("owner"), format!("{} 1\n", std::process::id())).unwrap();
    std::fs::write(dir.join("pids"), format!("{}\n", stale.id())).unwrap();
    // A sleeping process that does not name the directory is never killed, even if listed.
    let mut bystander = Command::new("sleep").arg("600").spawn().unwrap();
    std::fs::write(
        dir.join("pids"),
        format!("{}\n{}\n", stale.id(), bystander.id()),
    )
    .unwrap();
    // Wait until bash has exec'd (the command line names the directory).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&std::fs::read(format!("/proc/{}/cmdline", stale.id())).unwrap())
        .contains(&*dir.to_string_lossy())
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    apiserver::reap_stale();
    let status = stale.wait().unwrap();
    assert!(!status.success(), "killed: {status:?}");
    assert!(!dir.exists());
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander must live"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}
