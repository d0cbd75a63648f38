//! The `kitfleet-build` command line (the binary's `main` only calls [`main`]).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use kitfleet_api::nodeimage::OutputSpec;
use kitfleet_api::{NodeImage, OutputFormat};
use serde::Serialize;

use crate::assemble::{self, Mtime};
use crate::auth::Credentials;
use crate::build::{self, BuildOptions, RefStatus};
use crate::cache::Cache;
use crate::error::Result;
use crate::input;
use crate::progress::Progress;
use crate::source::{SourceOptions, Sources};
use crate::tree::Limits;

/// Build LinuxKit-compatible node images reproducibly, without Docker.
#[derive(Debug, Parser)]
#[command(name = "kitfleet-build", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct SourceArgs {
    /// Target architecture for multi-platform images.
    #[arg(long, default_value = "amd64")]
    arch: String,
    /// Registry (HOST:PORT) reached over plain HTTP; repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure: Vec<String>,
    /// Cache directory (default: $KITFLEET_CACHE, $XDG_CACHE_HOME/kitfleet, ~/.cache/kitfleet).
    #[arg(long, env = "KITFLEET_CACHE")]
    cache: Option<PathBuf>,
    /// Docker config file with registry credentials (default: $REGISTRY_AUTH_FILE,
    /// $DOCKER_CONFIG/config.json, ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    docker_config: Option<PathBuf>,
    /// Never contact a registry.
    #[arg(long)]
    offline: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build FILE (LinuxKit YAML or NodeImage manifest) into DIR.
    Build {
        file: PathBuf,
        /// Output directory.
        #[arg(short = 'o', long = "output", default_value = ".")]
        out: PathBuf,
        /// Formats, comma-separated (default: the NodeImage's, else kernel+initrd).
        #[arg(long, value_delimiter = ',')]
        format: Vec<OutputFormat>,
        /// Publish the outputs as an OCI artifact to this repository.
        #[arg(long, value_name = "REF")]
        push: Option<String>,
        /// Output file stem (default: NodeImage name or file stem).
        #[arg(long)]
        name: Option<String>,
        /// gzip level of the initrd.
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=9))]
        level: u32,
        /// UKI stub for disk formats.
        #[arg(long, default_value = crate::disk::DEFAULT_STUB_PATH)]
        uki_stub: PathBuf,
        /// Print a JSON summary on stdout.
        #[arg(long)]
        json: bool,
        /// No progress bars even on a terminal.
        #[arg(long)]
        no_progress: bool,
        #[command(flatten)]
        src: SourceArgs,
    },
    /// Print every image reference with its digest, the build key and the build plan.
    Resolve {
        file: PathBuf,
        /// Formats counted in the build key (default: the NodeImage's, else kernel+initrd).
        #[arg(long, value_delimiter = ',')]
        format: Vec<OutputFormat>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        src: SourceArgs,
    },
    /// Convert LinuxKit YAML to a NodeImage manifest, or a NodeImage manifest to LinuxKit YAML.
    Convert {
        file: PathBuf,
        /// NodeImage name (LinuxKit → NodeImage; default: the file stem).
        #[arg(long)]
        name: Option<String>,
        /// Output repository of the NodeImage.
        #[arg(long, default_value = "registry.invalid/kitfleet/node")]
        repository: String,
        /// Formats of the NodeImage.
        #[arg(long, value_delimiter = ',', default_value = "kernel+initrd")]
        format: Vec<OutputFormat>,
    },
    /// Pull a published artifact into DIR, verifying every file.
    Pull {
        reference: String,
        #[arg(short = 'o', long = "output", default_value = ".")]
        out: PathBuf,
        #[command(flatten)]
        src: SourceArgs,
    },
}

impl SourceArgs {
    fn sources(&self) -> Result<Sources> {
        let credentials = match &self.docker_config {
            Some(p) => Credentials::from_file(p)?,
            None => Credentials::discover()?,
        };
        let cache = Cache::open(self.cache.clone().unwrap_or_else(Cache::default_dir))?;
        Ok(Sources::new(
            cache,
            SourceOptions {
                arch: self.arch.clone(),
                insecure_registries: self.insecure.clone(),
                credentials,
                offline: self.offline,
            },
        ))
    }
}

fn formats_or_default(cli: &[OutputFormat], input: &input::Input) -> Vec<OutputFormat> {
    if !cli.is_empty() {
        return cli.to_vec();
    }
    let f = input.formats();
    if f.is_empty() {
        vec![OutputFormat::KernelInitrd]
    } else {
        f
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResolveReport {
    references: Vec<RefStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    build_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_tag: Option<String>,
    plan: Vec<PlanLine>,
}

#[derive(Serialize)]
struct PlanLine {
    location: String,
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    resolved: bool,
}

/// The layout the build would write, with each image's resolution state.
fn plan_lines(cfg: &kitfleet_api::linuxkit::Config, statuses: &[RefStatus]) -> Vec<PlanLine> {
    let status = |loc: &str| statuses.iter().find(|s| s.location == loc);
    let line = |location: String, path: String, ref_loc: &str| {
        let s = status(ref_loc);
        PlanLine {
            location,
            path,
            digest: s.and_then(|s| s.digest.clone()),
            resolved: s.is_some_and(|s| s.digest.is_some()),
        }
    };
    let mut out = Vec::new();
    if cfg.kernel.is_some() {
        out.push(line(
            "kernel".into(),
            "boot/kernel, boot/cmdline, kernel.tar modules".into(),
            "kernel.image",
        ));
    }
    for i in 0..cfg.init.len() {
        out.push(line(
            format!("init[{i}]"),
            "/".into(),
            &format!("init[{i}]"),
        ));
    }
    for (i, v) in cfg.volumes.iter().enumerate() {
        out.push(line(
            format!("volumes[{i}]"),
            format!("containers/volumes/{}", v.name),
            &format!("volumes[{i}].image"),
        ));
    }
    for (section, list) in cfg.sections() {
        for (i, img) in list.iter().enumerate() {
            let dir = if section == "services" {
                format!("containers/{section}/{}", img.name)
            } else {
                format!("containers/{section}/{i:03}-{}", img.name)
            };
            out.push(line(
                format!("{section}[{i}]"),
                dir,
                &format!("{section}[{i}].image"),
            ));
        }
    }
    for (i, f) in cfg.files.iter().enumerate() {
        out.push(PlanLine {
            location: format!("files[{i}]"),
            path: f.path.trim_start_matches('/').to_string(),
            digest: None,
            resolved: true,
        });
    }
    out
}

fn print_json<T: Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("plain structs serialise")
    );
}

async fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Build {
            file,
            out,
            format,
            push,
            name,
            level,
            uki_stub,
            json,
            no_progress,
            src,
        } => {
            let input = input::load(&file)?;
            let formats = formats_or_default(&format, &input);
            let sources = src.sources()?;
            let progress = Progress::new(!no_progress);
            let task = progress.task("resolve references", None);
            let (map, statuses) = build::resolve_all(&sources, &input.config, true).await?;
            task.done(&format!("{} references", statuses.len()));
            let mtime = Mtime::from_env()?;
            let base_dir = input.base_dir();
            let hardening = input.hardening();
            let key = build::build_key_hardened(
                &input.config,
                &map,
                &formats,
                &src.arch,
                mtime,
                level,
                &base_dir,
                &hardening,
            )?;
            let plan = assemble::plan(&input.config, &map, mtime, &base_dir)?;
            let opts = BuildOptions {
                formats,
                out_dir: out,
                name: name.unwrap_or(input.name.clone()),
                level,
                base_dir,
                mtime,
                limits: Limits::default(),
                progress,
                stub_path: uki_stub,
            };
            let result =
                build::build_hardened(&sources, &plan, key, statuses, &opts, &hardening).await?;
            let published = match &push {
                Some(r) => Some(crate::push::push(&sources, r, &result, &src.arch).await?),
                None => None,
            };
            if json {
                print_json(&serde_json::json!({ "build": result, "published": published }));
            } else {
                for o in &result.outputs {
                    println!("{}  {}  {}", o.digest, o.size, o.path.display());
                }
                println!("build key {}", result.build_key);
                if let Some(p) = published {
                    println!("pushed {} ({})", p.reference, p.digest);
                }
            }
            Ok(0)
        }
        Command::Resolve {
            file,
            format,
            json,
            src,
        } => {
            let input = input::load(&file)?;
            let formats = formats_or_default(&format, &input);
            let sources = src.sources()?;
            let (map, statuses) = build::resolve_all(&sources, &input.config, false).await?;
            let complete = statuses.iter().all(|s| s.digest.is_some());
            let key = if complete {
                Some(build::build_key_hardened(
                    &input.config,
                    &map,
                    &formats,
                    &src.arch,
                    Mtime::from_env()?,
                    build::DEFAULT_LEVEL,
                    &input.base_dir(),
                    &input.hardening(),
                )?)
            } else {
                None
            };
            let report = ResolveReport {
                plan: plan_lines(&input.config, &statuses),
                references: statuses,
                build_key: key.map(hex::encode),
                artifact_tag: key.as_ref().map(build::artifact_tag),
            };
            if json {
                print_json(&report);
            } else {
                for r in &report.references {
                    match (&r.digest, &r.unresolved) {
                        (Some(d), _) => println!("{:28} {} {}", r.location, r.reference, d),
                        (None, Some(why)) => {
                            println!("{:28} {} UNRESOLVED: {why}", r.location, r.reference)
                        }
                        _ => {}
                    }
                }
                for p in &report.plan {
                    println!(
                        "plan {:16} {}{}",
                        p.location,
                        p.path,
                        if p.resolved { "" } else { "  (unresolved)" }
                    );
                }
                match &report.build_key {
                    Some(k) => println!("build key {k}"),
                    None => println!("build key: not computable, some references are unresolved"),
                }
            }
            Ok(if complete { 0 } else { 3 })
        }
        Command::Convert {
            file,
            name,
            repository,
            format,
        } => {
            let input = input::load(&file)?;
            match input.node_image {
                Some(_) => print!("{}", input.config.to_yaml()),
                None => {
                    let ni = NodeImage::from_linuxkit(
                        &name.unwrap_or(input.name),
                        input.config,
                        format,
                        OutputSpec {
                            repository,
                            push_secret_name: None,
                        },
                    );
                    print!("{}", ni.to_yaml());
                }
            }
            Ok(0)
        }
        Command::Pull {
            reference,
            out,
            src,
        } => {
            let sources = src.sources()?;
            let pulled = crate::push::pull(&sources, &reference, &out).await?;
            print_json(&pulled);
            Ok(0)
        }
    }
}

/// Runs the CLI and returns the process exit code (see README "Exit codes").
pub fn main() -> i32 {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kitfleet-build: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kitfleet-build: error: {e}");
            e.exit_code()
        }
    }
}
