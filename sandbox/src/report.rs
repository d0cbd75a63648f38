//! The launcher's outcome report: one JSON object, sent as one line over a unix stream socket
//! when one is configured, else written to stderr as `kitfleet-sandbox: {...}`.

use crate::landlock::LayerReport;
use serde::Serialize;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Prefix of the stderr line.
pub const PREFIX: &str = "kitfleet-sandbox: ";

/// What the launcher did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// `enforced` (every restriction is in force, the workload is about to be executed; sent
    /// after the seccomp filters are installed), `enforcing` (Landlock is in force and the
    /// filters are installed right after this report, because they would not let it through),
    /// `refused` or `error`.
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
        self.encode(outcome).write(&|_| true);
    }

    /// The outcome as the bytes this channel carries, ready to be written.
    pub fn encode(self, outcome: &Outcome) -> Encoded {
        let line = outcome.to_line();
        let bytes = match &self {
            Channel::Socket(_) => format!("{line}\n").into_bytes(),
            Channel::Stderr { note } => stderr_text(&line, note.as_deref()).into_bytes(),
        };
        Encoded {
            channel: self,
            line,
            bytes,
        }
    }
}

/// A predicate over the arguments of one `write(2)`: whether the installed seccomp filters let
/// it through (the launcher evaluates its own filters before each write it makes under them).
pub type WriteCheck<'a> = &'a dyn Fn(&[u64; 6]) -> bool;

/// An encoded outcome bound to its channel.
#[derive(Debug)]
pub struct Encoded {
    channel: Channel,
    line: String,
    bytes: Vec<u8>,
}

impl Encoded {
    fn fd(&self) -> RawFd {
        match &self.channel {
            Channel::Socket(s) => s.as_raw_fd(),
            Channel::Stderr { .. } => libc::STDERR_FILENO,
        }
    }

    /// Whether `allowed` lets the first `write(2)` of this report through.
    pub fn first_write_passes(&self, allowed: WriteCheck<'_>) -> bool {
        allowed(&write_args(self.fd(), &self.bytes))
    }

    /// Gives the channel back, unsent.
    pub fn into_channel(self) -> Channel {
        self.channel
    }

    /// Writes the report with raw `write(2)` calls, each only if `allowed` lets it through; a
    /// failed socket write falls back to stderr (with `reportError`).
    pub fn write(self, allowed: WriteCheck<'_>) {
        if let Err(e) = write_checked(self.fd(), &self.bytes, allowed)
            && matches!(self.channel, Channel::Socket(_))
        {
            let text = stderr_text(&self.line, Some(&format!("report socket: {e}")));
            let _ = write_checked(libc::STDERR_FILENO, text.as_bytes(), allowed);
        }
    }
}

/// The arguments of `write(fd, buf, len)` as `seccomp_data` shows them (the rest are zero
/// because [`write_checked`] passes zeros).
fn write_args(fd: RawFd, buf: &[u8]) -> [u64; 6] {
    [fd as u64, buf.as_ptr() as u64, buf.len() as u64, 0, 0, 0]
}

/// Writes all of `buf` to `fd`, checking every `write(2)` with `allowed` first.
pub fn write_checked(fd: RawFd, mut buf: &[u8], allowed: WriteCheck<'_>) -> io::Result<()> {
    while !buf.is_empty() {
        let a = write_args(fd, buf);
        if !allowed(&a) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the policy's seccomp filter would not let the write through",
            ));
        }
        // SAFETY: `buf` is valid for `a[2]` bytes at `a[1]`; the unused argument registers are
        // set to zero so that the filter sees exactly `a`.
        let n = unsafe { libc::syscall(libc::SYS_write, a[0], a[1], a[2], 0u64, 0u64, 0u64) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

fn stderr_text(line: &str, note: Option<&str>) -> String {
    let mut text = format!("{PREFIX}{line}\n");
    if let Some(n) = note {
        // Keep it one JSON object: add the note as a field.
        if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(line) {
            v["reportError"] = n.into();
            text = format!("{PREFIX}{v}\n");
        }
    }
    text
}
