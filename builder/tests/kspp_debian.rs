//! Debian's real cloud kernel config (`/boot/config-*` from linux-image-cloud-amd64, installed
//! by scripts/setup.sh) read and checked against KSPP's recommendations. Prints met/total.
//! Without a `/boot/config-*` it skips with a message, except under `CI=true`, where it fails.

use kitfleet_builder::kspp::{self, Arch, Report};

fn debian_config() -> Option<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("config-"))
        })
        .collect();
    found.sort();
    found.pop()
}

#[test]
fn kspp_debian_cloud_kernel_config() -> anyhow::Result<()> {
    let Some(path) = debian_config() else {
        let msg = "no /boot/config-* (install linux-image-cloud-amd64: scripts/setup.sh)";
        if std::env::var("CI").as_deref() == Ok("true") {
            anyhow::bail!("{msg}");
        }
        eprintln!("skipping: {msg}");
        return Ok(());
    };
    let text = std::fs::read_to_string(&path)?;
    let started = std::time::Instant::now();
    let config = kspp::parse(&text)?;
    // A distribution kernel config mentions thousands of symbols (6.1 cloud: ~2,800 set).
    assert!(
        config.len() > 1000,
        "{}: only {} symbols",
        path.display(),
        config.len()
    );
    assert_eq!(
        config.get("CONFIG_BUG"),
        Some(&kspp::Value::Yes),
        "{}",
        path.display()
    );
    let report = kspp::check(Some(&config), Arch::X86_64, &[])?;
    let Report::Checked { met, unmet, .. } = &report else {
        anyhow::bail!("unknown: {report:?}")
    };
    let elapsed = started.elapsed();
    let total = met.len() + unmet.len();
    println!(
        "{}: {} symbols; KSPP met {}/{total}",
        path.display(),
        config.len(),
        met.len()
    );
    println!("parse + check: {elapsed:?} (figure, not asserted)");
    for u in unmet {
        println!(
            "  unmet {} (expected {}, found {})",
            u.setting, u.expected, u.found
        );
    }
    // Debian enables the basics; a parse that lost them would show up here.
    assert!(
        met.len() * 3 > total,
        "implausibly few met: {}/{total}",
        met.len()
    );
    assert!(
        !unmet.is_empty(),
        "Debian's kernel is not fully KSPP-hardened; an empty unmet list means the check is broken"
    );
    Ok(())
}
