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
/// Node annotation (agent): the NodeImage artifact digest the node booted.
pub const ANNOTATION_BOOTED_DIGEST: &str = "agent.kitfleet.dev/booted-digest";
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
/// Node annotation (agent): the agent could not stage or boot a build key, terminally
/// (`<build key hex> <RFC 3339 time> <message>`).
pub const ANNOTATION_UPGRADE_FAILURE: &str = "agent.kitfleet.dev/upgrade-failure";
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
