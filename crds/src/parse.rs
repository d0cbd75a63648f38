//! Strict parsing: every unknown field is an error naming its path, and a wrong value names its field.

use serde::de::DeserializeOwned;

use crate::error::{FieldError, FieldErrors, ParseError};

/// Parses YAML (or JSON, a subset) into `T`, rejecting unknown fields with their paths.
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    let value: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| ParseError::Yaml(e.to_string()))?;
    from_value(value)
}

/// Deserializes a JSON value into `T`, rejecting unknown fields with their paths.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ParseError> {
    let mut unknown = Vec::new();
    let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(yaml_path(&path.to_string()));
    let de = serde_ignored::Deserializer::new(value, &mut on_unknown);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(de);
    match parsed {
        Err(e) => {
            let path = yaml_path(&e.path().to_string());
            Err(ParseError::Fields(FieldErrors(vec![FieldError::new(
                path,
                e.into_inner().to_string(),
            )])))
        }
        Ok(_) if !unknown.is_empty() => Err(ParseError::Fields(FieldErrors(
            unknown
                .into_iter()
                .map(|p| FieldError::new(p, "unknown field"))
                .collect(),
        ))),
        Ok(v) => Ok(v),
    }
}

/// Parses a custom resource manifest of type `K`: `apiVersion` and `kind` must be `K`'s, then the rest is read strictly.
///
/// Unknown fields are found by walking the CRD's own schema, as the apiserver's pruning and `kubectl --validate=strict`
/// do (serde cannot see them through the spec's flattened LinuxKit fields).
pub fn resource_from_yaml<K>(text: &str) -> Result<K, ParseError>
where
    K: DeserializeOwned + kube::Resource<DynamicType = ()> + kube::CustomResourceExt,
{
    let mut value: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| ParseError::Yaml(e.to_string()))?;
    let Some(obj) = value.as_object_mut() else {
        return Err(ParseError::Fields(FieldErrors(vec![FieldError::new(
            "",
            "a manifest must be a mapping",
        )])));
    };
    let mut errs = Vec::new();
    for (field, want) in [("apiVersion", K::api_version(&())), ("kind", K::kind(&()))] {
        match obj.remove(field) {
            Some(serde_json::Value::String(got)) if got == want => {}
            Some(got) => errs.push(FieldError::new(field, format!("{got} is not {want:?}"))),
            None => errs.push(FieldError::new(field, format!("is required ({want:?})"))),
        }
    }
    if !errs.is_empty() {
        return Err(ParseError::Fields(FieldErrors(errs)));
    }
    let crd = serde_json::to_value(K::crd()).expect("a CRD serializes");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut unknown = Vec::new();
    unknown_fields(schema, &value, "", &mut unknown);
    if !unknown.is_empty() {
        return Err(ParseError::Fields(FieldErrors(
            unknown
                .into_iter()
                .map(|p| FieldError::new(p, "unknown field"))
                .collect(),
        )));
    }
    from_value(value)
}

/// Collects the paths of fields that `schema` (a structural OpenAPI schema) does not declare.
fn unknown_fields(
    schema: &serde_json::Value,
    value: &serde_json::Value,
    path: &str,
    out: &mut Vec<String>,
) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&serde_json::Value::Bool(true)) {
        return;
    }
    match value {
        serde_json::Value::Object(map) => {
            let props = schema.get("properties").and_then(|p| p.as_object());
            let additional = schema.get("additionalProperties");
            if props.is_none() && additional.is_none() {
                return; // `metadata` and other opaque objects: the apiserver owns them.
            }
            for (key, v) in map {
                if path.is_empty() && key == "metadata" {
                    continue; // ObjectMeta is the apiserver's to check.
                }
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (props.and_then(|p| p.get(key)), additional) {
                    (Some(s), _) => unknown_fields(s, v, &child, out),
                    (None, Some(s)) if s.is_object() => unknown_fields(s, v, &child, out),
                    (None, Some(serde_json::Value::Bool(true))) => {}
                    _ => out.push(child),
                }
            }
        }
        serde_json::Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    unknown_fields(s, v, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// `spec.onboot.2.image` (serde's paths) → `spec.onboot[2].image`; `.` (the root) → ``.
fn yaml_path(serde_path: &str) -> String {
    if serde_path == "." {
        return String::new();
    }
    let mut out = String::new();
    for seg in serde_path.split('.') {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::yaml_path;

    #[test]
    fn paths_read_like_yaml() {
        assert_eq!(yaml_path("spec.onboot.2.image"), "spec.onboot[2].image");
        assert_eq!(yaml_path("init.0"), "init[0]");
        assert_eq!(yaml_path("."), "");
    }
}
