//! Command-line front end (the binary's `main` only calls [`run`]).

use crate::compile::{self, Options};
use crate::launcher::exit;
use crate::policy::CompiledPolicy;
use crate::seccomp::Arch;
use clap::{Parser, Subcommand};
use kitfleet_api::SecurityPolicy;
use std::ffi::OsString;
use std::path::PathBuf;

/// Kitfleet sandbox: compile SecurityPolicies, check and enforce them.
#[derive(Debug, Parser)]
#[command(name = "kitfleet-sandbox", version)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Apply the compiled policy to this process, then execve ARGV (environment unchanged).
    Exec {
        /// Compiled policy file.
        #[arg(long)]
        policy: String,
        /// Unix socket for the outcome report (overrides the policy file's `reportSocket`).
        #[arg(long)]
        report_socket: Option<String>,
        /// The workload.
        #[arg(last = true, required = true)]
        argv: Vec<OsString>,
    },
    /// Show what this kernel can enforce of a compiled policy, rule by rule.
    Check {
        /// Compiled policy file.
        #[arg(long)]
        policy: String,
    },
    /// Compile SecurityPolicy manifests (stacked in the order given) into policy.json and seccomp-profile.json.
    Compile {
        /// Output directory.
        #[arg(short, long, default_value = ".")]
        out_dir: PathBuf,
        /// Architectures to emit (default: x86_64 and aarch64).
        #[arg(long = "arch", value_parser = parse_arch)]
        arches: Vec<Arch>,
        /// Report socket recorded in the policy file.
        #[arg(long)]
        report_socket: Option<String>,
        /// SecurityPolicy YAML files (several documents per file allowed).
        #[arg(required = true)]
        manifests: Vec<PathBuf>,
    },
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    Arch::ALL
        .into_iter()
        .find(|a| a.name() == s)
        .ok_or_else(|| format!("unknown architecture {s:?} (x86_64, aarch64)"))
}

/// Parses the command line and runs; returns the process exit code.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { exit::USAGE } else { 0 };
        }
    };
    match cli.cmd {
        Cmd::Exec {
            policy,
            report_socket,
            argv,
        } => crate::launcher::exec(&policy, report_socket.as_deref(), &argv),
        Cmd::Check { policy } => match CompiledPolicy::load(&policy) {
            Ok(p) => {
                let (text, code) = crate::check::check(&p);
                print!("{text}");
                code
            }
            Err(e) => {
                eprintln!("kitfleet-sandbox: {e}");
                exit::USAGE
            }
        },
        Cmd::Compile {
            out_dir,
            arches,
            report_socket,
            manifests,
        } => {
            let opts = Options {
                arches: if arches.is_empty() {
                    Arch::ALL.to_vec()
                } else {
                    arches
                },
                report_socket,
            };
            match compile_files(&manifests, &opts, &out_dir) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{e}");
                    1
                }
            }
        }
    }
}

/// Reads SecurityPolicy manifests (multi-document YAML).
pub fn read_manifests(paths: &[PathBuf]) -> Result<Vec<SecurityPolicy>, String> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        match parse_manifests(&path.display().to_string(), &text) {
            Ok(policies) => out.extend(policies),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors.join("\n"))
    }
}

/// Parses the SecurityPolicy manifests of one multi-document YAML text; `origin` (a file name)
/// starts every error line. Every document must be a `kitfleet.dev/v1alpha1` SecurityPolicy.
pub fn parse_manifests(origin: &str, text: &str) -> Result<Vec<SecurityPolicy>, String> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| format!("{origin}: {e}"))?;
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let kind = (
            doc.get("apiVersion").and_then(|v| v.as_str()),
            doc.get("kind").and_then(|v| v.as_str()),
        );
        if kind != (Some("kitfleet.dev/v1alpha1"), Some("SecurityPolicy")) {
            errors.push(format!(
                "{origin} document {i}: not a kitfleet.dev/v1alpha1 SecurityPolicy"
            ));
            continue;
        }
        // apiVersion and kind are checked above; the typed object carries them itself.
        let mut doc = doc;
        if let Some(m) = doc.as_object_mut() {
            m.remove("apiVersion");
            m.remove("kind");
        }
        let meta = |k: &str| {
            doc.pointer(&format!("/metadata/{k}"))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let name = match (meta("namespace"), meta("name")) {
            (Some(ns), Some(n)) => format!("policy {ns}/{n}"),
            (None, Some(n)) => format!("policy {n}"),
            _ => "policy <unnamed>".to_string(),
        };
        match kitfleet_api::from_value::<SecurityPolicy>(doc) {
            Ok(p) => out.push(p),
            Err(e) => errors.push(format!("{origin} document {i}: {name}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors.join("\n"))
    }
}

fn compile_files(
    paths: &[PathBuf],
    opts: &Options,
    out_dir: &std::path::Path,
) -> Result<(), String> {
    let policies = read_manifests(paths)?;
    let c = compile::compile(&policies, opts).map_err(|e| e.to_string())?;
    for note in &c.notes {
        eprintln!("note: {note}");
    }
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let write = |name: &str, text: String| {
        let p = out_dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    write("policy.json", c.policy.to_json())?;
    write("seccomp-profile.json", c.profile.to_json())?;
    Ok(())
}
