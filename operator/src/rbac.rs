//! What the operator's code calls on the API server, as RBAC rules: the list the chart's ClusterRole and Role must
//! grant exactly (`tests/rbac.rs` renders the chart with `helm` and compares; the real-apiserver tests run the
//! operator under those rules). Add a rule here and in `charts/kitfleet/templates/operator-rbac.yaml` together with
//! the code that makes the call.

/// One RBAC rule: `(apiGroup, resource, verbs)` — verbs sorted.
pub type Rule = (&'static str, &'static str, &'static [&'static str]);

/// The ClusterRole (cluster-scoped objects, and Events of cluster-scoped objects, which land in `default`).
pub const CLUSTER_RULES: &[Rule] = &[
    // build/controller.rs: the Controller's list+watch; finalizer and annotation patches (`finalizer()`, SSA).
    // hardening/mod.rs `run`: the NodeImage reflector (list+watch).
    ("kitfleet.dev", "nodeimages", &["list", "patch", "watch"]),
    // build/controller.rs `patch_status` (SSA on /status); hardening/mod.rs `apply` (SSA of status.hardening,
    // field manager kitfleet-hardening).
    ("kitfleet.dev", "nodeimages/status", &["patch"]),
    // build/job.rs: Jobs carry an owner reference with blockOwnerDeletion, which the
    // OwnerReferencesPermissionEnforcement admission plugin allows only with update on the owner's finalizers.
    ("kitfleet.dev", "nodeimages/finalizers", &["update"]),
    // build/controller.rs `publish` (kube's Recorder: create, then patch for a repeated Event's series).
    ("events.k8s.io", "events", &["create", "patch"]),
    // webhook/server.rs `run_on`: the SecurityPolicy reflector of the mutating webhook (every namespace).
    ("kitfleet.dev", "securitypolicies", &["list", "watch"]),
    // webhook/server.rs `patch_ca_bundles`: read and patch `caBundle` of the chart's two configurations (the chart
    // restricts both to their names).
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        &["get", "patch"],
    ),
    (
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        &["get", "patch"],
    ),
    // webhook/server.rs `label_namespaces`: list the labelled namespaces, apply (patch) the sandbox label.
    ("", "namespaces", &["list", "patch"]),
    // policy/mod.rs `apply`: SecurityPolicy status (SSA on /status).
    ("kitfleet.dev", "securitypolicies/status", &["patch"]),
    // policy/mod.rs `run`: the Node reflector (the agents' sandbox reports) and the Pod reflector (pods the
    // policies' selectors match, in every namespace).
    // hardening/mod.rs `run`: the Node reflector (labels and the KitfleetHardened condition).
    // rollout/controller.rs (issue 13 item 6, exactly its list): the Node reflector; merge patches of the rollout's
    // annotations and cordons (`execute`); get and nodes/status patch as the issue grants them to the planner's
    // executor (the Ready condition and the agent's keys are read from the cache today).
    ("", "nodes", &["get", "list", "patch", "watch"]),
    ("", "nodes/status", &["patch"]),
    // rollout/controller.rs: the Pod reflector (every namespace); rollout/drain.rs `delete` (`drain.force` deletes
    // pods no controller manages); get as issue 13 item 6 lists it.
    ("", "pods", &["delete", "get", "list", "watch"]),
    // rollout/drain.rs `evict`: the Eviction API (PodDisruptionBudgets apply).
    ("", "pods/eviction", &["create"]),
    // rollout/controller.rs: the PodDisruptionBudget reflector (names the budgets that block a drain).
    ("policy", "poddisruptionbudgets", &["list", "watch"]),
];

/// The Role in the operator's namespace (build Jobs, their Pods, push secrets, the Lease).
pub const NAMESPACE_RULES: &[Rule] = &[
    // build/controller.rs: the Job reflector (list+watch), SSA create of a Job (patch, and create when it is new),
    // deletion of superseded and orphaned Jobs.
    (
        "batch",
        "jobs",
        &["create", "delete", "list", "patch", "watch"],
    ),
    // build/controller.rs: the Pod reflector (termination messages, waiting reasons).
    ("", "pods", &["list", "watch"]),
    // build/controller.rs `read_secret` (push secrets); webhook/certs.rs `ensure`: get, create and replace (update)
    // the webhook's certificate Secret.
    ("", "secrets", &["create", "get", "update"]),
    // leader.rs: get, create when missing, replace (update) to acquire, renew and release.
    (
        "coordination.k8s.io",
        "leases",
        &["create", "get", "update"],
    ),
];
