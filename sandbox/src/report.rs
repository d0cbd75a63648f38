//! The launcher's outcome report: one JSON object, sent as one line over a unix stream socket
//! when one is configured, else written to stderr as `kitfleet-sandbox: {...}`.

use crate::landlock::LayerReport;
use serde::Serialize;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Prefix of the stderr line.
pub const PREFIX: &str = "kitfleet-sandbox: ";

/// What the launcher did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// `enforced` (the workload is about to be executed), `refused` or `error`.
    pub event: &'static str,
    /// The launcher's pid (the workload keeps it).
    pub pid: u32,
    /// Source policies.
    pub policies: Vec<String>,
    /// The workload's argv[0].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// The kernel's Landlock ABI (0: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub landlock_abi: Option<u32>,
    /// Per Landlock layer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub landlock: Vec<LayerReport>,
    /// Per seccomp layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<SeccompReport>,
    /// Why the workload does not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The launcher's exit code when it does not exec.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// Seccomp part of the report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompReport {
    /// Architecture of the installed filters.
    pub arch: String,
    /// In installation order.
    pub layers: Vec<SeccompLayerReport>,
}

/// One installed filter.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompLayerReport {
    /// Source policy.
    pub policy: String,
    /// Its mode.
    pub mode: String,
    /// Installed with `SECCOMP_FILTER_FLAG_LOG`.
    pub log: bool,
    /// Program length.
    pub instructions: usize,
}

impl Outcome {
    /// An empty outcome for this process.
    pub fn new(event: &'static str) -> Self {
        Outcome {
            event,
            pid: std::process::id(),
            policies: Vec::new(),
            program: None,
            landlock_abi: None,
            landlock: Vec::new(),
            seccomp: None,
            reason: None,
            exit_code: None,
        }
    }

    /// The JSON line (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("outcome serialises")
    }
}

/// A connected report channel (connected early, before any restriction is in force).
#[derive(Debug)]
pub enum Channel {
    /// The node agent's socket.
    Socket(UnixStream),
    /// stderr; `note` says why the socket was not used, if one was configured.
    Stderr {
        /// Connection error, reported inside the line.
        note: Option<String>,
    },
}

impl Channel {
    /// Connects to `socket`, falling back to stderr when it is unset or unreachable.
    pub fn open(socket: Option<&str>) -> Channel {
        match socket {
            None => Channel::Stderr { note: None },
            Some(path) => match UnixStream::connect(path) {
                Ok(s) => {
                    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                    Channel::Socket(s)
                }
                Err(e) => Channel::Stderr {
                    note: Some(format!("report socket {path}: {e}")),
                },
            },
        }
    }

    /// Sends the outcome; failures to send fall back to stderr (reporting never blocks the workload).
    pub fn send(self, outcome: &Outcome) {
        let line = outcome.to_line();
        match self {
            Channel::Socket(mut s) => {
                if let Err(e) = s.write_all(format!("{line}\n").as_bytes()) {
                    stderr_line(&line, Some(&format!("report socket: {e}")));
                }
            }
            Channel::Stderr { note } => stderr_line(&line, note.as_deref()),
        }
    }
}

fn stderr_line(line: &str, note: Option<&str>) {
    let mut text = format!("{PREFIX}{line}\n");
    if let Some(n) = note {
        // Keep it one JSON object: add the note as a field.
        if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(line) {
            v["reportError"] = n.into();
            text = format!("{PREFIX}{v}\n");
        }
    }
    let _ = std::io::stderr().write_all(text.as_bytes());
}
