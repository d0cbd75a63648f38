//! Strict parsing: every unknown field is an error naming its path, and a wrong value names its field.

use serde::de::DeserializeOwned;

use crate::error::{FieldError, FieldErrors, ParseError};

/// Parses YAML (or JSON, a subset) into `T`, rejecting unknown fields with their paths.
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| ParseError::Yaml(e.to_string()))?;
    from_value(value)
}

/// Deserializes a JSON value into `T`, rejecting unknown fields with their paths.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ParseError> {
    let mut unknown = Vec::new();
    let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(yaml_path(&path.to_string()));
    let de = serde_ignored::Deserializer::new(value, &mut on_unknown);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(de);
    drop(on_unknown);
    match parsed {
        Err(e) => {
            let path = yaml_path(&e.path().to_string());
            Err(ParseError::Fields(FieldErrors(vec![FieldError::new(path, e.into_inner().to_string())])))
        }
        Ok(_) if !unknown.is_empty() => Err(ParseError::Fields(FieldErrors(
            unknown.into_iter().map(|p| FieldError::new(p, "unknown field")).collect(),
        ))),
        Ok(v) => Ok(v),
    }
}

/// Parses a custom resource manifest of type `K`: `apiVersion` and `kind` must be `K`'s, then the rest is read strictly.
pub fn resource_from_yaml<K>(text: &str) -> Result<K, ParseError>
where
    K: DeserializeOwned + kube::Resource<DynamicType = ()>,
{
    let mut value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| ParseError::Yaml(e.to_string()))?;
    let Some(obj) = value.as_object_mut() else {
        return Err(ParseError::Fields(FieldErrors(vec![FieldError::new("", "a manifest must be a mapping")])));
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
    from_value(value)
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
