//! `kitfleet-wg`: the Kitfleet CNI plugin. The CNI runtime passes the verb and attachment in
//! `CNI_*` variables and the network configuration on stdin; the result (or a CNI error) goes
//! to stdout, logs go to `logFile` or stderr.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::process::ExitCode;

use kitfleet_cni_wg::cni::env;
use kitfleet_cni_wg::plugin;

fn main() -> ExitCode {
    if let Some(host_if) = std::env::var_os(plugin::REAP_ENV) {
        // Detached reaper spawned by DEL: delete one link, then exit.
        let marker = std::env::var_os(plugin::REAP_MARKER_ENV).map(std::path::PathBuf::from);
        let ok = plugin::reap(&host_if.to_string_lossy(), marker.as_deref()).is_ok();
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    plugin::init_logging(&stdin);
    let outcome = read
        .map_err(|e| {
            kitfleet_cni_wg::cni::CniError::new(
                kitfleet_cni_wg::cni::code::IO_FAILURE,
                "cannot read stdin",
            )
            .details(e)
        })
        .and_then(|_| env::from_vars(|k| std::env::var(k).ok()))
        .and_then(|env| plugin::run(&env, &stdin));
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(code = e.code, error = %e, "failed");
            let _ = writeln!(out, "{}", e.to_json(plugin::error_version(&stdin)));
            ExitCode::FAILURE
        }
    }
}
