//! Kernel configuration reader: the `.config` text format and the IKCONFIG blob.
//!
//! Supported: a `config`/`config-*` file as kernel packages ship it, and the IKCONFIG blob
//! (`CONFIG_IKCONFIG=y`) inside an *uncompressed* kernel binary (`vmlinux`, or any file whose
//! bytes hold `IKCFG_ST` + a gzip stream + `IKCFG_ED`). Not supported: a bzImage (or
//! `Image.gz`) whose payload is compressed — the blob is then inside the compressed payload and
//! [`from_kernel_image`] reports [`Error::CompressedKernel`]; ship the config file instead.

use std::collections::BTreeMap;
use std::io::Read;

use super::{Error, Result};

/// One symbol's value as written in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `=y`.
    Yes,
    /// `=m`.
    Module,
    /// `=n` or `# CONFIG_X is not set`.
    No,
    /// A decimal or `0x` hexadecimal number (wide enough for 64-bit `hex` symbols such as
    /// `ILLEGAL_POINTER_VALUE=0xdead000000000000`).
    Number(i128),
    /// A quoted string, unquoted.
    Str(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Yes => f.write_str("y"),
            Value::Module => f.write_str("m"),
            Value::No => f.write_str("is not set"),
            Value::Number(n) => write!(f, "{n}"),
            Value::Str(s) => write!(f, "\"{s}\""),
        }
    }
}

/// A parsed kernel configuration: symbol (with `CONFIG_`) → value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelConfig {
    values: BTreeMap<String, Value>,
}

impl KernelConfig {
    /// The value of `name` (e.g. `CONFIG_BUG`), if the config mentions it.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    /// How many symbols the config mentions (set or explicitly not set).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the config mentions no symbol at all.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The config as `.config` text that [`parse`] reads back to the same values.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (name, value) in &self.values {
            match value {
                Value::No => out.push_str(&format!("# {name} is not set\n")),
                Value::Str(s) => out.push_str(&format!(
                    "{name}=\"{}\"\n",
                    s.replace('\\', "\\\\").replace('"', "\\\"")
                )),
                other => out.push_str(&format!("{name}={other}\n")),
            }
        }
        out
    }
}

/// Parses `.config` text. Blank lines and other comments are ignored; any other line must be
/// `CONFIG_X=value`, or the error names its line number.
pub fn parse(text: &str) -> Result<KernelConfig> {
    let mut values = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            if let Some(name) = comment.trim().strip_suffix(" is not set")
                && name.starts_with("CONFIG_")
                && !name.contains(char::is_whitespace)
            {
                values.insert(name.to_owned(), Value::No);
            }
            continue;
        }
        let bad = |reason: &str| Error::ConfigLine {
            line: i + 1,
            reason: reason.to_owned(),
        };
        let (name, raw) = line
            .split_once('=')
            .ok_or_else(|| bad("expected CONFIG_X=value"))?;
        if !name.starts_with("CONFIG_") || name.len() == "CONFIG_".len() {
            return Err(bad("symbol must start with CONFIG_"));
        }
        values.insert(
            name.to_owned(),
            parse_value(raw).ok_or_else(|| bad("unreadable value"))?,
        );
    }
    Ok(KernelConfig { values })
}

fn parse_value(raw: &str) -> Option<Value> {
    match raw {
        "y" => return Some(Value::Yes),
        "m" => return Some(Value::Module),
        "n" => return Some(Value::No),
        _ => {}
    }
    if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        return Some(Value::Str(
            inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        ));
    }
    if let Some(hex) = raw.strip_prefix("0x").or_else(|| raw.strip_prefix("0X")) {
        return i128::from_str_radix(hex, 16).ok().map(Value::Number);
    }
    raw.parse().ok().map(Value::Number)
}

const IKCFG_ST: &[u8] = b"IKCFG_ST";
const IKCFG_ED: &[u8] = b"IKCFG_ED";
/// Largest configuration accepted from a blob (real ones are ~300 KiB).
const MAX_CONFIG: u64 = 16 << 20;

/// Extracts and parses the IKCONFIG blob of an uncompressed kernel binary.
pub fn from_kernel_image(bytes: &[u8]) -> Result<KernelConfig> {
    let Some(start) = find(bytes, IKCFG_ST).map(|p| p + IKCFG_ST.len()) else {
        return Err(if is_bzimage(bytes) {
            Error::CompressedKernel
        } else {
            Error::NoIkconfig
        });
    };
    let end = find(&bytes[start..], IKCFG_ED)
        .map(|p| start + p)
        .ok_or(Error::NoIkconfig)?;
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(&bytes[start..end])
        .take(MAX_CONFIG + 1)
        .read_to_end(&mut text)
        .map_err(|source| Error::Ikconfig {
            reason: source.to_string(),
        })?;
    if text.len() as u64 > MAX_CONFIG {
        return Err(Error::Ikconfig {
            reason: format!("larger than {MAX_CONFIG} bytes"),
        });
    }
    let text = String::from_utf8(text).map_err(|_| Error::Ikconfig {
        reason: "not UTF-8 text".to_owned(),
    })?;
    parse(&text)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An x86 boot-protocol image: `HdrS` magic at offset 0x202.
fn is_bzimage(bytes: &[u8]) -> bool {
    bytes.get(0x202..0x206) == Some(b"HdrS")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn kspp_parses_every_value_form() {
        let cfg = parse(
            "# Automatically generated\n\nCONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\n\
             CONFIG_D=n\nCONFIG_E=\"sha512\"\nCONFIG_F=-1\nCONFIG_G=0x01b6\n\
             CONFIG_H=0xdead000000000000\n",
        )
        .unwrap();
        assert_eq!(cfg.len(), 8);
        assert_eq!(cfg.get("CONFIG_A"), Some(&Value::Yes));
        assert_eq!(cfg.get("CONFIG_B"), Some(&Value::Module));
        assert_eq!(cfg.get("CONFIG_C"), Some(&Value::No));
        assert_eq!(cfg.get("CONFIG_D"), Some(&Value::No));
        assert_eq!(cfg.get("CONFIG_E"), Some(&Value::Str("sha512".into())));
        assert_eq!(cfg.get("CONFIG_F"), Some(&Value::Number(-1)));
        assert_eq!(cfg.get("CONFIG_G"), Some(&Value::Number(0x1b6)));
        assert_eq!(
            cfg.get("CONFIG_H"),
            Some(&Value::Number(0xdead_0000_0000_0000))
        );
        assert_eq!(cfg.get("CONFIG_I"), None);
    }

    #[test]
    fn kspp_config_text_round_trips() {
        let cfg = parse(
            "CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_E=\"a \\\"q\\\" \\\\ b\"\nCONFIG_G=0x01b6\nCONFIG_F=-1\n",
        )
        .unwrap();
        assert_eq!(
            cfg.get("CONFIG_E"),
            Some(&Value::Str("a \"q\" \\ b".into()))
        );
        assert_eq!(parse(&cfg.to_text()).unwrap(), cfg);
    }

    #[test]
    fn kspp_bad_lines_name_their_number() {
        let err = parse("CONFIG_A=y\ngarbage\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel config line 2: expected CONFIG_X=value"
        );
        let err = parse("CONFIG_A=y\nCONFIG_B=maybe\n").unwrap_err();
        assert_eq!(err.to_string(), "kernel config line 2: unreadable value");
        assert!(matches!(
            parse("FOO=y").unwrap_err(),
            Error::ConfigLine { line: 1, .. }
        ));
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn kspp_extracts_ikconfig_from_a_binary() {
        let mut image = vec![0x7f, b'E', b'L', b'F'];
        image.extend_from_slice(&[0u8; 1000]);
        image.extend_from_slice(IKCFG_ST);
        image.extend_from_slice(&gzip(b"CONFIG_BUG=y\n# CONFIG_KEXEC is not set\n"));
        image.extend_from_slice(IKCFG_ED);
        image.extend_from_slice(&[0xffu8; 100]);
        let cfg = from_kernel_image(&image).unwrap();
        assert_eq!(cfg.get("CONFIG_BUG"), Some(&Value::Yes));
        assert_eq!(cfg.get("CONFIG_KEXEC"), Some(&Value::No));
    }

    #[test]
    fn kspp_ikconfig_errors_are_distinct() {
        assert!(matches!(
            from_kernel_image(&[0u8; 4096]),
            Err(Error::NoIkconfig)
        ));
        let mut bz = vec![0u8; 4096];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(matches!(
            from_kernel_image(&bz),
            Err(Error::CompressedKernel)
        ));
        let mut broken = IKCFG_ST.to_vec();
        broken.extend_from_slice(b"not gzip");
        broken.extend_from_slice(IKCFG_ED);
        assert!(matches!(
            from_kernel_image(&broken),
            Err(Error::Ikconfig { .. })
        ));
        let mut open = IKCFG_ST.to_vec();
        open.extend_from_slice(&gzip(b"CONFIG_BUG=y\n"));
        assert!(matches!(from_kernel_image(&open), Err(Error::NoIkconfig)));
    }
}
