//! `NodeImage`: a LinuxKit node image, how it is published and how it is rolled onto nodes.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::linuxkit;

/// The spec of a `NodeImage` (cluster-scoped): LinuxKit's own declaration, plus output and rollout.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kitfleet.dev",
    version = "v1alpha1",
    kind = "NodeImage",
    status = "NodeImageStatus",
    shortname = "ni",
    category = "kitfleet",
    printcolumn = r#"{"name":"Built","type":"string","description":"The Built condition's reason: Built, Adopted, Building, BuildFailed, InvalidSpec, Unresolved, ImagePullBackOff…","jsonPath":".status.conditions[?(@.type==\"Built\")].reason"}"#,
    printcolumn = r#"{"name":"Digest","type":"string","jsonPath":".status.artifact.shortDigest"}"#,
    printcolumn = r#"{"name":"Updated","type":"string","jsonPath":".status.nodes.progress"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Hardened","type":"string","priority":1,"description":"Selected nodes meeting KSPP's boot parameters and sysctls (their KitfleetHardened condition) / selected nodes","jsonPath":".status.hardening.summary"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeImageSpec {
    /// The LinuxKit declaration: `kernel`, `init`, `onboot`, `onshutdown`, `services`, `files`, `volumes`.
    #[serde(flatten)]
    pub image: linuxkit::Config,
    /// Output formats to build (at least one).
    #[schemars(length(min = 1, max = 6))]
    #[x_kube(validation = Rule::new("self.all(f, self.exists_one(g, g == f))").message("formats must be unique"))]
    pub formats: Vec<OutputFormat>,
    /// Where the built artifact is published.
    pub output: OutputSpec,
    /// Resolve tags to digests again this often (a Go duration, e.g. `24h`). Unset: only when the spec changes or the
    /// `kitfleet.dev/refresh` annotation changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("must be positive"))]
    pub refresh_interval: Option<Duration>,
    /// How the image is rolled onto nodes. Unset: built and published, not rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
    /// Kernel hardening (KSPP). Unset: `kspp: audit` without exceptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardening: Option<HardeningSpec>,
}

/// Kernel hardening of the image, after the Kernel Self Protection Project's recommendations.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HardeningSpec {
    /// `off`, `audit` (default: check the kernel's configuration and report; the image is what LinuxKit would build),
    /// `apply` (also add KSPP's boot parameters and sysctls) or `enforce` (apply, and fail the build on any unmet
    /// kernel setting or an unreadable kernel configuration). Quote `"off"`: YAML 1.1 reads a bare `off` as false.
    #[serde(default)]
    pub kspp: KsppMode,
    /// Recommendations this image does without, each with a reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(e, self.exists_one(f, f.setting == e.setting))").message("settings must be unique"))]
    pub exceptions: Vec<HardeningException>,
}

impl HardeningSpec {
    /// Whether this is what an absent `hardening` means (`audit`, no exceptions).
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// What the build does with KSPP's recommendations.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum KsppMode {
    /// No check.
    Off,
    /// Check the kernel's configuration and record the result.
    #[default]
    Audit,
    /// Check, and add the boot parameters and sysctls.
    Apply,
    /// Apply, and fail the build on any unmet kernel setting.
    Enforce,
}

impl KsppMode {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Audit => "audit",
            Self::Apply => "apply",
            Self::Enforce => "enforce",
        }
    }

    /// Whether boot parameters and sysctls are added to the image.
    pub fn applies(self) -> bool {
        matches!(self, Self::Apply | Self::Enforce)
    }
}

/// One recommendation an image does without.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HardeningException {
    /// A `CONFIG_` setting, a sysctl key (`kernel.kexec_load_disabled`) or a boot parameter name (`init_on_free`).
    #[schemars(length(min = 1, max = 128))]
    pub setting: String,
    /// Why the image does without it.
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.matches('[^[:space:]]')").message("a reason is required"))]
    pub reason: String,
}

/// A build output format.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    schemars::JsonSchema,
)]
pub enum OutputFormat {
    /// `kernel`, `initrd.img` (newc cpio, gzip) and `cmdline`.
    #[serde(rename = "kernel+initrd")]
    KernelInitrd,
    /// The root filesystem as a tar.
    #[serde(rename = "tar")]
    Tar,
    /// A tar holding `kernel`, `initrd.img` and `cmdline` (LinuxKit's layout).
    #[serde(rename = "tar-kernel-initrd")]
    TarKernelInitrd,
    /// An EFI-bootable ISO 9660 image.
    #[serde(rename = "iso-efi-initrd")]
    IsoEfiInitrd,
    /// A GPT disk with an ESP holding the unified kernel image.
    #[serde(rename = "raw-efi")]
    RawEfi,
    /// `raw-efi` as qcow2.
    #[serde(rename = "qcow2-efi")]
    Qcow2Efi,
}

impl OutputFormat {
    pub const ALL: [OutputFormat; 6] = [
        Self::KernelInitrd,
        Self::Tar,
        Self::TarKernelInitrd,
        Self::IsoEfiInitrd,
        Self::RawEfi,
        Self::Qcow2Efi,
    ];

    /// The name used in manifests and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KernelInitrd => "kernel+initrd",
            Self::Tar => "tar",
            Self::TarKernelInitrd => "tar-kernel-initrd",
            Self::IsoEfiInitrd => "iso-efi-initrd",
            Self::RawEfi => "raw-efi",
            Self::Qcow2Efi => "qcow2-efi",
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|f| f.as_str()).collect();
                format!(
                    "unknown format {s:?} (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// Where artifacts are pushed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutputSpec {
    /// An OCI repository without tag or digest (`registry.example.com/fleet/node`). The tag is derived from the build key.
    #[x_kube(validation = Rule::new("self.size() > 0").message("must not be empty"))]
    pub repository: String,
    /// A `kubernetes.io/dockerconfigjson` Secret in `kitfleet-system` used to push and pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_secret_name: Option<String>,
}

/// How a built image reaches nodes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Nodes to roll onto. Unset: none (a selector must be given to roll out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// How many selected nodes may be unavailable at once: a count (> 0) or a percentage (`25%`, rounded up, at least one).
    #[serde(default = "default_max_unavailable")]
    #[x_kube(validation = Rule::new("string(self).matches('^[0-9]+%?$') && int(string(self).replace('%', '')) > 0 && (!string(self).endsWith('%') || int(string(self).replace('%', '')) <= 100)").message("must be an integer > 0 or a percentage in (0%, 100%]"))]
    pub max_unavailable: IntOrString,
    /// How pods are evicted before a node restarts.
    #[serde(default)]
    pub drain: DrainSpec,
    /// What counts as a healthy node after the restart.
    #[serde(default)]
    pub health_check: HealthCheckSpec,
    /// Stop starting new nodes (nodes in progress finish).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Only start nodes inside this window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<MaintenanceWindow>,
    /// `reboot` (default: one-shot EFI BootNext) or `kexec`.
    #[serde(default)]
    pub method: RolloutMethod,
}

fn default_max_unavailable() -> IntOrString {
    IntOrString::Int(1)
}

/// Eviction settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// Give up on a node whose pods are not gone by then (default `10m`); the node is marked Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("must be positive"))]
    pub timeout: Option<Duration>,
    /// Override of the pods' termination grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("must not be negative"))]
    pub grace_period_seconds: Option<i64>,
    /// Delete pods that no controller manages (they are lost).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Pods matching this selector are not evicted (DaemonSet pods never are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_pod_selector: Option<LabelSelector>,
}

/// Health after restart, checked once the node is uncordoned: the node is Ready, its agent reports the new build key
/// as booted, and the pods matching `podSelector` on it are Ready again.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckSpec {
    /// How long a restarted node may take to become healthy, from the restart (default `10m`); a node that is not
    /// healthy by then is marked Failed and the rollout halts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("must be positive"))]
    pub timeout: Option<Duration>,
    /// Pods on the node matching this selector (any namespace) must be Ready again. Unset: no pod is waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// A weekly maintenance window. An end earlier than the start crosses midnight.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.start != self.end").message("start and end must differ"))]
pub struct MaintenanceWindow {
    /// Days the window opens on (empty: every day).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7))]
    #[x_kube(validation = Rule::new("self.all(d, self.exists_one(e, e == d))").message("days must be unique"))]
    pub days: Vec<Weekday>,
    /// `HH:MM`, 24-hour.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// `HH:MM`, 24-hour.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub end: String,
    /// IANA time zone (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// A day of the week.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    schemars::JsonSchema,
)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// How a node switches to the new image.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutMethod {
    /// Set EFI `BootNext` to the new entry and reboot; commit it to `BootOrder` after a healthy boot.
    #[default]
    Reboot,
    /// `kexec` into the new kernel (no firmware pass); commit after a healthy boot.
    Kexec,
}

/// What the operator observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeImageStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Built`, `Progressing`, `RolledOut`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Hash of the spec with every reference replaced by its digest, plus the builder's version (`sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_key: Option<String>,
    /// Every referenced image with its resolved digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub resolved: Vec<ResolvedImage>,
    /// The published artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactStatus>,
    /// Rollout progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeCounts>,
    /// The most recent node failures (at most 16).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub failures: Vec<NodeFailure>,
    /// How many of the nodes `rollout.nodeSelector` selects meet KSPP's boot parameters and sysctls, from each
    /// node's `KitfleetHardened` condition (its node agent's check). Unset when `hardening.kspp` is `off` or no
    /// selector is given. Written by its own field manager (`kitfleet-hardening`), never by the build or rollout
    /// controllers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardening: Option<HardeningStatus>,
}

/// The KSPP summary of the nodes a NodeImage selects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HardeningStatus {
    /// `spec.hardening.kspp` (`audit`, `apply`, `enforce`).
    pub mode: String,
    /// Nodes the rollout's `nodeSelector` selects.
    pub nodes_selected: i32,
    /// Selected nodes whose agent reported (they carry the `KitfleetHardened` condition).
    pub nodes_checked: i32,
    /// Selected nodes whose condition is `True` (every boot parameter and sysctl met).
    pub nodes_meeting: i32,
    /// `nodesMeeting/nodesSelected`, for `kubectl get -o wide`.
    pub summary: String,
    /// Checked nodes that do not meet the profile, by name (at most 32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub nodes_failing: Vec<NodeHardening>,
    /// Selected nodes without the condition (no agent, or it has not reported yet), by name (at most 32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub nodes_unreported: Vec<String>,
}

/// One node that does not meet KSPP's boot parameters and sysctls.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeHardening {
    pub node: String,
    /// The condition's status (`False`, or `Unknown`).
    pub status: String,
    /// The condition's reason (`KsppUnmet`…).
    pub reason: String,
    /// Items met and checked, as the node counted them (unset when its message does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub met: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<i32>,
    /// The unmet items, `name (found …, want …)` (at most 32; the node's message may list fewer than
    /// `total - met` when it was cut to its size limit). When the message has no list: the message itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub unmet: Vec<String>,
}

/// A reference and the digest it resolved to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedImage {
    /// The reference as written in the spec.
    pub reference: String,
    /// `sha256:…`; unset when it could not be resolved (see `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A published artifact.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactStatus {
    /// `repository:tag@digest`.
    pub reference: String,
    /// The artifact manifest's digest.
    pub digest: String,
    /// The first 12 hex digits of `digest`.
    pub short_digest: String,
    /// One entry per output format.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub formats: Vec<FormatArtifact>,
}

/// One output format of an artifact.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FormatArtifact {
    pub format: String,
    /// Digest of the format's main file (the disk, tar, or initrd).
    pub digest: String,
    pub size: i64,
}

/// Node counts of a rollout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    pub total: i32,
    pub updated: i32,
    pub in_progress: i32,
    pub failed: i32,
    /// `updated/total`, for `kubectl get`.
    pub progress: String,
}

/// Why a node failed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeFailure {
    pub node: String,
    /// CamelCase reason (`DrainTimeout`, `VerifyFailed`…).
    pub reason: String,
    pub message: String,
    /// RFC 3339.
    pub time: String,
}

impl NodeImage {
    /// A NodeImage holding a LinuxKit declaration.
    pub fn from_linuxkit(
        name: &str,
        image: linuxkit::Config,
        formats: Vec<OutputFormat>,
        output: OutputSpec,
    ) -> Self {
        NodeImage::new(
            name,
            NodeImageSpec {
                image,
                formats,
                output,
                refresh_interval: None,
                rollout: None,
                hardening: None,
            },
        )
    }

    /// Parses a NodeImage manifest. Unknown fields and wrong types are errors naming their path.
    pub fn from_yaml(text: &str) -> Result<Self, crate::ParseError> {
        crate::parse::resource_from_yaml(text).map_err(|e| Self::precise(text, e))
    }

    /// serde reports a bad value among the spec's flattened LinuxKit fields at `spec`; read those fields alone to
    /// name the field itself.
    fn precise(text: &str, err: crate::ParseError) -> crate::ParseError {
        let at_spec = err
            .fields()
            .is_some_and(|f| f.0.len() == 1 && f.0[0].path == "spec");
        let Ok(doc) = serde_saphyr::from_str::<serde_json::Value>(text) else {
            return err;
        };
        let Some(mut spec) = doc
            .get("spec")
            .and_then(|s| s.as_object())
            .cloned()
            .filter(|_| at_spec)
        else {
            return err;
        };
        for own in [
            "formats",
            "output",
            "refreshInterval",
            "rollout",
            "hardening",
        ] {
            spec.remove(own);
        }
        match crate::parse::from_value::<linuxkit::Config>(serde_json::Value::Object(spec)) {
            Err(crate::ParseError::Fields(mut f)) => {
                for e in &mut f.0 {
                    e.path = format!("spec.{}", e.path);
                }
                crate::ParseError::Fields(f)
            }
            _ => err,
        }
    }

    /// The manifest as YAML.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("a NodeImage serializes to YAML")
    }
}
