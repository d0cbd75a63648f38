//! Schema helpers for fields schemars cannot describe structurally.

/// An object whose contents the apiserver keeps as written.
pub fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}
