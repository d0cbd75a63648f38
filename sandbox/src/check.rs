//! `kitfleet-sandbox check`: what this kernel can enforce of a compiled policy, rule by rule.
//! Builds every ruleset for real (without enforcing it) and test-loads every seccomp filter in a
//! throwaway child process.

use crate::landlock::{self, sys};
use crate::launcher::{self, exit};
use crate::policy::CompiledPolicy;
use crate::seccomp::install::install;
use std::fmt::Write;

/// Checks `policy`; returns the text report and the exit code `exec` would have before exec.
pub fn check(policy: &CompiledPolicy) -> (String, i32) {
    let mut out = String::new();
    let mut code = 0;
    let abi = match sys::abi() {
        Ok(a) => a,
        Err(e) => return (format!("landlock: ABI probe failed: {e}\n"), exit::ENFORCE),
    };
    let _ = writeln!(out, "landlock: kernel ABI {abi}");
    for layer in &policy.landlock {
        let min = layer
            .min_abi
            .map_or("best effort".to_string(), |m| format!("minAbi {m}"));
        let _ = writeln!(out, "layer {} ({}, {min}):", layer.policy, layer.mode);
        match landlock::prepare(std::slice::from_ref(layer), abi) {
            Err(e) => {
                let c = launcher::Refusal::from(e);
                let _ = writeln!(out, "  REFUSED: {} (exit {})", c.reason, c.code);
                code = if code == 0 { c.code } else { code };
            }
            Ok(p) => {
                for r in &p.reports {
                    if let Some(reason) = &r.reason {
                        let _ = writeln!(out, "  not applied: {reason}");
                        continue;
                    }
                    for rule in &r.rules {
                        let access: Vec<String> = rule.access.iter().map(kebab).collect();
                        let why = rule
                            .reason
                            .as_deref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default();
                        let _ = writeln!(
                            out,
                            "  {} {}: {} [{}]{why}",
                            rule.field,
                            rule.path,
                            rule.status,
                            access.join(", ")
                        );
                    }
                    if !r.unsupported_access.is_empty() {
                        let list: Vec<String> = r.unsupported_access.iter().map(kebab).collect();
                        let _ = writeln!(
                            out,
                            "  rights this ABI cannot restrict: {}",
                            list.join(", ")
                        );
                    }
                    if let Some(n) = &r.network {
                        let _ = writeln!(out, "  tcp ports: {n}");
                    }
                    let scopes: Vec<String> = r.scopes.iter().map(kebab).collect();
                    let missing: Vec<String> = r.unsupported_scopes.iter().map(kebab).collect();
                    let _ = writeln!(
                        out,
                        "  scopes: [{}], unsupported: [{}]",
                        scopes.join(", "),
                        missing.join(", ")
                    );
                    let _ = writeln!(out, "  denials logged after exec: {}", r.log_new_exec);
                }
            }
        }
    }
    match launcher::native_layers(policy) {
        Err(r) => {
            let _ = writeln!(out, "seccomp: {} (exit {})", r.reason, r.code);
            code = if code == 0 { r.code } else { code };
        }
        Ok(layers) => {
            for l in layers {
                let loaded = match test_load(&l.program, l.log) {
                    Ok(()) => "loads".to_string(),
                    Err(e) => {
                        code = if code == 0 { exit::ENFORCE } else { code };
                        format!("REJECTED by the kernel: {e}")
                    }
                };
                let _ = writeln!(
                    out,
                    "seccomp {}: {} instructions, log {}: {loaded}",
                    l.policy,
                    l.program.len(),
                    l.log
                );
            }
        }
    }
    let verdict = if code == 0 {
        "the workload would run".to_string()
    } else {
        format!("exec would refuse (exit {code})")
    };
    let _ = writeln!(out, "result: {verdict}");
    (out, code)
}

/// Installs the filter in a forked child that exits at once.
fn test_load(prog: &[crate::seccomp::bpf::SockFilter], log: bool) -> std::io::Result<()> {
    // SAFETY: the process is single-threaded here; the child only makes async-signal-safe calls
    // (prctl, seccomp, _exit) before exiting.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        let code = match sys::set_no_new_privs().and_then(|()| install(prog, log)) {
            Ok(()) => 0,
            Err(e) => e.raw_os_error().unwrap_or(255).min(255),
        };
        // SAFETY: terminating the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for the child we just forked; `status` is a valid out-pointer.
    if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
        (true, 0) => Ok(()),
        (true, e) => Err(std::io::Error::from_raw_os_error(e)),
        _ => Err(std::io::Error::other("test child died")),
    }
}

/// The serde (kebab-case) name of an enum value.
fn kebab<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
