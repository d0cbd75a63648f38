//! Getting the image of a build key onto the node: `kitfleet-build pull` (the builder's own pull code, run as
//! a program so the agent links no registry client twice) writes the artifact's files; every file is then
//! hashed again here and refused unless it matches its layer digest (both digests named). The UKI comes out
//! of the `raw-efi` disk's ESP ([`super::esp_image`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Result, UpgradeError, firmware::file_sha256, io};

/// One pulled file with the digest its layer claims.
#[derive(Debug, Clone)]
pub struct PulledFile {
    pub format: String,
    pub path: PathBuf,
    /// `sha256:<hex>` as the manifest says.
    pub digest: String,
}

/// What a pull produced.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The artifact's build key (hex).
    pub build_key: String,
    pub files: Vec<PulledFile>,
}

/// Parses `kitfleet-build pull`'s JSON summary.
pub fn parse_pull_summary(json: &[u8]) -> Result<Pulled> {
    let bad = |reason: String| UpgradeError::Invalid {
        field: "pull summary",
        reason,
    };
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let build_key = v["config"]["buildKey"]
        .as_str()
        .ok_or_else(|| bad("config.buildKey is missing".into()))?
        .to_string();
    let files = v["files"]
        .as_array()
        .ok_or_else(|| bad("files is missing".into()))?
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let s = |k: &str| {
                f[k].as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("files[{i}].{k} is missing")))
            };
            Ok(PulledFile {
                format: s("format")?,
                path: s("path")?.into(),
                digest: s("digest")?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Pulled { build_key, files })
}

/// Refuses `path` unless its sha256 is `expected` (`sha256:<hex>`).
pub fn verify(path: &Path, expected: &str) -> Result<()> {
    let want = expected.strip_prefix("sha256:").unwrap_or(expected);
    let (got, _) = file_sha256(path)?;
    if got != want {
        return Err(UpgradeError::DigestMismatch {
            what: path.display().to_string(),
            expected: want.to_string(),
            actual: got,
        });
    }
    Ok(())
}

/// Pulls `reference` into `dir` with `builder` (`kitfleet-build`), then verifies every file.
pub fn pull(builder: &Path, reference: &str, dir: &Path, insecure: &[String]) -> Result<Pulled> {
    let mut cmd = Command::new(builder);
    cmd.args(["pull", reference, "-o"])
        .arg(dir)
        .args(["--cache"])
        .arg(dir.join(".cache"));
    for r in insecure {
        cmd.args(["--insecure-registry", r]);
    }
    let out = cmd.output().map_err(io(builder))?;
    if !out.status.success() {
        return Err(UpgradeError::Invalid {
            field: "artifact",
            reason: format!(
                "{reference}: kitfleet-build pull failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let pulled = parse_pull_summary(&out.stdout)?;
    for f in &pulled.files {
        verify(&f.path, &f.digest)?;
    }
    Ok(pulled)
}

/// Writes the UKI of the pulled `raw-efi` disk to `out`.
pub fn uki_from(pulled: &Pulled, out: &Path) -> Result<()> {
    let disk = pulled
        .files
        .iter()
        .find(|f| f.format == "raw-efi")
        .ok_or_else(|| UpgradeError::Invalid {
            field: "artifact",
            reason: "has no raw-efi file (the firmware and kexec methods need a UKI)".into(),
        })?;
    let mut d = std::fs::File::open(&disk.path).map_err(io(&disk.path))?;
    let mut o = std::fs::File::create(out).map_err(io(out))?;
    super::esp_image::extract_uki(&mut d, &mut o)?;
    o.sync_all().map_err(io(out))?;
    Ok(())
}
