//! Fault hooks for the plugin's own tests, compiled only with the cargo feature `fault-injection`.
//!
//! The feature is enabled by cni-wg's self dev-dependency, so `cargo test` (and `cargo bench`) build the
//! `kitfleet-wg` they run with the hooks; `cargo build` and the images (`scripts/images/build.sh`, which
//! refuses a `kitfleet-wg` containing the variable names) never have them. Without the feature every
//! hook is a no-op and the variable names are not in the binary.
//!
//! - `KITFLEET_WG_TEST_HANG=<point>`: ADD stops at that point until killed (a test SIGKILLs it there).
//! - `KITFLEET_WG_TEST_FAIL=<point>`: ADD fails at that point (a test checks the rollback).
//! - `KITFLEET_WG_TEST_REAP_DELAY_MS=<ms>`: DEL's reaper waits first (a test races an ADD against it).
//!
//! Points: `after-reserve`, `after-veth`, `after-pod-addr`, `after-pod-routes`, `after-host-up`,
//! `after-host-route`.

use crate::cni::CniError;

/// Whether this build has the hooks (the `fault-injection` feature).
pub const ENABLED: bool = cfg!(feature = "fault-injection");

#[cfg(feature = "fault-injection")]
mod hooks {
    use crate::cni::{CniError, code};

    pub const HANG_ENV: &str = "KITFLEET_WG_TEST_HANG";
    pub const FAIL_ENV: &str = "KITFLEET_WG_TEST_FAIL";
    pub const REAP_DELAY_ENV: &str = "KITFLEET_WG_TEST_REAP_DELAY_MS";

    pub fn point(point: &str) -> Result<(), CniError> {
        if std::env::var(HANG_ENV).is_ok_and(|p| p == point) {
            tracing::warn!(point, "{HANG_ENV}: hanging until killed");
            eprintln!("kitfleet-wg: hanging at {point}");
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
        if std::env::var(FAIL_ENV).is_ok_and(|p| p == point) {
            return Err(CniError::new(
                code::KERNEL,
                format!("injected failure at {point} ({FAIL_ENV})"),
            ));
        }
        Ok(())
    }

    pub fn pass_reap_delay(cmd: &mut std::process::Command) {
        if let Some(delay) = std::env::var_os(REAP_DELAY_ENV) {
            cmd.env(REAP_DELAY_ENV, delay);
        }
    }

    pub fn reap_delay() {
        if let Some(ms) = std::env::var(REAP_DELAY_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
}

/// ADD's fault point `point`: may hang or fail there (with the feature); `Ok(())` otherwise.
#[inline]
pub(crate) fn point(point: &str) -> Result<(), CniError> {
    #[cfg(feature = "fault-injection")]
    return hooks::point(point);
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = point;
        Ok(())
    }
}

/// Passes the reaper delay on to the reaper process DEL spawns (with the feature).
#[inline]
pub(crate) fn pass_reap_delay(cmd: &mut std::process::Command) {
    #[cfg(feature = "fault-injection")]
    hooks::pass_reap_delay(cmd);
    #[cfg(not(feature = "fault-injection"))]
    let _ = cmd;
}

/// The reaper's delay before it deletes the link (with the feature).
#[inline]
pub(crate) fn reap_delay() {
    #[cfg(feature = "fault-injection")]
    hooks::reap_delay();
}
