//! Which image the running kernel booted: the `kitfleet.buildkey=<hex>` parameter the builder puts on
//! every image's command line, read from `/proc/cmdline` (never a file the agent wrote before rebooting).

use std::path::Path;

use kitfleet_api::constants::CMDLINE_BUILD_KEY;

/// Where the running kernel reports its command line.
pub const PROC_CMDLINE: &str = "/proc/cmdline";

/// The build key (64 lowercase hex digits) in a kernel command line, if any. Only kernel parameters count
/// (words before a ` -- `); the last occurrence wins, as for the kernel's own parameters. A value that is not
/// 64 hex digits is no build key.
pub fn build_key_from_cmdline(cmdline: &str) -> Option<String> {
    let prefix = format!("{CMDLINE_BUILD_KEY}=");
    cmdline
        .split_ascii_whitespace()
        .take_while(|w| *w != "--")
        .filter_map(|w| w.strip_prefix(prefix.as_str()))
        .last()
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
}

/// The booted build key read from `path` (normally [`PROC_CMDLINE`]); `None` when unreadable or absent.
pub fn booted_build_key(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    build_key_from_cmdline(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_key_among_kernel_parameters() {
        let k = "0123456789abcdef".repeat(4);
        let line = format!("BOOT_IMAGE=/x console=ttyS0 kitfleet.buildkey={k} panic=-1\n");
        assert_eq!(build_key_from_cmdline(&line), Some(k.clone()));
        let upper = k.to_ascii_uppercase();
        assert_eq!(
            build_key_from_cmdline(&format!("kitfleet.buildkey={upper}")),
            Some(k.clone())
        );
        let other = "f".repeat(64);
        assert_eq!(
            build_key_from_cmdline(&format!("kitfleet.buildkey={k} kitfleet.buildkey={other}")),
            Some(other)
        );
    }

    #[test]
    fn ignores_init_arguments_bad_values_and_absence() {
        let k = "a".repeat(64);
        assert_eq!(
            build_key_from_cmdline(&format!("quiet -- kitfleet.buildkey={k}")),
            None
        );
        assert_eq!(build_key_from_cmdline("kitfleet.buildkey=abc"), None);
        assert_eq!(
            build_key_from_cmdline(&format!("kitfleet.buildkey=sha256:{k}")),
            None
        );
        assert_eq!(
            build_key_from_cmdline(&format!("kitfleet.buildkey={}", "g".repeat(64))),
            None
        );
        assert_eq!(build_key_from_cmdline("console=ttyS0"), None);
        assert_eq!(build_key_from_cmdline(""), None);
    }

    #[test]
    fn reads_a_file_and_tolerates_a_missing_one() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cmdline");
        std::fs::write(&p, format!("a kitfleet.buildkey={}\n", "b".repeat(64))).unwrap();
        assert_eq!(booted_build_key(&p), Some("b".repeat(64)));
        assert_eq!(booted_build_key(&d.path().join("none")), None);
    }
}
