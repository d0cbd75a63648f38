//! Every LinuxKit example manifest parses, validates, converts to a NodeImage and back without loss.

use std::path::PathBuf;

use kitfleet_api::linuxkit::Config;
use kitfleet_api::nodeimage::OutputSpec;
use kitfleet_api::{NodeImage, OutputFormat, validate};

/// `$KITFLEET_SHARED/linuxkit-examples` (default: `../shared` beside the workspace). A fresh clone has no corpus: then
/// `None` and the tests skip, except under `CI=true`, where they fail.
fn examples_dir() -> Option<PathBuf> {
    let shared = std::env::var_os("KITFLEET_SHARED").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
        PathBuf::from,
    );
    let dir = shared.join("linuxkit-examples");
    if dir.is_dir() || std::env::var("CI").as_deref() == Ok("true") {
        return Some(dir);
    }
    eprintln!(
        "skipping: {} is missing (set KITFLEET_SHARED to the shared/ folder holding linuxkit-examples/)",
        dir.display()
    );
    None
}

fn examples() -> Vec<(String, String)> {
    let Some(dir) = examples_dir() else {
        return Vec::new();
    };
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (set KITFLEET_SHARED to the shared/ folder)",
                dir.display()
            )
        })
        .map(|e| e.expect("readable directory").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Drops what carries no meaning in LinuxKit's model: `false` booleans (its zero value) and empty top-level lists.
fn normalize(v: &mut serde_json::Value, top: bool) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, v| {
                !(v.is_null()
                    || *v == serde_json::Value::Bool(false)
                    || (top && v.as_array().is_some_and(Vec::is_empty)))
            });
            m.values_mut().for_each(|v| normalize(v, false));
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|v| normalize(v, false)),
        _ => {}
    }
}

#[test]
fn the_corpus_is_there() {
    let Some(dir) = examples_dir() else { return };
    assert!(
        examples().len() >= 30,
        "expected LinuxKit's examples in {}",
        dir.display()
    );
}

#[test]
fn every_example_parses_and_validates() {
    if examples_dir().is_none() {
        return;
    }
    // Kitfleet pins every reference for reproducible builds; LinuxKit lets these float to `latest`.
    let expected: &[(&str, &str)] = &[
        (
            "dm-crypt-loop.yml",
            "onboot[7].image: \"busybox\" has no tag or digest",
        ),
        (
            "dm-crypt.yml",
            "onboot[5].image: \"busybox\" has no tag or digest",
        ),
    ];
    let mut got = Vec::new();
    for (name, text) in examples() {
        let config = Config::from_yaml(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(config.kernel.is_some(), "{name}: kernel lost");
        if let Err(errs) = validate::linuxkit(&config) {
            got.extend(errs.0.iter().map(|e| (name.clone(), e.to_string())));
        }
    }
    let got: Vec<(&str, &str)> = got.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(got, expected);
}

#[test]
fn every_example_round_trips_through_linuxkit_yaml_without_loss() {
    for (name, text) in examples() {
        let config = Config::from_yaml(&text).unwrap();
        // Semantic equality with the source document itself, not only with our own parse of it.
        let mut source = kitfleet_api::linuxkit::read_yaml(&text).unwrap();
        let mut ours = serde_json::to_value(&config).unwrap();
        normalize(&mut source, true);
        normalize(&mut ours, true);
        assert_eq!(ours, source, "{name}: the model changed the document");
        let again = Config::from_yaml(&config.to_yaml()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(again, config, "{name}");
    }
}

#[test]
fn every_example_round_trips_through_a_nodeimage() {
    let output = OutputSpec {
        repository: "127.0.0.1:5000/fleet/node".into(),
        push_secret_name: None,
    };
    for (name, text) in examples() {
        let config = Config::from_yaml(&text).unwrap();
        let ni = NodeImage::from_linuxkit(
            name.trim_end_matches(".yml"),
            config.clone(),
            vec![OutputFormat::RawEfi],
            output.clone(),
        );
        let yaml = ni.to_yaml();
        let back = NodeImage::from_yaml(&yaml).unwrap_or_else(|e| panic!("{name}: {e}\n{yaml}"));
        assert_eq!(back.spec.image, config, "{name}");
        assert_eq!(
            Config::from_yaml(&back.spec.image.to_yaml()).unwrap(),
            config,
            "{name}"
        );
    }
}

#[test]
fn an_unknown_field_is_named_as_linuxkit_would() {
    let text = "kernel:\n  image: linuxkit/kernel:6.12.59\nonboot:\n  - name: a\n    image: linuxkit/a:1\n    commnd: [x]\n";
    let err = Config::from_yaml(text).unwrap_err();
    let fields = err.fields().expect("a field error, not a YAML error");
    assert_eq!(fields.0.len(), 1, "{err}");
    assert_eq!(fields.0[0].path, "onboot[0].commnd");
    assert_eq!(fields.0[0].message, "unknown field");
}

#[test]
fn a_wrong_type_names_its_field() {
    let text = "kernel:\n  image: linuxkit/kernel:6.12.59\nservices:\n  - name: a\n    image: linuxkit/a:1\n    readonly: maybe\n";
    let err = Config::from_yaml(text).unwrap_err();
    let f = &err.fields().expect("field error").0[0];
    assert_eq!(f.path, "services[0].readonly", "{err}");
}

#[test]
fn yes_and_no_are_strings_as_in_go_yaml_v3() {
    let text = "kernel:\n  image: linuxkit/kernel:6.12.59\nonboot:\n  - name: a\n    image: linuxkit/a:1\n    command: [echo, yes, n, off]\n";
    let config = Config::from_yaml(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.onboot[0].config.command.as_deref(),
        Some(&["echo".to_string(), "yes".into(), "n".into(), "off".into()][..])
    );
}

#[test]
fn devices_without_major_and_minor_parse_as_in_linuxkit() {
    // LinuxKit's `Device` has plain int64 `major`/`minor`: absent means 0, and `path: all`
    // (a device-cgroup rule for a whole type) never needs them.
    let text = "kernel:\n  image: linuxkit/kernel:6.12.59\nonboot:\n  - name: a\n    image: linuxkit/a:1\n    devices:\n      - {path: all, type: b}\n      - {path: /dev/console, type: c, major: 5, minor: 1, mode: \"0666\"}\n";
    let config = Config::from_yaml(text).unwrap_or_else(|e| panic!("{e}"));
    let devices = config.onboot[0].config.devices.as_deref().unwrap();
    assert_eq!(devices[0].path, "all");
    assert_eq!((devices[0].major, devices[0].minor), (None, None));
    assert_eq!((devices[1].major, devices[1].minor), (Some(5), Some(1)));
    // The document round-trips without gaining fields it did not have.
    let mut source = kitfleet_api::linuxkit::read_yaml(text).unwrap();
    let mut ours = serde_json::to_value(&config).unwrap();
    normalize(&mut source, true);
    normalize(&mut ours, true);
    assert_eq!(ours, source);
    assert_eq!(Config::from_yaml(&config.to_yaml()).unwrap(), config);
}
