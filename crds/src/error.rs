//! Errors that name the field they are about.

use std::fmt;

/// One problem with one field. `path` is a YAML path (`spec.onboot[2].image`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one object. Never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    /// The error for `path`, if any.
    pub fn at(&self, path: &str) -> Option<&FieldError> {
        self.0.iter().find(|e| e.path == path)
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

/// Collects field errors while walking an object.
#[derive(Debug, Default)]
pub(crate) struct Errors(Vec<FieldError>);

impl Errors {
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }

    pub(crate) fn finish(self) -> Result<(), FieldErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(FieldErrors(self.0))
        }
    }
}

/// A failure to read a manifest: YAML syntax, a wrong type, or unknown fields.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("invalid YAML: {0}")]
    Yaml(String),
    #[error("{0}")]
    Fields(FieldErrors),
}

impl ParseError {
    /// The field errors, when the YAML itself was readable.
    pub fn fields(&self) -> Option<&FieldErrors> {
        match self {
            Self::Fields(f) => Some(f),
            Self::Yaml(_) => None,
        }
    }
}
