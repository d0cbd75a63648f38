//! Reading the input file: a LinuxKit YAML file or a NodeImage manifest.

use std::path::{Path, PathBuf};

use kitfleet_api::linuxkit::Config;
use kitfleet_api::{NodeImage, OutputFormat};

use crate::error::{Error, Result};

/// A loaded input.
#[derive(Debug, Clone)]
pub struct Input {
    /// The file.
    pub path: PathBuf,
    /// The LinuxKit declaration.
    pub config: Config,
    /// The NodeImage, when the file is one.
    pub node_image: Option<NodeImage>,
    /// Output stem: the NodeImage name or the file stem.
    pub name: String,
}

impl Input {
    /// Formats the NodeImage asks for.
    pub fn formats(&self) -> Vec<OutputFormat> {
        self.node_image
            .as_ref()
            .map(|n| n.spec.formats.clone())
            .unwrap_or_default()
    }

    /// The NodeImage's `spec.hardening` (the default, `kspp: audit`, for LinuxKit YAML).
    pub fn hardening(&self) -> kitfleet_api::nodeimage::HardeningSpec {
        self.node_image
            .as_ref()
            .and_then(|n| n.spec.hardening.clone())
            .unwrap_or_default()
    }

    /// The directory relative `files[].source` paths resolve against (the current directory, as
    /// in LinuxKit).
    pub fn base_dir(&self) -> PathBuf {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
    }
}

/// Whether YAML text looks like a Kubernetes object (has `apiVersion` and `kind` at the top).
fn is_manifest(text: &str) -> bool {
    text.lines().any(|l| l.starts_with("apiVersion:"))
        && text.lines().any(|l| l.starts_with("kind:"))
}

/// Loads `path`.
pub fn load(path: &Path) -> Result<Input> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let bad = |reason: String| Error::Input {
        path: path.to_path_buf(),
        reason,
    };
    if is_manifest(&text) {
        let ni = NodeImage::from_yaml(&text).map_err(|e| bad(e.to_string()))?;
        let name = ni.metadata.name.clone().unwrap_or(stem);
        Ok(Input {
            path: path.to_path_buf(),
            config: ni.spec.image.clone(),
            node_image: Some(ni),
            name,
        })
    } else {
        let config = Config::from_yaml(&text).map_err(|e| bad(e.to_string()))?;
        Ok(Input {
            path: path.to_path_buf(),
            config,
            node_image: None,
            name: stem,
        })
    }
}
