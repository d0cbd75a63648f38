//! How a running node tells which image it booted: the build key goes into the UKI's `.osrel`
//! section and onto the kernel command line (`kitfleet.buildkey=<hex>`), which the kernel
//! reports in `/proc/cmdline` and the node agent publishes. Pure text functions.

use kitfleet_api::constants::CMDLINE_BUILD_KEY;

/// The os-release text of an image with `build_key`: `VERSION_ID` is the key's first 12 hex
/// digits, `BUILD_ID`, `IMAGE_VERSION` and `KITFLEET_BUILD_KEY` the whole key (hex, no `sha256:`).
pub fn os_release(build_key: &[u8; 32]) -> String {
    let hex = hex::encode(build_key);
    format!(
        "NAME=\"Kitfleet\"\nID=kitfleet\nVERSION_ID={}\nBUILD_ID={hex}\nIMAGE_VERSION={hex}\nKITFLEET_BUILD_KEY={hex}\n",
        &hex[..12]
    )
}

/// `cmdline` with `kitfleet.buildkey=<hex>` added among the kernel's parameters: before a ` -- `
/// (what follows it goes to init), replacing any `kitfleet.buildkey=` the manifest carried.
pub fn cmdline_with_build_key(cmdline: &str, build_key: &[u8; 32]) -> String {
    let param = format!("{CMDLINE_BUILD_KEY}={}", hex::encode(build_key));
    let (kernel, init) = split_init_args(cmdline);
    let prefix = format!("{CMDLINE_BUILD_KEY}=");
    let mut words: Vec<&str> = kernel
        .split(' ')
        .filter(|w| !w.is_empty() && !w.starts_with(&prefix))
        .collect();
    words.push(&param);
    let mut out = words.join(" ");
    if let Some(init) = init {
        out.push_str(" --");
        if !init.is_empty() {
            out.push(' ');
            out.push_str(init);
        }
    }
    out
}

/// Splits at the first ` -- ` word: (kernel parameters, init arguments).
fn split_init_args(cmdline: &str) -> (&str, Option<&str>) {
    let mut pos = 0;
    for w in cmdline.split(' ') {
        if w == "--" {
            return (&cmdline[..pos], Some(cmdline[pos + 2..].trim_start()));
        }
        pos += w.len() + 1;
    }
    (cmdline, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [0xab; 32];

    fn hex() -> String {
        "ab".repeat(32)
    }

    #[test]
    fn os_release_names_the_whole_key() {
        let o = os_release(&KEY);
        assert!(
            o.contains(&format!("\nKITFLEET_BUILD_KEY={}\n", hex())),
            "{o}"
        );
        assert!(o.contains(&format!("\nIMAGE_VERSION={}\n", hex())), "{o}");
        assert!(o.contains(&format!("\nBUILD_ID={}\n", hex())), "{o}");
        assert!(o.contains("\nVERSION_ID=abababababab\n"), "{o}");
        assert!(!o.contains("sha256:"));
    }

    #[test]
    fn cmdline_gets_the_key_once_before_init_arguments() {
        let p = format!("kitfleet.buildkey={}", hex());
        assert_eq!(cmdline_with_build_key("", &KEY), p);
        assert_eq!(
            cmdline_with_build_key("console=ttyS0 panic=-1", &KEY),
            format!("console=ttyS0 panic=-1 {p}")
        );
        assert_eq!(
            cmdline_with_build_key("console=ttyS0 -- single x", &KEY),
            format!("console=ttyS0 {p} -- single x")
        );
        assert_eq!(cmdline_with_build_key("-- x", &KEY), format!("{p} -- x"));
        assert_eq!(
            cmdline_with_build_key("a kitfleet.buildkey=00 b", &KEY),
            format!("a b {p}")
        );
        assert_eq!(cmdline_with_build_key("a  b", &KEY), format!("a b {p}"));
    }
}
