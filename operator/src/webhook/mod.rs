//! The admission webhooks (issue 14 item 4), served by every replica (not only the leader):
//!
//! - **mutating** (`/mutate`, Pods, CREATE): a pod that SecurityPolicies in its namespace match gets the inline CSI
//!   volume `sandbox.kitfleet.dev` (read-only at `/.kitfleet`, attributes = the pinned policy set), every container's
//!   command rewritten to the launcher, and the set's `Localhost` seccomp profile ([`mutate`]);
//! - **validating** (`/validate`, NodeImages and SecurityPolicies, CREATE and UPDATE): objects failing
//!   `kitfleet_api::validate` are refused with its field-path messages; a SecurityPolicy the `kitfleet-sandbox`
//!   compiler refuses, with the compiler's field path ([`validate`]).
//!
//! [`review`] turns an `AdmissionReview` request into its response (pure given the policies and the image lookups);
//! [`images`] reads an image's entrypoint from its registry, cached.
//!
//! Init and ephemeral containers are **not wrapped** (DESIGN, Sandbox: a documented limit): they run their own argv,
//! confined only by the pod-level `Localhost` seccomp profile, which the webhook also writes into any container
//! (init ones included) that names its own seccomp profile. Ephemeral containers are added later through the
//! `pods/ephemeralcontainers` subresource, which this webhook does not intercept.

pub mod certs;
pub mod images;
pub mod mutate;
pub mod review;
pub mod server;
pub mod validate;

#[cfg(test)]
mod mutate_tests;
#[cfg(test)]
mod validate_tests;
