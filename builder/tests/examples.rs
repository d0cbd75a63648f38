//! Every manifest in `shared/linuxkit-examples/` converts to a NodeImage and back, and yields a
//! build plan offline in which each unreachable reference is reported as unresolved (no digest is
//! ever invented).

use std::path::PathBuf;
use std::process::Command;

use kitfleet_api::linuxkit::Config;

/// `$KITFLEET_SHARED/linuxkit-examples` (default: `../shared` beside the workspace). A fresh clone has no corpus: then
/// no examples and the test skips, except under `CI=true`, where it fails.
fn examples() -> Vec<PathBuf> {
    let shared = std::env::var_os("KITFLEET_SHARED").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
        PathBuf::from,
    );
    let dir = shared.join("linuxkit-examples");
    if !dir.is_dir() && std::env::var("CI").as_deref() != Ok("true") {
        eprintln!(
            "skipping: {} is missing (set KITFLEET_SHARED to the shared/ folder holding linuxkit-examples/)",
            dir.display()
        );
        return Vec::new();
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    v.sort();
    assert!(
        v.len() >= 10,
        "expected the LinuxKit examples, found {}",
        v.len()
    );
    v
}

fn run(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_kitfleet-build"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn every_example_converts_and_plans_offline() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    for ex in examples() {
        let original = Config::from_yaml(&std::fs::read_to_string(&ex).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", ex.display()));
        let (code, nodeimage, err) = run(&["convert".as_ref(), ex.as_os_str()]);
        assert_eq!(code, 0, "{}: {err}", ex.display());
        assert!(
            nodeimage.starts_with("apiVersion: kitfleet.dev/v1alpha1\nkind: NodeImage\n"),
            "{nodeimage}"
        );
        let ni_path = work.path().join("ni.yaml");
        std::fs::write(&ni_path, &nodeimage).unwrap();
        let (code, back, err) = run(&["convert".as_ref(), ni_path.as_os_str()]);
        assert_eq!(code, 0, "{}: {err}", ex.display());
        assert_eq!(
            Config::from_yaml(&back).unwrap(),
            original,
            "{}: round trip changed the declaration",
            ex.display()
        );

        let (code, out, err) = run(&[
            "resolve".as_ref(),
            ex.as_os_str(),
            "--offline".as_ref(),
            "--json".as_ref(),
            "--cache".as_ref(),
            cache.as_os_str(),
        ]);
        assert_eq!(
            code,
            3,
            "{}: unresolved references must give exit code 3: {err}",
            ex.display()
        );
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        let refs = report["references"].as_array().unwrap();
        assert_eq!(refs.len(), original.references().len(), "{}", ex.display());
        for r in refs {
            assert!(
                r.get("digest").is_none(),
                "{}: invented digest {r}",
                ex.display()
            );
            assert!(r["unresolved"].as_str().unwrap().contains("offline"), "{r}");
        }
        assert!(report.get("buildKey").is_none());
        let plan = report["plan"].as_array().unwrap();
        let bundles = original.onboot.len() + original.onshutdown.len() + original.services.len();
        let planned = plan
            .iter()
            .filter(|p| p["path"].as_str().unwrap().starts_with("containers/"))
            .count();
        assert_eq!(
            planned,
            bundles + original.volumes.len(),
            "{}",
            ex.display()
        );
        assert!(
            plan.iter()
                .filter(|p| !p["location"].as_str().unwrap().starts_with("files"))
                .all(|p| p["resolved"] == false)
        );
    }
}
