//! LinuxKit's `ConfigToOCI` rules: the bundle `config.json` and `runtime.json` of an onboot,
//! onshutdown or service container, from the image config, its `org.mobyproject.config` label and
//! the YAML fields (linuxkit `src/cmd/linuxkit/moby/config.go`, `ConfigToOCI` and the `assign*`
//! helpers; volume names in binds from `moby/build/volume.go` `updateMountsAndBindsFromVolumes`).
//!
//! Precedence everywhere: YAML over label over image config over default. One LinuxKit quirk is
//! kept on purpose for byte compatibility: `binds.add`/`capabilities.add` are appended to the
//! label's list without removing duplicates (`mergeStrings` never fills its "seen" map).

use std::collections::BTreeMap;

use kitfleet_api::linuxkit::{self, IdOrName, ImageConfig};

use crate::error::{Error, Result};
use crate::oci::RunConfig;
use crate::runtime_spec::*;

/// Every capability LinuxKit knows (moby/sys/capability `ListKnown`, number order).
pub const ALL_CAPS: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The label key holding an image's LinuxKit defaults.
pub const LABEL: &str = "org.mobyproject.config";

/// The container-name → uid/gid map LinuxKit builds (100, 101… in onboot, onshutdown, services order).
pub fn id_map(cfg: &linuxkit::Config) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    let mut id = 100;
    for (_, images) in cfg.sections() {
        for img in images {
            m.insert(img.name.clone(), id);
            id += 1;
        }
    }
    m
}

/// Parses an image's `org.mobyproject.config` label (LinuxKit `NewImage`): YAML or JSON of the
/// per-image fields; `name` and `image` are not allowed there.
pub fn parse_label(label: &str, location: &str) -> Result<ImageConfig> {
    kitfleet_api::from_yaml::<ImageConfig>(label).map_err(|e| Error::Config {
        location: format!("{location}: image label {LABEL}"),
        reason: e.to_string(),
    })
}

fn pick<T: Clone>(label: &Option<T>, yaml: &Option<T>) -> Option<T> {
    yaml.clone().or_else(|| label.clone())
}

fn pick_vec<T: Clone>(label: &Option<Vec<T>>, yaml: &Option<Vec<T>>) -> Vec<T> {
    pick(label, yaml).unwrap_or_default()
}

/// `assignStringEmpty*`: the last non-empty wins.
fn last_non_empty(values: &[Option<&str>]) -> String {
    values
        .iter()
        .rev()
        .flatten()
        .find(|s| !s.is_empty())
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// `mergeStrings`: nil-aware concatenation (no de-duplication, as in LinuxKit).
fn merge(a: &Option<Vec<String>>, b: &Option<Vec<String>>) -> Option<Vec<String>> {
    match (a, b) {
        (None, None) => Some(Vec::new()),
        (Some(a), None) => Some(a.clone()),
        (None, Some(b)) => Some(b.clone()),
        (Some(a), Some(b)) => Some(a.iter().chain(b).cloned().collect()),
    }
}

/// `IDNumeric`.
pub fn id_numeric(
    v: Option<&IdOrName>,
    ids: &BTreeMap<String, u32>,
    location: &str,
) -> Result<u32> {
    match v {
        None => Ok(0),
        Some(IdOrName::Id(n)) => Ok(*n),
        Some(IdOrName::Name(s)) if s.is_empty() || s == "root" => Ok(0),
        Some(IdOrName::Name(s)) => ids.get(s).copied().ok_or_else(|| Error::Config {
            location: location.to_string(),
            reason: format!("cannot find id: {s}"),
        }),
    }
}

fn err(location: &str, reason: String) -> Error {
    Error::Config {
        location: location.to_string(),
        reason,
    }
}

fn default_mountpoint(kind: &str) -> &'static str {
    match kind {
        "proc" => "/proc",
        "devpts" => "/dev/pts",
        "sysfs" => "/sys",
        "cgroup" => "/sys/fs/cgroup",
        "mqueue" => "/dev/mqueue",
        _ => "",
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn mounts(
    label: &ImageConfig,
    yaml: &ImageConfig,
    readonly: bool,
    loc: &str,
) -> Result<Vec<Mount>> {
    let mut dev = strs(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
    let mut sys = strs(&["nosuid", "noexec", "nodev"]);
    if readonly {
        dev.push("ro".into());
        sys.push("ro".into());
    }
    let mut m: BTreeMap<String, Mount> = BTreeMap::new();
    let mut put = |dest: &str, kind: &str, source: &str, options: Vec<String>| {
        m.insert(
            dest.to_string(),
            Mount {
                destination: dest.to_string(),
                kind: kind.to_string(),
                source: source.to_string(),
                options,
            },
        );
    };
    put(
        "/proc",
        "proc",
        "proc",
        strs(&["nosuid", "nodev", "noexec", "relatime"]),
    );
    put("/dev", "tmpfs", "tmpfs", dev);
    put(
        "/dev/pts",
        "devpts",
        "devpts",
        strs(&[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
        ]),
    );
    put("/sys", "sysfs", "sysfs", sys);
    put(
        "/sys/fs/cgroup",
        "cgroup",
        "cgroup",
        strs(&["nosuid", "noexec", "nodev", "relatime", "ro"]),
    );
    for t in pick_vec(&label.tmpfs, &yaml.tmpfs) {
        let parts: Vec<&str> = t.split(':').collect();
        if parts.len() > 2 {
            return Err(err(
                loc,
                format!("tmpfs: cannot parse tmpfs, too many ':': {t}"),
            ));
        }
        let opts = parts
            .get(1)
            .map(|o| o.split(',').map(String::from).collect())
            .unwrap_or_default();
        put(parts[0], "tmpfs", "tmpfs", opts);
    }
    let binds = pick(&merge(&label.binds, &yaml.binds_add), &yaml.binds).unwrap_or_default();
    for b in binds {
        let parts: Vec<&str> = b.split(':').collect();
        if parts.len() < 2 {
            return Err(err(
                loc,
                format!("binds: cannot parse bind, missing ':': {b}"),
            ));
        }
        if parts.len() > 3 {
            return Err(err(
                loc,
                format!("binds: cannot parse bind, too many ':': {b}"),
            ));
        }
        let opts = match parts.get(2) {
            Some(o) => o
                .split(',')
                .map(String::from)
                .chain(["rbind".to_string()])
                .collect(),
            None => strs(&["rw", "rbind", "rshared"]),
        };
        put(parts[1], "bind", parts[0], opts);
    }
    for mt in pick_vec(&label.mounts, &yaml.mounts) {
        let destination = mt.destination.clone().unwrap_or_default();
        let src = mt.source.clone().unwrap_or_default();
        let mut kind = mt.kind.clone().unwrap_or_default();
        if kind.is_empty()
            && matches!(
                src.as_str(),
                "mqueue" | "devpts" | "proc" | "sysfs" | "cgroup"
            )
        {
            kind = src.clone();
        }
        if kind.is_empty() && destination == "/dev" {
            kind = "tmpfs".into();
        }
        if kind.is_empty() {
            return Err(err(
                loc,
                format!(
                    "mounts: mount for destination {} is missing type",
                    destination
                ),
            ));
        }
        let src = if src.is_empty() { kind.clone() } else { src };
        let dest = if destination.is_empty() {
            default_mountpoint(&kind).to_string()
        } else {
            destination
        };
        if dest.is_empty() {
            return Err(err(
                loc,
                format!("mounts: mount type {kind} is missing destination"),
            ));
        }
        put(&dest, &kind, &src, mt.options.clone().unwrap_or_default());
    }
    Ok(m.into_values().collect())
}

fn namespaces(label: &ImageConfig, yaml: &ImageConfig) -> Vec<Namespace> {
    let get = |l: &Option<String>, y: &Option<String>, default: &str| {
        last_non_empty(&[Some(default), l.as_deref(), y.as_deref()])
    };
    let mut out = Vec::new();
    let mut add = |kind: &str, v: String, none_is_new: bool| {
        if v != "host" && v != "root" {
            let path = if v == "new" || (none_is_new && v == "none") {
                String::new()
            } else {
                v
            };
            out.push(Namespace {
                kind: kind.to_string(),
                path,
            });
        }
    };
    add("network", get(&label.net, &yaml.net, "root"), true);
    add("ipc", get(&label.ipc, &yaml.ipc, "root"), false);
    add("uts", get(&label.uts, &yaml.uts, "root"), false);
    add("pid", get(&label.pid, &yaml.pid, ""), false);
    add("user", get(&label.userns, &yaml.userns, "root"), false);
    out.push(Namespace {
        kind: "mount".into(),
        path: String::new(),
    });
    out
}

fn expand_caps(list: Vec<String>, loc: &str) -> Result<Vec<String>> {
    let list = if list.len() == 1 {
        match list[0].to_lowercase().as_str() {
            "none" => Vec::new(),
            "all" => strs(&ALL_CAPS),
            _ => list,
        }
    } else {
        list
    };
    for c in &list {
        if !ALL_CAPS.contains(&c.as_str()) {
            return Err(err(loc, format!("capabilities: unknown capability: {c}")));
        }
    }
    Ok(list)
}

fn rlimits(list: Vec<String>, loc: &str) -> Result<Vec<Rlimit>> {
    const KNOWN: [&str; 16] = [
        "RLIMIT_CPU",
        "RLIMIT_FSIZE",
        "RLIMIT_DATA",
        "RLIMIT_STACK",
        "RLIMIT_CORE",
        "RLIMIT_RSS",
        "RLIMIT_NPROC",
        "RLIMIT_NOFILE",
        "RLIMIT_MEMLOCK",
        "RLIMIT_AS",
        "RLIMIT_LOCKS",
        "RLIMIT_SIGPENDING",
        "RLIMIT_MSGQUEUE",
        "RLIMIT_NICE",
        "RLIMIT_RTPRIO",
        "RLIMIT_RTTIME",
    ];
    let value = |s: &str| -> Result<u64> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("unlimited") {
            return Ok(u64::MAX);
        }
        s.parse()
            .map_err(|e| err(loc, format!("rlimits: cannot parse {s} as uint64: {e}")))
    };
    let mut out = Vec::new();
    for l in &list {
        let rs: Vec<&str> = l.splitn(3, ',').collect();
        if rs.len() != 3 {
            return Err(err(loc, format!("rlimits: cannot parse rlimit: {l}")));
        }
        let mut name = rs[0].trim().to_uppercase();
        if !name.starts_with("RLIMIT_") {
            name = format!("RLIMIT_{name}");
        }
        let (soft, hard) = (value(rs[1])?, value(rs[2])?);
        if !KNOWN.contains(&name.as_str()) {
            return Err(err(loc, format!("rlimits: unknown limit: {}", rs[0])));
        }
        out.push(Rlimit {
            kind: name,
            hard,
            soft,
        });
    }
    Ok(out)
}

fn resources(label: &ImageConfig, yaml: &ImageConfig, loc: &str) -> Result<Resources> {
    match pick(&label.resources, &yaml.resources) {
        None => Ok(Resources::default()),
        Some(map) => serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| err(loc, format!("resources: {e}"))),
    }
}

fn id_mappings(v: Vec<linuxkit::IdMapping>) -> Vec<IdMapping> {
    v.into_iter()
        .map(|m| IdMapping {
            container_id: m.container_id,
            host_id: m.host_id,
            size: m.size,
        })
        .collect()
}

/// `ConfigToOCI`: the bundle's OCI spec and LinuxKit runtime config. `location` is the YAML path
/// of the image (`onboot[0]`), used in errors.
pub fn config_to_oci(
    yaml: &ImageConfig,
    image: &RunConfig,
    ids: &BTreeMap<String, u32>,
    location: &str,
) -> Result<(Spec, RuntimeJson)> {
    let label = match image
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL))
        .filter(|s| !s.is_empty())
    {
        Some(s) => parse_label(s, location)?,
        None => ImageConfig::default(),
    };
    let loc = location;
    let mut inspect_cmd = image.entrypoint.clone().unwrap_or_default();
    inspect_cmd.extend(image.cmd.clone().unwrap_or_default());
    let args = yaml
        .command
        .clone()
        .or_else(|| label.command.clone())
        .unwrap_or(inspect_cmd);
    let env = yaml
        .env
        .clone()
        .or_else(|| label.env.clone())
        .unwrap_or_else(|| image.env.clone().unwrap_or_default());
    let cwd = last_non_empty(&[
        Some("/"),
        image.working_dir.as_deref(),
        label.cwd.as_deref(),
        yaml.cwd.as_deref(),
    ]);
    let readonly = pick(&label.readonly, &yaml.readonly).unwrap_or(false);

    let caps = expand_caps(
        pick(
            &merge(&label.capabilities, &yaml.capabilities_add),
            &yaml.capabilities,
        )
        .unwrap_or_default(),
        loc,
    )?;
    let ambient = expand_caps(pick_vec(&label.ambient, &yaml.ambient), loc)?;
    let mut bounding: Vec<String> = caps.iter().chain(&ambient).cloned().collect();
    bounding.sort();
    bounding.dedup();

    let uid = id_numeric(
        pick(&label.uid, &yaml.uid).as_ref(),
        ids,
        &format!("{loc}.uid"),
    )?;
    let gid = id_numeric(
        pick(&label.gid, &yaml.gid).as_ref(),
        ids,
        &format!("{loc}.gid"),
    )?;
    let additional_gids = pick_vec(&label.additional_gids, &yaml.additional_gids)
        .iter()
        .map(|g| id_numeric(Some(g), ids, &format!("{loc}.additionalGids")))
        .collect::<Result<Vec<_>>>()?;

    let mut res = resources(&label, yaml, loc)?;
    let mut devices = Vec::new();
    for d in pick_vec(&label.devices, &yaml.devices) {
        if d.path == "all" {
            res.devices.push(DeviceCgroup {
                allow: true,
                kind: d.kind.clone(),
                major: None,
                minor: None,
                access: "rwm".into(),
            });
            continue;
        }
        let mode_s = d.mode.clone().unwrap_or_default();
        let mode = u32::from_str_radix(&mode_s, 8).map_err(|e| {
            err(
                loc,
                format!("devices: cannot parse device mode as octal value: {mode_s:?}: {e}"),
            )
        })?;
        res.devices.push(DeviceCgroup {
            allow: true,
            kind: d.kind.clone(),
            // LinuxKit's int64 fields: absent is 0.
            major: Some(d.major.unwrap_or(0)),
            minor: Some(d.minor.unwrap_or(0)),
            access: "rwm".into(),
        });
        devices.push(Device {
            path: d.path.clone(),
            kind: d.kind.clone(),
            major: d.major.unwrap_or(0),
            minor: d.minor.unwrap_or(0),
            file_mode: Some(mode),
        });
    }

    let spec = Spec {
        version: OCI_VERSION.into(),
        process: Some(Process {
            terminal: false,
            user: User {
                uid,
                gid,
                additional_gids,
            },
            args,
            env,
            cwd,
            capabilities: Some(Capabilities {
                bounding: bounding.clone(),
                effective: caps,
                inheritable: bounding.clone(),
                permitted: bounding,
                ambient,
            }),
            rlimits: rlimits(pick_vec(&label.rlimits, &yaml.rlimits), loc)?,
            no_new_privileges: pick(&label.no_new_privileges, &yaml.no_new_privileges)
                .unwrap_or(false),
            oom_score_adj: pick(&label.oom_score_adj, &yaml.oom_score_adj),
        }),
        root: Some(Root {
            path: "rootfs".into(),
            readonly,
        }),
        hostname: last_non_empty(&[label.hostname.as_deref(), yaml.hostname.as_deref()]),
        mounts: mounts(&label, yaml, readonly, loc)?,
        annotations: pick(&label.annotations, &yaml.annotations).unwrap_or_default(),
        linux: Some(Linux {
            uid_mappings: id_mappings(pick_vec(&label.uid_mappings, &yaml.uid_mappings)),
            gid_mappings: id_mappings(pick_vec(&label.gid_mappings, &yaml.gid_mappings)),
            sysctl: pick(&label.sysctl, &yaml.sysctl).unwrap_or_default(),
            resources: Some(res),
            cgroups_path: pick(&label.cgroups_path, &yaml.cgroups_path).unwrap_or_default(),
            namespaces: namespaces(&label, yaml),
            devices,
            rootfs_propagation: pick(&label.rootfs_propagation, &yaml.rootfs_propagation)
                .unwrap_or_default(),
            masked_paths: pick_vec(&label.masked_paths, &yaml.masked_paths),
            readonly_paths: pick_vec(&label.readonly_paths, &yaml.readonly_paths),
        }),
    };
    Ok((spec, runtime(&label.runtime, &yaml.runtime)))
}

/// `assignRuntime`.
fn runtime(l: &Option<linuxkit::Runtime>, y: &Option<linuxkit::Runtime>) -> RuntimeJson {
    let d = linuxkit::Runtime::default();
    let l = l.as_ref().unwrap_or(&d);
    let y = y.as_ref().unwrap_or(&d);
    let ns_d = linuxkit::Namespaces::default();
    let lb = l.bind_ns.as_ref().unwrap_or(&ns_d);
    let yb = y.bind_ns.as_ref().unwrap_or(&ns_d);
    let ns = |a: &Option<String>, b: &Option<String>| {
        b.clone().or_else(|| a.clone()).unwrap_or_default()
    };
    RuntimeJson {
        cgroups: pick_vec(&l.cgroups, &y.cgroups),
        mounts: pick_vec(&l.mounts, &y.mounts)
            .into_iter()
            .map(convert_mount)
            .collect(),
        mkdir: pick_vec(&l.mkdir, &y.mkdir),
        interfaces: pick_vec(&l.interfaces, &y.interfaces)
            .into_iter()
            .map(|i| InterfaceJson {
                name: i.name.unwrap_or_default(),
                add: i.add.unwrap_or_default(),
                peer: i.peer.unwrap_or_default(),
                create_in_root: i.create_in_root,
            })
            .collect(),
        bind_ns: BindNs {
            cgroup: ns(&lb.cgroup, &yb.cgroup),
            ipc: ns(&lb.ipc, &yb.ipc),
            mnt: ns(&lb.mnt, &yb.mnt),
            net: ns(&lb.net, &yb.net),
            pid: ns(&lb.pid, &yb.pid),
            user: ns(&lb.user, &yb.user),
            uts: ns(&lb.uts, &yb.uts),
        },
        namespace: pick(&l.namespace, &y.namespace).unwrap_or_default(),
    }
}

/// A YAML mount as a runtime-spec mount.
pub fn convert_mount(m: linuxkit::Mount) -> Mount {
    Mount {
        destination: m.destination.unwrap_or_default(),
        kind: m.kind.unwrap_or_default(),
        source: m.source.unwrap_or_default(),
        options: m.options.unwrap_or_default(),
    }
}

/// `updateMountsAndBindsFromVolumes`: volume names used as bind or mount sources become the
/// volume's merged directory; writing into a read-only volume is an error.
pub fn apply_volumes(img: &ImageConfig, cfg: &linuxkit::Config, loc: &str) -> Result<ImageConfig> {
    let mut out = img.clone();
    let vol = |name: &str, what: &str, i: usize| {
        cfg.volumes
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| err(loc, format!("{what}[{i}]: volume {name} not found")))
    };
    let merged = |name: &str| format!("/containers/volumes/{name}/merged");
    if let Some(ms) = out.mounts.as_mut() {
        for (i, m) in ms.iter_mut().enumerate() {
            let src = m.source.clone().unwrap_or_default();
            if m.kind.as_deref() != Some("bind") || src.starts_with('/') {
                continue;
            }
            let v = vol(&src, "mounts", i)?;
            if v.readonly {
                let opts = m.options.clone().unwrap_or_default();
                let ro = opts
                    .iter()
                    .find(|o| *o == "rw" || *o == "ro")
                    .is_some_and(|o| o == "ro");
                if !ro {
                    return Err(err(
                        loc,
                        format!(
                            "mounts[{i}]: volume {src} is read-only, but attempting to write into container read-write"
                        ),
                    ));
                }
            }
            m.source = Some(merged(&src));
        }
    }
    for (field, list) in [
        ("binds", out.binds.as_mut()),
        ("binds.add", out.binds_add.as_mut()),
    ] {
        let Some(list) = list else { continue };
        for (i, b) in list.iter_mut().enumerate() {
            let mut parts: Vec<String> = b.split(':').map(String::from).collect();
            if parts[0].starts_with('/') {
                continue;
            }
            let v = vol(&parts[0], field, i)?;
            if v.readonly && parts.get(2).map(String::as_str) != Some("ro") {
                return Err(err(
                    loc,
                    format!(
                        "{field}[{i}]: volume {} is read-only, but attempting to write into container read-write",
                        parts[0]
                    ),
                ));
            }
            parts[0] = merged(&parts[0]);
            *b = parts.join(":");
        }
    }
    Ok(out)
}
