//! Names shared by every Kitfleet component: the API group, annotation and label keys, finalizers, media types.

/// The API group.
pub const GROUP: &str = "kitfleet.dev";
/// The first API version.
pub const VERSION: &str = "v1alpha1";
/// The namespace of Kitfleet's own workloads (build Jobs, the push secret, the operator).
pub const SYSTEM_NAMESPACE: &str = "kitfleet-system";

/// Server-side apply field manager of the operator.
pub const OPERATOR_FIELD_MANAGER: &str = "kitfleet-operator";
/// Server-side apply field manager of the node agent.
pub const NODE_AGENT_FIELD_MANAGER: &str = "kitfleet-node-agent";

/// Finalizer the operator puts on a NodeImage so that deletion cancels its in-flight build Jobs.
pub const NODEIMAGE_FINALIZER: &str = "kitfleet.dev/build-cleanup";

/// Annotation on a NodeImage asking for its references to be resolved again (any new value triggers one refresh).
pub const ANNOTATION_REFRESH: &str = "kitfleet.dev/refresh";
/// Annotation on a build Job (Kubernetes objects): the full build key.
pub const ANNOTATION_BUILD_KEY: &str = "kitfleet.dev/build-key";
/// Annotation on a published artifact's OCI manifest: the build key (OCI annotations use reverse-DNS keys).
pub const ARTIFACT_ANNOTATION_BUILD_KEY: &str = "dev.kitfleet.build-key";
/// Label on a build Job: the NodeImage it builds.
pub const LABEL_NODEIMAGE: &str = "kitfleet.dev/nodeimage";
/// Label on a build Job: the (truncated, label-safe) build key.
pub const LABEL_BUILD_KEY: &str = "kitfleet.dev/build-key";
/// Label on Kitfleet's own objects.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

// Node annotations have one writer each, told by the prefix: `operator.kitfleet.dev/` (the operator) or
// `agent.kitfleet.dev/` (the node's own agent). The chart's ValidatingAdmissionPolicy `kitfleet-node-agent` lets a
// node agent change only its own Node (the node claim of its pod-bound token) and there only `agent.kitfleet.dev/`
// annotations, as NodeRestriction does for kubelets.

/// Node annotation (agent): the node's WireGuard public key (base64).
pub const ANNOTATION_WG_PUBLIC_KEY: &str = "agent.kitfleet.dev/wg-public-key";
/// Node annotation (agent): the node's WireGuard endpoint (`IP:port`).
pub const ANNOTATION_WG_ENDPOINT: &str = "agent.kitfleet.dev/wg-endpoint";
/// Prefix of the Node annotations only the operator writes (rollout bookkeeping).
pub const OPERATOR_ANNOTATION_PREFIX: &str = "operator.kitfleet.dev/";
/// Prefix of the Node annotations only the node's own agent writes.
pub const AGENT_ANNOTATION_PREFIX: &str = "agent.kitfleet.dev/";
/// Node annotation (operator): the rollout state of the node (`Pending`, `Staging`, … `Done`, `Failed`).
pub const ANNOTATION_ROLLOUT_STATE: &str = "operator.kitfleet.dev/rollout-state";
/// Node annotation (operator): the NodeImage whose rollout the node's state belongs to.
pub const ANNOTATION_ROLLOUT_NODEIMAGE: &str = "operator.kitfleet.dev/rollout-nodeimage";
/// Node annotation (operator): the build key (hex, no `sha256:`) the node is asked to run; the agent stages it.
pub const ANNOTATION_DESIRED_BUILD_KEY: &str = "operator.kitfleet.dev/desired-build-key";
/// Node annotation (operator): the artifact (`REGISTRY/REPO@sha256:…`) whose build key is the desired one; the agent
/// pulls exactly this reference and checks the key in its config blob.
pub const ANNOTATION_DESIRED_ARTIFACT: &str = "operator.kitfleet.dev/desired-artifact";
/// Node annotation (operator): how the node switches images (`reboot` or `kexec`, the NodeImage's `rollout.method`).
pub const ANNOTATION_UPGRADE_METHOD: &str = "operator.kitfleet.dev/upgrade-method";
/// Node annotation (operator): when the node entered its rollout state (RFC 3339).
pub const ANNOTATION_ROLLOUT_SINCE: &str = "operator.kitfleet.dev/rollout-since";
/// Node annotation (operator): when the node's current step times out (RFC 3339; drain, then reboot + health gate).
pub const ANNOTATION_ROLLOUT_DEADLINE: &str = "operator.kitfleet.dev/rollout-deadline";
/// Node annotation (operator): `true` when Kitfleet cordoned the node (only such nodes are uncordoned by Kitfleet).
pub const ANNOTATION_CORDONED: &str = "operator.kitfleet.dev/cordoned";
/// Node annotation (operator): why the node failed (`Reason: message`).
pub const ANNOTATION_ROLLOUT_FAILURE: &str = "operator.kitfleet.dev/rollout-failure";
/// Node annotation (operator): the NodeImage's `kitfleet.dev/retry` value when the node failed; a new value retries it.
pub const ANNOTATION_ROLLOUT_RETRY: &str = "operator.kitfleet.dev/rollout-retry";
/// Node annotation (agent): the build key (hex) whose artifact the agent staged.
pub const ANNOTATION_STAGED_BUILD_KEY: &str = "agent.kitfleet.dev/staged-build-key";
/// Node annotation (agent): the build key (hex) the running kernel reports it booted.
pub const ANNOTATION_BOOTED_BUILD_KEY: &str = "agent.kitfleet.dev/booted-build-key";
/// Node condition (agent): whether the running kernel has KSPP's boot parameters and sysctls
/// (`True`/`KsppMet`, `False`/`KsppUnmet` with the unmet items). The only status the node agent
/// may write (chart policy `kitfleet-node-agent`).
pub const CONDITION_KITFLEET_HARDENED: &str = "KitfleetHardened";
/// Node annotation (agent): the agent could not stage or boot a build key, terminally
/// (`<build key hex> <RFC 3339 time> <message>`).
pub const ANNOTATION_UPGRADE_FAILURE: &str = "agent.kitfleet.dev/upgrade-failure";
/// Kernel command-line parameter the builder adds to every image: `kitfleet.buildkey=<build key hex>`
/// (also `KITFLEET_BUILD_KEY=` in the UKI's `.osrel`); the agent reads it from `/proc/cmdline`.
pub const CMDLINE_BUILD_KEY: &str = "kitfleet.buildkey";
/// Annotation on a NodeImage: a new value resumes a rollout halted by a failed node (the failed nodes are retried).
pub const ANNOTATION_RETRY: &str = "kitfleet.dev/retry";
/// Node annotation (agent): the Landlock ABI the node's kernel offers.
pub const ANNOTATION_LANDLOCK_ABI: &str = "agent.kitfleet.dev/landlock-abi";

/// The CSI driver that provides the sandbox volume.
pub const CSI_DRIVER: &str = "sandbox.kitfleet.dev";
/// Where the sandbox volume is mounted in each sandboxed container.
pub const SANDBOX_MOUNT: &str = "/.kitfleet";

/// Artifact type of a published node image (the OCI manifest's `artifactType`).
pub const MEDIA_TYPE_ARTIFACT: &str = "application/vnd.kitfleet.nodeimage.v1";
/// Config blob of a published node image: the resolved inputs, JSON.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.kitfleet.nodeimage.config.v1+json";
/// The media type of an artifact layer holding one output file; `part` is the file's role (`kernel`, `initrd`,
/// `cmdline`, `tar`, `raw-efi`…).
pub fn layer_media_type(part: &str) -> String {
    format!("application/vnd.kitfleet.nodeimage.{part}.v1")
}

/// Port the WireGuard mesh listens on by default.
pub const WG_DEFAULT_PORT: u16 = 51820;

// The sandbox volume's contract between the operator's mutating webhook (writer) and the node agent's CSI plugin
// (reader): `volumeAttributes` keys of the pod's inline `sandbox.kitfleet.dev` volume (node-agent README, "Volume
// attributes"), the volume's name in the pod, and where the Localhost seccomp profile of a policy set lives.

/// Volume attribute: the policy set, `name@generation` of every SecurityPolicy, comma-separated, sorted by name.
pub const CSI_ATTR_POLICIES: &str = "sandbox.kitfleet.dev/policies";
/// Volume attribute: the set's hash (64 lowercase hex digits; node-agent `csi::attrs::set_hash`).
pub const CSI_ATTR_SET_HASH: &str = "sandbox.kitfleet.dev/set-hash";
/// Volume attribute (optional): where the volume is mounted in the containers (default [`SANDBOX_MOUNT`]).
pub const CSI_ATTR_MOUNT_PATH: &str = "sandbox.kitfleet.dev/mount-path";
/// The first line of the text the policy-set hash is computed over (names the scheme and its version).
pub const POLICY_SET_HASH_SCHEME: &str = "kitfleet.dev/policy-set v1";
/// Name of the sandbox volume the webhook adds to a pod.
pub const SANDBOX_VOLUME: &str = "kitfleet-sandbox";
/// Directory (relative to the kubelet's seccomp root) of the Localhost profiles the node agent writes.
pub const SECCOMP_PROFILE_DIR: &str = "kitfleet";

/// The `localhostProfile` of a policy set's seccomp profile: `kitfleet/<set hash>.json`.
pub fn seccomp_localhost_profile(set_hash: &str) -> String {
    format!("{SECCOMP_PROFILE_DIR}/{set_hash}.json")
}

/// Namespace label the operator sets (`"true"`) on namespaces that have SecurityPolicies: the webhook configurations'
/// `namespaceSelector` (with `failurePolicy: Fail`) selects only these.
pub const LABEL_SANDBOX_NAMESPACE: &str = "kitfleet.dev/sandbox";

/// Node annotation (agent): the node's sandbox report, JSON (`security::NodeSandboxReport`).
pub const ANNOTATION_SANDBOX_REPORT: &str = "agent.kitfleet.dev/sandbox-report";
