//! The `kitfleet.dev` API: the `NodeImage` and `SecurityPolicy` custom resources, LinuxKit's YAML model, validation, and
//! the names every Kitfleet component shares.
#![forbid(unsafe_code)]

pub mod constants;
pub mod crds;
mod error;
pub mod kspp;
pub mod linuxkit;
pub mod nodeimage;
pub mod parse;
pub mod reference;
mod schema;
pub mod security;
pub mod validate;

pub use error::{FieldError, FieldErrors, ParseError};
pub use nodeimage::{NodeImage, NodeImageSpec, NodeImageStatus, OutputFormat};
pub use parse::{from_value, from_yaml};
pub use reference::Reference;
pub use security::{SecurityPolicy, SecurityPolicySpec, SecurityPolicyStatus};
