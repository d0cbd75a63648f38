//! `admission.k8s.io/v1` `AdmissionReview`: request in, response out. Pure: the policies, the image lookups and the
//! compile cache are handed in.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use kitfleet_api::SecurityPolicy;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::mutate::{self, ImageLookup, Outcome};
use super::validate;

/// The request part of an `AdmissionReview` (what the webhooks read of it).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    pub kind: Gvk,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    pub operation: String,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub object: Option<Value>,
}

/// `group`, `version`, `kind`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Gvk {
    #[serde(default)]
    pub group: String,
    pub version: String,
    pub kind: String,
}

#[derive(Deserialize)]
struct Review {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    request: Option<AdmissionRequest>,
}

/// A malformed review (answered with HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("AdmissionReview: {0}")]
pub struct BadReview(pub String);

/// Reads an `admission.k8s.io/v1` `AdmissionReview` body.
pub fn parse(body: &[u8]) -> Result<AdmissionRequest, BadReview> {
    let r: Review = serde_json::from_slice(body).map_err(|e| BadReview(e.to_string()))?;
    if r.api_version != "admission.k8s.io/v1" || r.kind != "AdmissionReview" {
        return Err(BadReview(format!(
            "expected admission.k8s.io/v1 AdmissionReview, got {} {}",
            r.api_version, r.kind
        )));
    }
    r.request.ok_or_else(|| BadReview("no request".into()))
}

/// A webhook's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub uid: String,
    pub allowed: bool,
    /// The refusal's message (HTTP 422-style `status.message`).
    pub message: Option<String>,
    /// A JSON Patch to apply (mutating only).
    pub patch: Option<Vec<Value>>,
}

impl Response {
    fn allow(uid: &str) -> Response {
        Response {
            uid: uid.to_string(),
            allowed: true,
            message: None,
            patch: None,
        }
    }

    fn deny(uid: &str, message: String) -> Response {
        Response {
            uid: uid.to_string(),
            allowed: false,
            message: Some(message),
            patch: None,
        }
    }

    /// The whole `AdmissionReview` answer.
    pub fn to_review(&self) -> Value {
        let mut response = json!({"uid": self.uid, "allowed": self.allowed});
        if let Some(m) = &self.message {
            response["status"] = json!({"code": 403, "reason": "Forbidden", "message": m});
        }
        if let Some(p) = &self.patch {
            let bytes = serde_json::to_vec(p).expect("a JSON value serializes");
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
    }
}

/// Allows `req` unchanged.
pub fn allow(req: &AdmissionRequest) -> Response {
    Response::allow(&req.uid)
}

/// Refuses `req` with `message`.
pub fn deny(req: &AdmissionRequest, message: String) -> Response {
    Response::deny(&req.uid, message)
}

/// The validating webhook: NodeImages and SecurityPolicies on CREATE and UPDATE; anything else is allowed.
pub fn validate(req: &AdmissionRequest) -> Response {
    let Some(object) = req.object.clone() else {
        return Response::allow(&req.uid);
    };
    if req.kind.group != kitfleet_api::constants::GROUP
        || !matches!(req.operation.as_str(), "CREATE" | "UPDATE")
        || req.sub_resource.is_some()
    {
        return Response::allow(&req.uid);
    }
    let outcome = match req.kind.kind.as_str() {
        "NodeImage" => validate::nodeimage(object),
        "SecurityPolicy" => validate::security_policy(object),
        _ => Ok(()),
    };
    match outcome {
        Ok(()) => Response::allow(&req.uid),
        Err(e) => Response::deny(
            &req.uid,
            format!(
                "{} {}: {e}",
                req.kind.kind,
                req.name.as_deref().unwrap_or_default()
            ),
        ),
    }
}

/// Compile results by policy-set hash (a set's hash pins uids and generations, so equal hashes mean equal specs).
#[derive(Debug, Default)]
pub struct SetCache(Mutex<HashMap<String, Result<(), String>>>);

impl SetCache {
    /// Whether the set compiles (once per hash).
    pub fn check(&self, hash: &str, policies: &[&SecurityPolicy]) -> Result<(), String> {
        if let Some(r) = self.0.lock().expect("lock").get(hash) {
            return r.clone();
        }
        let owned: Vec<SecurityPolicy> = policies.iter().map(|p| (*p).clone()).collect();
        let r = validate::policy_set(&owned).map_err(|e| e.to_string());
        self.0
            .lock()
            .expect("lock")
            .insert(hash.to_string(), r.clone());
        r
    }
}

/// The decoded pod of a pod CREATE review, or `None` for anything the mutating webhook lets through untouched.
pub fn pod_of(req: &AdmissionRequest) -> Result<Option<Pod>, String> {
    if req.kind.group.is_empty()
        && req.kind.kind == "Pod"
        && req.operation == "CREATE"
        && req.sub_resource.is_none()
        && let Some(o) = &req.object
    {
        return serde_json::from_value(o.clone())
            .map(Some)
            .map_err(|e| format!("the pod cannot be read: {e}"));
    }
    Ok(None)
}

/// The mutating webhook for one pod CREATE: `images` holds the lookups of [`mutate::images_to_look_up`] (absent
/// ones count as disabled lookups).
pub fn mutate_pod(
    req: &AdmissionRequest,
    pod: &Pod,
    operator_namespace: &str,
    policies: &[SecurityPolicy],
    images: &BTreeMap<String, ImageLookup>,
    sets: &SetCache,
) -> (Response, Option<Outcome>) {
    let namespace = req
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    let outcome = match mutate::mutate(pod, &namespace, operator_namespace, policies, images) {
        Ok(o) => o,
        Err(e) => return (Response::deny(&req.uid, e.to_string()), None),
    };
    let response = match &outcome {
        Outcome::Mutated { set, patch } => {
            let matched = mutate::matching(pod, &namespace, policies).unwrap_or_default();
            if let Err(e) = sets.check(&set.hash, &matched) {
                return (
                    Response::deny(
                        &req.uid,
                        format!(
                            "the SecurityPolicies matching this pod do not compile together: {e}"
                        ),
                    ),
                    Some(outcome),
                );
            }
            Response {
                patch: Some(patch.clone()),
                ..Response::allow(&req.uid)
            }
        }
        _ => Response::allow(&req.uid),
    };
    (response, Some(outcome))
}
