//! LinuxKit's YAML model (`linuxkit build` input), field for field.
//!
//! The types follow `src/cmd/linuxkit/moby/config.go` of LinuxKit (`Moby`, `KernelConfig`, `Image`, `ImageConfig`,
//! `Runtime`, `File`, `Volume`, `Device`, `Interface`, `Namespaces`): the same field names, and `Option` wherever LinuxKit
//! uses a pointer, because an explicitly empty list there overrides the image's own `org.mobyproject.config` label while an
//! absent one keeps it. As in LinuxKit, an unknown field is an error (LinuxKit checks a JSON schema with
//! `additionalProperties: false`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::ParseError;

/// A whole LinuxKit image declaration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// The kernel image and its command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Kernel>,
    /// Images whose filesystems are unpacked to `/` in order (init, runc, containerd…).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub init: Vec<String>,
    /// Containers run to completion in order at boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub onboot: Vec<Image>,
    /// Containers run in order at shutdown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub onshutdown: Vec<Image>,
    /// Long-running containers started by containerd.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub services: Vec<Image>,
    /// Files added to the root filesystem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub files: Vec<File>,
    /// Named volumes that containers may bind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub volumes: Vec<Volume>,
}

impl Config {
    /// Parses a LinuxKit YAML file. Unknown fields and wrong types are errors naming their path.
    pub fn from_yaml(text: &str) -> Result<Self, ParseError> {
        crate::parse::from_value(read_yaml(text)?)
    }

    /// The LinuxKit YAML for this declaration.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("a LinuxKit config serializes to YAML")
    }

    /// Every image reference with the YAML path it stands at, in declaration order.
    pub fn references(&self) -> Vec<(String, &str)> {
        let mut refs = Vec::new();
        if let Some(k) = &self.kernel {
            refs.push(("kernel.image".to_string(), k.image.as_str()));
        }
        for (i, r) in self.init.iter().enumerate() {
            refs.push((format!("init[{i}]"), r.as_str()));
        }
        for (section, images) in self.sections() {
            for (i, img) in images.iter().enumerate() {
                refs.push((format!("{section}[{i}].image"), img.image.as_str()));
            }
        }
        for (i, v) in self.volumes.iter().enumerate() {
            if let Some(img) = &v.image {
                refs.push((format!("volumes[{i}].image"), img.as_str()));
            }
        }
        refs
    }

    /// `onboot`, `onshutdown` and `services`, with their field names.
    pub fn sections(&self) -> [(&'static str, &[Image]); 3] {
        [
            ("onboot", &self.onboot),
            ("onshutdown", &self.onshutdown),
            ("services", &self.services),
        ]
    }
}

/// Reads a LinuxKit YAML document as a generic value, as LinuxKit's parser would.
///
/// go-yaml v3 follows YAML 1.2: only `true` and `false` are booleans, so `command: [echo, yes]` is two strings.
pub fn read_yaml(text: &str) -> Result<serde_json::Value, ParseError> {
    let yaml12 = || serde_saphyr::options! { strict_booleans: true };
    serde_saphyr::from_str_with_options(text, yaml12()).or_else(|e| {
        let fixed = go_yaml_block_comments(text).ok_or_else(|| ParseError::Yaml(e.to_string()))?;
        serde_saphyr::from_str_with_options(&fixed, yaml12())
            .map_err(|_| ParseError::Yaml(e.to_string()))
    })
}

/// LinuxKit reads its YAML with go-yaml v3, which takes a `#` line indented less than a block scalar's content as a
/// comment and carries on with the scalar; YAML 1.2 parsers of the libyaml family end the scalar there and then fail.
/// LinuxKit's own `examples/static-ip.yml` relies on it. Returns the text without such lines, or `None` when there are
/// none (then the YAML error stands).
fn go_yaml_block_comments(text: &str) -> Option<String> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = text.lines().collect();
    let mut drop = vec![false; lines.len()];
    let mut i = 0;
    while i < lines.len() {
        let head = lines[i].split(" #").next().unwrap_or("").trim_end();
        let is_block = head.ends_with(['|', '>'])
            || head.ends_with("|-")
            || head.ends_with("|+")
            || head.ends_with(">-");
        if !is_block {
            i += 1;
            continue;
        }
        let parent = indent(lines[i]);
        // The content's indentation: the first non-blank, non-comment line indented deeper than the indicator's line.
        let content = lines[i + 1..]
            .iter()
            .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|l| indent(l))
            .filter(|&n| n > parent);
        let Some(content) = content else {
            i += 1;
            continue;
        };
        let mut j = i + 1;
        while j < lines.len() {
            let l = lines[j];
            if !l.trim().is_empty() && indent(l) < content {
                if l.trim_start().starts_with('#') {
                    drop[j] = true;
                } else {
                    break;
                }
            }
            j += 1;
        }
        i = j;
    }
    if !drop.contains(&true) {
        return None;
    }
    let kept: Vec<&str> = lines
        .iter()
        .zip(&drop)
        .filter(|(_, d)| !**d)
        .map(|(l, _)| *l)
        .collect();
    Some(kept.join("\n") + "\n")
}

/// The kernel (`KernelConfig`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Kernel {
    /// The kernel image: `kernel` (or `binary`), `kernel.tar` of modules, optionally `ucode.cpio`.
    pub image: String,
    /// The kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// The kernel file's name in the image (default `kernel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    /// The modules tarball's name in the image (default `kernel.tar`; `none` for no modules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tar: Option<String>,
    /// A CPU microcode cpio to prepend to the initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ucode: Option<String>,
}

/// A container: `onboot`, `onshutdown` or `services` entry (`Image`).
///
/// On the wire the settings sit beside `name` and `image`, as in LinuxKit; in Rust they are grouped in
/// [`ImageConfig`] so the builder can merge them with the image's own label.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(from = "ImageRepr", into = "ImageRepr")]
pub struct Image {
    /// The container's name: its bundle directory (`containers/services/NAME`).
    pub name: String,
    /// The image reference.
    pub image: String,
    /// Overrides of the image's `org.mobyproject.config` label.
    pub config: ImageConfig,
}

impl JsonSchema for Image {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Image".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        ImageRepr::json_schema(generator)
    }
}

/// Defines [`ImageConfig`] and the flat wire form of [`Image`] from one field list, so the two cannot drift, and
/// without `#[serde(flatten)]`, which would hide unknown fields and the paths of bad values inside an image.
macro_rules! image_config {
    ($($(#[$meta:meta])* $field:ident: $ty:ty,)*) => {
        /// The per-image settings (`ImageConfig`): the fields also valid in an image's `org.mobyproject.config` label.
        #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct ImageConfig {
            $($(#[$meta])* pub $field: $ty,)*
        }

        /// The wire form of an [`Image`].
        #[derive(Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase")]
        #[schemars(rename = "Image")]
        struct ImageRepr {
            /// The container's name: its bundle directory (`containers/services/NAME`).
            name: String,
            /// The image reference.
            image: String,
            $($(#[$meta])* $field: $ty,)*
        }

        impl From<ImageRepr> for Image {
            fn from(r: ImageRepr) -> Self {
                Image { name: r.name, image: r.image, config: ImageConfig { $($field: r.$field,)* } }
            }
        }

        impl From<Image> for ImageRepr {
            fn from(i: Image) -> Self {
                ImageRepr { name: i.name, image: i.image, $($field: i.config.$field,)* }
            }
        }
    };
}

image_config! {
    /// The capability set (`all` for every one), replacing the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    capabilities: Option<Vec<String>>,
    /// Capabilities added to the image's own set.
    #[serde(default, rename = "capabilities.add", skip_serializing_if = "Option::is_none")]
    capabilities_add: Option<Vec<String>>,
    /// Ambient capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ambient: Option<Vec<String>>,
    /// OCI mounts, replacing the defaults at the same destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mounts: Option<Vec<Mount>>,
    /// Bind mounts `SRC:DST[:OPTS]`, replacing the image's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    binds: Option<Vec<String>>,
    /// Bind mounts added to the image's own.
    #[serde(default, rename = "binds.add", skip_serializing_if = "Option::is_none")]
    binds_add: Option<Vec<String>>,
    /// Devices exposed to the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    devices: Option<Vec<Device>>,
    /// tmpfs mounts `DST[:OPTS]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tmpfs: Option<Vec<String>>,
    /// The command (entrypoint and arguments), replacing the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<Vec<String>>,
    /// Environment `KEY=VALUE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cwd: Option<String>,
    /// Network namespace: `host`, `new`, or a path to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    net: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ipc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    userns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    /// Read-only root filesystem (default true for onboot/services in LinuxKit's rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    readonly: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    masked_paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    readonly_paths: Option<Vec<String>>,
    /// User: a number or a name looked up in the image's `/etc/passwd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uid: Option<IdOrName>,
    /// Group: a number or a name looked up in the image's `/etc/group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gid: Option<IdOrName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    additional_gids: Option<Vec<IdOrName>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    no_new_privileges: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oom_score_adj: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rootfs_propagation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cgroups_path: Option<String>,
    /// OCI `linux.resources`, passed through as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    resources: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sysctl: Option<BTreeMap<String, String>>,
    /// `NAME,SOFT,HARD` rlimits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rlimits: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uid_mappings: Option<Vec<IdMapping>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gid_mappings: Option<Vec<IdMapping>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, String>>,
    /// Settings used when the container is started, not in its OCI spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    runtime: Option<Runtime>,
}

/// An OCI mount (runtime-spec `Mount`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Mount {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<String>>,
}

/// A device exposed to a container (`Device`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Device {
    pub path: String,
    /// `b`, `c`, `u` or `p`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Absent in LinuxKit means 0 (Go's zero value); `path: all` rules never need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    /// Absent in LinuxKit means 0 (Go's zero value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// A user namespace ID mapping (runtime-spec `LinuxIDMapping`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct IdMapping {
    #[serde(rename = "containerID")]
    pub container_id: u32,
    #[serde(rename = "hostID")]
    pub host_id: u32,
    pub size: u32,
}

/// A numeric ID or a name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum IdOrName {
    Id(u32),
    Name(String),
}

impl JsonSchema for IdOrName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IdOrName".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "x-kubernetes-int-or-string": true })
    }
}

/// What the init system does when it starts the container (`Runtime`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Runtime {
    /// cgroups to create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups: Option<Vec<String>>,
    /// Mounts made before the container starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<Mount>>,
    /// Directories created before the container starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mkdir: Option<Vec<String>>,
    /// Network interfaces to create or move into the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<Interface>>,
    /// Paths to bind the container's namespaces to.
    #[serde(default, rename = "bindNS", skip_serializing_if = "Option::is_none")]
    pub bind_ns: Option<Namespaces>,
    /// containerd namespace for a service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Paths to bind a container's namespaces to (`Namespaces`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Namespaces {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mnt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uts: Option<String>,
}

/// A network interface for a container (`Interface`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The type of interface to create (`veth`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<String>,
    /// The veth peer's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_in_root: bool,
}

/// A file added to the root filesystem (`File`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct File {
    /// Path in the root filesystem (relative to `/`).
    pub path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub directory: bool,
    /// Make a symbolic link to this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink: Option<String>,
    /// The file's contents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<String>,
    /// A local file to copy (CLI builds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Generated contents: `yaml` writes the whole declaration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// A missing `source` is not an error.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// Octal permission bits (`"0600"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<IdOrName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<IdOrName>,
}

/// A named volume (`Volume`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Volume {
    pub name: String,
    /// An image whose filesystem becomes the volume's contents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
    /// How the volume's image is stored (`oci` or `filesystem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platforms: Option<Vec<String>>,
}
