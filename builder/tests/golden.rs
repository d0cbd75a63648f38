//! Golden `config.json` / `runtime.json` for a range of per-image fields.
//!
//! Each case encodes LinuxKit's `ConfigToOCI` (`src/cmd/linuxkit/moby/config.go`) and, for the
//! bundle cases, `ImageBundle` (`src/cmd/linuxkit/moby/build/image.go`) and `outputImage`
//! (`src/cmd/linuxkit/moby/build/build.go`); `tests/golden/README.md` lists which rule each file
//! shows. Regenerate with `UPDATE_GOLDEN=1 cargo test -p kitfleet-builder --test golden`, then
//! review the diff against those functions.

use std::path::PathBuf;

use kitfleet_api::linuxkit::{Config, Image};
use kitfleet_builder::assemble::{self, Mtime, Part, ResolvedMap};
use kitfleet_builder::oci::{Document, ImageConfigFile, RunConfig};
use kitfleet_builder::oci_config::{config_to_oci, id_map};
use kitfleet_builder::reference::ImageRef;
use kitfleet_builder::runtime_spec::go_json;
use kitfleet_builder::source::Resolved;
use kitfleet_builder::tree::Kind;

fn golden(name: &str, got: &[u8]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 to create)", path.display()));
    assert!(
        want == got,
        "{name} differs from the golden file:\n{}",
        String::from_utf8_lossy(got)
    );
}

fn image_config(json: &str) -> RunConfig {
    serde_json::from_str(json).unwrap()
}

fn case(name: &str, yaml: &str, image_cfg: &str) {
    let cfg = Config::from_yaml(yaml).unwrap();
    let ids = id_map(&cfg);
    let img: &Image = cfg.services.first().or(cfg.onboot.first()).unwrap();
    let (spec, runtime) =
        config_to_oci(&img.config, &image_config(image_cfg), &ids, "services[0]").unwrap();
    golden(&format!("{name}.config.json"), &go_json(&spec));
    golden(&format!("{name}.runtime.json"), &go_json(&runtime));
}

#[test]
fn defaults_from_the_image_config() {
    case(
        "defaults",
        "services:\n  - name: web\n    image: example/web:1\n",
        r#"{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"Env":["PATH=/usr/bin:/bin"],"WorkingDir":""}"#,
    );
}

#[test]
fn label_then_yaml_precedence_and_add_lists() {
    let label = serde_json::json!({
        "capabilities": ["CAP_SYS_ADMIN"], "binds": ["/var:/var"], "readonly": true, "net": "host",
        "env": ["FROM=label"], "cwd": "/label", "hostname": "from-label", "pid": "host",
    })
    .to_string();
    let cfg =
        serde_json::json!({"Cmd": ["/bin/app"], "Env": ["FROM=image"], "WorkingDir": "/image",
        "Labels": {"org.mobyproject.config": label}})
        .to_string();
    case(
        "label-and-yaml",
        "services:\n  - name: svc\n    image: example/svc:1\n    capabilities.add: [CAP_NET_ADMIN]\n    binds.add: [\"/etc/ssl:/etc/ssl:ro\"]\n    env: [FROM=yaml]\n    hostname: from-yaml\n",
        &cfg,
    );
}

#[test]
fn every_per_image_field() {
    let yaml = r#"
onboot:
  - name: first
    image: example/first:1
services:
  - name: full
    image: example/full:1
    capabilities: [all]
    ambient: [CAP_NET_RAW]
    mounts:
      - destination: /proc
        source: proc
      - type: cgroup
        options: [rw]
      - destination: /dev
        options: [rw, nosuid]
    devices:
      - path: /dev/null
        type: c
        major: 1
        minor: 3
        mode: "0666"
      - path: all
        type: b
    tmpfs: ["/tmp:size=10m,mode=1777", /run]
    binds: ["/var/log:/var/log", "/etc/resolv.conf:/etc/resolv.conf:ro"]
    command: [/bin/full, --flag]
    env: [A=1, "HTML=<&>"]
    cwd: /work
    net: new
    ipc: new
    uts: /run/ns/uts
    pid: host
    userns: new
    hostname: full-host
    readonly: false
    maskedPaths: [/proc/kcore]
    readonlyPaths: [/proc/sys]
    uid: first
    gid: 10
    additionalGids: [1, first]
    noNewPrivileges: true
    oomScoreAdj: -500
    rootfsPropagation: shared
    cgroupsPath: /kitfleet/full
    resources:
      memory:
        limit: 1048576
      cpu:
        shares: 2
      pids:
        limit: 10
    sysctl:
      net.ipv4.ip_forward: "1"
    rlimits: ["nofile,1024,unlimited", "RLIMIT_NPROC,10,20"]
    uidMappings:
      - containerID: 0
        hostID: 100000
        size: 65536
    gidMappings:
      - containerID: 0
        hostID: 100000
        size: 65536
    annotations:
      dev.kitfleet/x: "<y>"
    runtime:
      cgroups: [full]
      mkdir: [/var/lib/full]
      interfaces:
        - name: eth1
          add: veth
          peer: veth1
          createInRoot: true
      bindNS:
        net: /run/netns/full
      namespace: fullns
      mounts:
        - type: bind
          source: /a
          destination: /b
          options: [rbind]
"#;
    let cfg = Config::from_yaml(yaml).unwrap();
    let ids = id_map(&cfg);
    let (spec, runtime) = config_to_oci(
        &cfg.services[0].config,
        &image_config("{}"),
        &ids,
        "services[0]",
    )
    .unwrap();
    golden("full.config.json", &go_json(&spec));
    golden("full.runtime.json", &go_json(&runtime));
}

#[test]
fn errors_name_the_location_and_rule() {
    let cases = [
        ("capabilities: [CAP_FLY]", "unknown capability: CAP_FLY"),
        ("rlimits: [\"nofile,1\"]", "cannot parse rlimit"),
        ("rlimits: [\"bogus,1,2\"]", "unknown limit: bogus"),
        ("binds: [/nocolon]", "missing ':'"),
        ("binds: [\"a:b:c:d\"]", "too many ':'"),
        ("tmpfs: [\"/t:a:b\"]", "too many ':'"),
        (
            "devices: [{path: /dev/x, type: c, major: 1, minor: 1, mode: \"9z\"}]",
            "octal",
        ),
        ("uid: nobody-here", "cannot find id: nobody-here"),
        ("mounts: [{destination: /x}]", "missing type"),
    ];
    for (field, want) in cases {
        let yaml = format!("services:\n  - name: s\n    image: x/y:1\n    {field}\n");
        let cfg = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{field}: {e}"));
        let err = config_to_oci(
            &cfg.services[0].config,
            &RunConfig::default(),
            &id_map(&cfg),
            "services[0]",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("services[0]") && err.contains(want),
            "{field}: {err}"
        );
    }
}

fn resolved(name: &str, config: &str) -> Resolved {
    let digest = kitfleet_builder::digest::sha256(name.as_bytes());
    Resolved {
        reference: ImageRef::parse(name, "test").unwrap(),
        digest: digest.clone(),
        manifest_digest: digest.clone(),
        manifest: Document::parse(br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:00","size":0},"layers":[]}"#, name).unwrap(),
        config_digest: digest,
        config: ImageConfigFile::parse(config.as_bytes(), name).unwrap(),
    }
}

/// `ImageBundle`: read-only rootfs bound onto itself; read-write rootfs as an overlay of
/// `lower/` with a tmpfs upper; a second bundle of the same image binds the first one's root;
/// onboot directories numbered `NNN-name`, services by name.
#[test]
fn bundle_layout_and_runtime_mounts() {
    let yaml = "onboot:\n  - name: ro\n    image: example/a:1\n    readonly: true\n  - name: rw\n    image: example/b:1\nservices:\n  - name: again\n    image: example/a:1\n    readonly: true\n";
    let cfg = Config::from_yaml(yaml).unwrap();
    let mut map = ResolvedMap::new();
    map.insert("onboot[0].image".into(), resolved("example/a:1", "{}"));
    map.insert("onboot[1].image".into(), resolved("example/b:1", "{}"));
    map.insert("services[0].image".into(), resolved("example/a:1", "{}"));
    let mtime = Mtime {
        generated: assemble::LINUXKIT_MTIME,
        clamp: None,
    };
    let plan = assemble::plan(&cfg, &map, mtime, std::path::Path::new(".")).unwrap();
    let mut listing = String::new();
    for seg in &plan.segments {
        for part in &seg.parts {
            match part {
                Part::Image { prefix, resolv, .. } => listing.push_str(&format!(
                    "{}: image -> {prefix} resolv={resolv:?}\n",
                    seg.location
                )),
                Part::Generated(entries) => {
                    for e in entries {
                        let what = match &e.kind {
                            Kind::Dir => "dir".to_string(),
                            Kind::File(b) => format!("file {} bytes", b.len()),
                            other => format!("{other:?}"),
                        };
                        listing.push_str(&format!(
                            "{}: {} {what} {:o}\n",
                            seg.location, e.path, e.mode
                        ));
                        if e.path.ends_with("runtime.json") {
                            let name = e.path.replace('/', "_");
                            if let Kind::File(b) = &e.kind {
                                golden(&format!("bundle.{name}"), b);
                            }
                        }
                    }
                }
            }
        }
    }
    golden("bundle.layout.txt", listing.as_bytes());
}

/// `Build` (volumes: `lower/` from the image or empty, `tmp/` and `merged/`),
/// `updateMountsAndBindsFromVolumes` (a volume name as bind source becomes its merged dir) and
/// `filesystem` (files: leading directories with the file's mode plus x bits, uid/gid by
/// container name, symlinks, directories, default modes 0600/0700).
#[test]
fn volumes_and_files_layout() {
    let yaml = r#"
onboot:
  - name: user
    image: example/a:1
    readonly: true
    binds: ["data:/data", "/etc:/etc:ro"]
volumes:
  - name: data
  - name: seeded
    image: example/seed:1
files:
  - path: etc/app/config
    contents: "x=1\n"
    mode: "0640"
    uid: user
  - path: /var/empty
    directory: true
  - path: etc/link
    symlink: /etc/app/config
  - path: etc/secret
    contents: s
"#;
    let cfg = Config::from_yaml(yaml).unwrap();
    let mut map = ResolvedMap::new();
    map.insert("onboot[0].image".into(), resolved("example/a:1", "{}"));
    map.insert("volumes[1].image".into(), resolved("example/seed:1", "{}"));
    let mtime = Mtime {
        generated: assemble::LINUXKIT_MTIME,
        clamp: None,
    };
    let plan = assemble::plan(&cfg, &map, mtime, std::path::Path::new(".")).unwrap();
    let mut listing = String::new();
    for seg in &plan.segments {
        for part in &seg.parts {
            match part {
                Part::Image { prefix, resolv, .. } => listing.push_str(&format!(
                    "{}: image -> {prefix} resolv={resolv:?}\n",
                    seg.location
                )),
                Part::Generated(entries) => {
                    for e in entries {
                        let what = match &e.kind {
                            Kind::Dir => "dir".to_string(),
                            Kind::File(b) => format!(
                                "file {:?}",
                                String::from_utf8_lossy(b)
                                    .chars()
                                    .take(40)
                                    .collect::<String>()
                            ),
                            other => format!("{other:?}"),
                        };
                        listing.push_str(&format!(
                            "{}: {} {what} {:o} {}:{}\n",
                            seg.location, e.path, e.mode, e.uid, e.gid
                        ));
                        if e.path.ends_with("config.json")
                            && let Kind::File(b) = &e.kind
                        {
                            let spec: serde_json::Value = serde_json::from_slice(b).unwrap();
                            let binds: Vec<_> = spec["mounts"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .filter(|m| m["type"] == "bind")
                                .cloned()
                                .collect();
                            listing.push_str(&format!(
                                "{}: binds {}\n",
                                seg.location,
                                serde_json::to_string(&binds).unwrap()
                            ));
                        }
                    }
                }
            }
        }
    }
    golden("volumes-files.layout.txt", listing.as_bytes());

    // A read-write bind of a read-only volume is refused.
    let ro = Config::from_yaml("onboot:\n  - name: u\n    image: x/y:1\n    binds: [\"v:/v\"]\nvolumes:\n  - name: v\n    readonly: true\n").unwrap();
    let mut map = ResolvedMap::new();
    map.insert("onboot[0].image".into(), resolved("x/y:1", "{}"));
    let e = assemble::plan(&ro, &map, mtime, std::path::Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(e.contains("volume v is read-only"), "{e}");
}
