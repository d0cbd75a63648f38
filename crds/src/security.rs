//! `SecurityPolicy`: Landlock and seccomp rules for the pods a selector matches.
//!
//! The policy is compiled by `kitfleet-sandbox` into a launcher policy file (Landlock + the exact seccomp filter) and an
//! OCI seccomp profile for the kubelet's `Localhost` profile. Several policies that match one pod stack: their Landlock
//! rulesets and seccomp filters intersect.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The spec of a `SecurityPolicy` (namespaced).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kitfleet.dev",
    version = "v1alpha1",
    kind = "SecurityPolicy",
    namespaced,
    status = "SecurityPolicyStatus",
    shortname = "sp",
    category = "kitfleet",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Pods","type":"integer","jsonPath":".status.matchedPods"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodesEnforcing"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SecurityPolicySpec {
    /// Pods in the policy's namespace that this policy applies to. An empty selector matches every pod.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// `enforce` (default), `enforce-and-log` or `audit`.
    #[serde(default)]
    pub mode: PolicyMode,
    /// Landlock rules: what the workload may touch in the filesystem, which TCP ports it may bind or connect, and
    /// which IPC scopes are closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landlock: Option<LandlockPolicy>,
    /// Seccomp rules: which system calls the workload may make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<SeccompPolicy>,
}

/// How a policy is applied.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyMode {
    /// Deny what the policy does not allow.
    #[default]
    Enforce,
    /// Deny, and log denials (Landlock ABI ≥ 7 logging including after exec; seccomp logs denied calls).
    EnforceAndLog,
    /// Log what would be denied, deny nothing. Landlock has no permissive mode, so it is not applied at all.
    Audit,
}

impl fmt::Display for PolicyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Enforce => "enforce",
            Self::EnforceAndLog => "enforce-and-log",
            Self::Audit => "audit",
        })
    }
}

/// Landlock rules. Every access right the negotiated ABI knows is handled (denied unless a rule grants it).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LandlockPolicy {
    /// The lowest Landlock ABI the workload may run under. Below it the launcher refuses to start the workload.
    /// Unset: best effort (apply what the kernel supports, report what was dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("must be at least 1"))]
    pub min_abi: Option<u32>,
    /// Filesystem rules: paths beneath which the listed rights are granted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub filesystem: Vec<FsRule>,
    /// TCP ports. When present, binding and connecting are restricted to the listed ports (Landlock ABI ≥ 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetRules>,
    /// IPC scopes closed to the sandbox (Landlock ABI ≥ 6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub scopes: Vec<Scope>,
}

/// Rights granted beneath some paths.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FsRule {
    /// Absolute paths in the container. A missing path drops the rule (reported) unless `required` is set.
    #[schemars(length(min = 1, max = 64))]
    pub paths: Vec<String>,
    /// Landlock access rights granted beneath the paths.
    #[schemars(length(min = 1, max = 16))]
    pub access: Vec<FsAccess>,
    /// Refuse to start the workload when a path is missing, instead of dropping the rule.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
}

/// A Landlock filesystem access right (`LANDLOCK_ACCESS_FS_*`).
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
#[serde(rename_all = "kebab-case")]
pub enum FsAccess {
    Execute,
    WriteFile,
    ReadFile,
    ReadDir,
    RemoveDir,
    RemoveFile,
    MakeChar,
    MakeDir,
    MakeReg,
    MakeSock,
    MakeFifo,
    MakeBlock,
    MakeSym,
    /// Link or rename a file across directories (ABI ≥ 2).
    Refer,
    /// Truncate a file (ABI ≥ 3).
    Truncate,
    /// `ioctl` on character and block devices (ABI ≥ 5).
    IoctlDev,
}

impl FsAccess {
    /// Every right, in the kernel's bit order.
    pub const ALL: [FsAccess; 16] = [
        Self::Execute,
        Self::WriteFile,
        Self::ReadFile,
        Self::ReadDir,
        Self::RemoveDir,
        Self::RemoveFile,
        Self::MakeChar,
        Self::MakeDir,
        Self::MakeReg,
        Self::MakeSock,
        Self::MakeFifo,
        Self::MakeBlock,
        Self::MakeSym,
        Self::Refer,
        Self::Truncate,
        Self::IoctlDev,
    ];

    /// The lowest Landlock ABI that knows this right.
    pub fn min_abi(self) -> u32 {
        match self {
            Self::Refer => 2,
            Self::Truncate => 3,
            Self::IoctlDev => 5,
            _ => 1,
        }
    }

    /// The kernel's bit for this right (`LANDLOCK_ACCESS_FS_*`).
    pub fn bit(self) -> u64 {
        1 << (self as u32)
    }
}

/// TCP ports a sandbox may bind and connect to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetRules {
    /// Ports the workload may bind (listen on).
    #[serde(default)]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("self.all(p, p >= 1 && p <= 65535)").message("ports must be 1-65535"))]
    pub bind_tcp: Vec<u32>,
    /// Ports the workload may connect to.
    #[serde(default)]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("self.all(p, p >= 1 && p <= 65535)").message("ports must be 1-65535"))]
    pub connect_tcp: Vec<u32>,
}

/// A Landlock scope (`LANDLOCK_SCOPE_*`, ABI ≥ 6).
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
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// No connecting to abstract unix sockets created outside the sandbox.
    AbstractUnixSocket,
    /// No signals to processes outside the sandbox.
    Signal,
}

/// Seccomp rules.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SeccompPolicy {
    /// What happens to a system call no rule matches. Default: `errno` (EPERM).
    #[serde(default = "SeccompAction::default_action")]
    pub default_action: SeccompAction,
    /// The errno returned by a `defaultAction: errno` (default 1, EPERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 4095").message("errno must be 1-4095"))]
    pub default_errno: Option<u32>,
    /// A base allow list the rules add to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<SeccompBase>,
    /// Rules, matched by syscall name (and argument conditions).
    #[serde(default)]
    #[schemars(length(max = 512))]
    pub rules: Vec<SeccompRule>,
}

/// A seccomp action.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SeccompAction {
    Allow,
    /// Fail the call with an errno (the rule's `errno`, default EPERM).
    Errno,
    KillProcess,
    KillThread,
    Trap,
    /// Allow and log.
    Log,
}

impl SeccompAction {
    fn default_action() -> Self {
        Self::Errno
    }
}

impl Default for SeccompAction {
    fn default() -> Self {
        Self::default_action()
    }
}

/// A base list of allowed system calls.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum SeccompBase {
    /// The container runtime's default allow list.
    #[serde(rename = "runtime/default")]
    RuntimeDefault,
}

/// One seccomp rule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.errno) || self.action == 'errno'").message("errno is only valid with action errno"))]
pub struct SeccompRule {
    /// System call names (`openat`, `ptrace`…).
    #[schemars(length(min = 1, max = 512))]
    pub names: Vec<String>,
    pub action: SeccompAction,
    /// The errno an `errno` action returns (default 1, EPERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 4095").message("errno must be 1-4095"))]
    pub errno: Option<u32>,
    /// Conditions on the arguments, all of which must hold for the rule to match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 6))]
    pub args: Vec<ArgCondition>,
}

/// A condition on one system call argument.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.op == 'masked-eq' ? has(self.valueTwo) : !has(self.valueTwo)").message("valueTwo is required by masked-eq and only valid with it"))]
pub struct ArgCondition {
    /// Argument index, 0-5.
    #[x_kube(validation = Rule::new("self <= 5").message("argument index must be 0-5"))]
    pub index: u8,
    pub op: ArgOp,
    /// The value compared with (the mask, for `masked-eq`).
    pub value: u64,
    /// For `masked-eq`: `(arg & value) == valueTwo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_two: Option<u64>,
}

/// A comparison on a system call argument.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ArgOp {
    #[default]
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    MaskedEq,
}

/// What the operator and the node agents observe of a policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (compiled and valid), `Degraded` (invalid: the message lists every error).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Pods the selector matches.
    #[serde(default)]
    pub matched_pods: i32,
    /// Nodes on which at least one matched pod runs under the launcher.
    #[serde(default)]
    pub nodes_enforcing: i32,
    /// Pods of this policy that did not start under it, as the nodes last reported (refused by the launcher, or
    /// their volume's publish failed closed).
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub refused_pods: i32,
    /// The Landlock ABI of each node with a sandbox volume of this policy (at most 256 entries, sorted by node; the
    /// rest is counted in `nodesEnforcing`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub nodes: Vec<NodeAbi>,
}

/// A node's Landlock ABI.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeAbi {
    pub node: String,
    pub landlock_abi: u32,
    /// Pods of this policy the node reports running under the launcher.
    #[serde(default)]
    pub enforced_pods: i32,
}

fn is_zero_i32(n: &i32) -> bool {
    *n == 0
}

/// A node's sandbox report: the JSON value of the Node annotation `agent.kitfleet.dev/sandbox-report`
/// ([`crate::constants::ANNOTATION_SANDBOX_REPORT`]), written by that node's agent (its `csi` container) whenever it
/// changes, read by the operator's SecurityPolicy status controller. Bounded: at most [`NodeSandboxReport::MAX_SETS`]
/// sets and [`NodeSandboxReport::MAX_REFUSALS`] refusals (the rest is counted in `setsOmitted` / `refusalsOmitted`),
/// each list inside a set at most [`NodeSandboxReport::MAX_DETAILS`] entries, every string at most
/// [`NodeSandboxReport::MAX_TEXT`] bytes; the serialised report stays under [`NodeSandboxReport::MAX_BYTES`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeSandboxReport {
    /// The Landlock ABI the node's kernel offers (0: none).
    pub landlock_abi: u32,
    /// Totals over every sandbox volume on the node.
    #[serde(default)]
    pub counts: SandboxCounts,
    /// One entry per policy set with a published volume on the node, sorted by namespace and set hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sets: Vec<PolicySetOutcome>,
    /// Sets left out to keep the report small.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sets_omitted: u32,
    /// Pods that did not start under their policy set, newest last: the launcher refused (e.g. `minAbi` above the
    /// node's ABI, a required path missing) or publish failed closed (the set changed since admission, it does not
    /// compile).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<PodRefusal>,
    /// Refusals left out (oldest first).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refusals_omitted: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl NodeSandboxReport {
    /// At most this many sets.
    pub const MAX_SETS: usize = 64;
    /// At most this many refusals.
    pub const MAX_REFUSALS: usize = 16;
    /// At most this many entries in each list of a set.
    pub const MAX_DETAILS: usize = 8;
    /// At most this many bytes per string.
    pub const MAX_TEXT: usize = 256;
    /// The serialised report stays below this many bytes (Node annotations share 256 KiB).
    pub const MAX_BYTES: usize = 32 * 1024;
}

/// Counts over a node's sandbox volumes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxCounts {
    /// Published sandbox volumes (one per pod).
    #[serde(default)]
    pub volumes: u32,
    /// Volumes whose launcher last reported its workload running under the whole policy set.
    #[serde(default)]
    pub enforced: u32,
    /// Volumes whose launcher last refused to start its workload.
    #[serde(default)]
    pub refused: u32,
    /// Landlock rules dropped (a path missing in the container) in the volumes' last reports.
    #[serde(default)]
    pub dropped_rules: u32,
    /// Publishes that failed closed since the agent started.
    #[serde(default)]
    pub publish_failed: u32,
}

/// What happened on one node to the pods of one policy set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicySetOutcome {
    /// The pods' (and policies') namespace.
    pub namespace: String,
    /// Names of the SecurityPolicies in the set, sorted.
    pub policies: Vec<String>,
    /// The set's hash (as in the volume attribute `sandbox.kitfleet.dev/set-hash`).
    pub set_hash: String,
    /// Published volumes of this set.
    pub volumes: u32,
    /// Of them, those whose launcher reported `enforced`.
    pub enforced: u32,
    /// Of them, those whose launcher reported `refused` or `error`.
    pub refused: u32,
    /// Policies whose Landlock ruleset was not applied, with why (`audit` mode, no Landlock in the kernel):
    /// `"<policy>: <reason>"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub landlock_not_applied: Vec<String>,
    /// Dropped Landlock rules: `"<policy> <field> <path>: <reason>"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_rules: Vec<String>,
}

/// A pod that did not start under its policy set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodRefusal {
    /// `namespace/name`.
    pub pod: String,
    /// The pod's uid.
    pub pod_uid: String,
    /// The SecurityPolicies of the set pinned at admission (names, in the pod's namespace).
    pub policies: Vec<String>,
    /// `launch` (the launcher refused) or `publish` (the node agent refused the volume).
    pub stage: String,
    /// Why, as the launcher or the agent said it.
    pub reason: String,
}
