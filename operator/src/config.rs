//! The operator's configuration: command-line flags over environment variables over defaults, resolved by the pure
//! [`Config::parse`] (the process environment is passed in, so every rule is tested without touching it).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kitfleet_api::constants::SYSTEM_NAMESPACE;

/// A flag or variable with a bad value: names both and says why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    /// `--flag` (or `VARIABLE` when the value came from the environment).
    pub field: String,
    pub reason: String,
}

/// `kitfleet-operator run` flags. Each falls back to the environment variable named in its help, then to a default.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "kitfleet-operator run", about = "Run the Kitfleet operator")]
pub struct RunArgs {
    /// Image of the build Jobs (runs `kitfleet-build`). Env: KITFLEET_BUILDER_IMAGE. Required.
    #[arg(long)]
    pub builder_image: Option<String>,
    /// Namespace of build Jobs, push secrets and the leader Lease. Env: KITFLEET_NAMESPACE. Default: kitfleet-system.
    #[arg(long)]
    pub namespace: Option<String>,
    /// PersistentVolumeClaim (in the namespace) used as the build cache; unset: an emptyDir. Env: KITFLEET_CACHE_PVC.
    #[arg(long)]
    pub cache_pvc: Option<String>,
    /// Registries (HOST:PORT) reached over plain HTTP, comma-separated or repeated. Env: KITFLEET_INSECURE_REGISTRIES.
    #[arg(long = "insecure-registry", value_delimiter = ',')]
    pub insecure_registries: Vec<String>,
    /// Target architecture of the builds. Env: KITFLEET_ARCH. Default: amd64.
    #[arg(long)]
    pub arch: Option<String>,
    /// Address of /healthz, /readyz and /metrics. Env: KITFLEET_LISTEN. Default: 0.0.0.0:8080.
    #[arg(long)]
    pub listen: Option<String>,
    /// Docker config file the operator uses for its own registry reads. Env: KITFLEET_DOCKER_CONFIG.
    #[arg(long)]
    pub docker_config: Option<String>,
    /// Cache directory for resolved manifests. Env: KITFLEET_CACHE_DIR. Default: $TMPDIR/kitfleet-operator.
    #[arg(long)]
    pub cache_dir: Option<String>,
    /// Disable leader election (one replica only!). Env: KITFLEET_LEADER_ELECTION=false.
    #[arg(long)]
    pub no_leader_election: bool,
    /// Name of the leader Lease. Env: KITFLEET_LEASE_NAME. Default: kitfleet-operator.
    #[arg(long)]
    pub lease_name: Option<String>,
    /// Identity in the Lease. Env: POD_NAME, then HOSTNAME.
    #[arg(long)]
    pub identity: Option<String>,
    /// CPU request of a build Job. Env: KITFLEET_BUILD_CPU. Default: 500m.
    #[arg(long)]
    pub build_cpu: Option<String>,
    /// Memory request (and limit) of a build Job. Env: KITFLEET_BUILD_MEMORY. Default: 1Gi.
    #[arg(long)]
    pub build_memory: Option<String>,
    /// Deadline of one build Job, seconds. Env: KITFLEET_BUILD_TIMEOUT. Default: 3600.
    #[arg(long)]
    pub build_timeout: Option<String>,
    /// First retry delay after a failed build, seconds (doubles per attempt). Env: KITFLEET_RETRY_BASE. Default: 30.
    #[arg(long)]
    pub retry_base: Option<String>,
    /// Longest retry delay, seconds. Env: KITFLEET_RETRY_MAX. Default: 900.
    #[arg(long)]
    pub retry_max: Option<String>,
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub builder_image: String,
    pub namespace: String,
    pub cache_pvc: Option<String>,
    pub insecure_registries: Vec<String>,
    pub arch: String,
    pub listen: SocketAddr,
    pub docker_config: Option<String>,
    pub cache_dir: String,
    pub leader_election: bool,
    pub lease_name: String,
    pub identity: String,
    pub build: BuildSettings,
}

/// What every build Job gets.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildSettings {
    pub cpu: Quantity,
    pub memory: Quantity,
    pub timeout: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl Default for BuildSettings {
    fn default() -> Self {
        BuildSettings {
            cpu: Quantity("500m".into()),
            memory: Quantity("1Gi".into()),
            timeout: Duration::from_secs(3600),
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(900),
        }
    }
}

/// One setting's raw value and where it came from (for error messages).
struct Raw {
    field: String,
    value: String,
}

fn pick(
    flag: Option<&String>,
    flag_name: &str,
    var: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Raw> {
    match flag {
        Some(v) => Some(Raw {
            field: format!("--{flag_name}"),
            value: v.clone(),
        }),
        None => env(var).filter(|v| !v.is_empty()).map(|value| Raw {
            field: var.to_string(),
            value,
        }),
    }
}

fn err(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// A DNS-1123 label (namespace, PVC and Lease names).
fn dns_label(r: &Raw) -> Result<String, ConfigError> {
    let v = &r.value;
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(v.clone())
    } else {
        Err(err(
            &r.field,
            format!("{v:?} is not a DNS label ([a-z0-9-], at most 63)"),
        ))
    }
}

/// `HOST:PORT` with a non-empty host and a numeric port.
fn host_port(field: &str, v: &str) -> Result<String, ConfigError> {
    let bad = || err(field, format!("{v:?} must be HOST:PORT"));
    let (host, port) = v.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains('/') || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(v.to_string())
}

fn seconds(r: Option<Raw>, default: Duration) -> Result<Duration, ConfigError> {
    match r {
        None => Ok(default),
        Some(r) => match r.value.parse::<u64>() {
            Ok(s) if s > 0 => Ok(Duration::from_secs(s)),
            _ => Err(err(
                &r.field,
                format!("{:?} must be a positive number of seconds", r.value),
            )),
        },
    }
}

/// A resource quantity such as `500m`, `2`, `1Gi`.
fn quantity(r: Option<Raw>, default: &Quantity) -> Result<Quantity, ConfigError> {
    let Some(r) = r else {
        return Ok(default.clone());
    };
    let v = r.value.as_str();
    let num_end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, suffix) = v.split_at(num_end);
    const SUFFIXES: [&str; 14] = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    if num.is_empty() || num.parse::<f64>().is_err() || !SUFFIXES.contains(&suffix) {
        return Err(err(
            &r.field,
            format!("{v:?} is not a resource quantity (e.g. 500m, 2, 1Gi)"),
        ));
    }
    Ok(Quantity(v.to_string()))
}

impl Config {
    /// Resolves the flags of `kitfleet-operator run` against `env` (a lookup of environment variables).
    pub fn parse(
        args: &RunArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let builder_image = pick(
            args.builder_image.as_ref(),
            "builder-image",
            "KITFLEET_BUILDER_IMAGE",
            env,
        )
        .ok_or_else(|| {
            err(
                "--builder-image",
                "required (or set KITFLEET_BUILDER_IMAGE)",
            )
        })?;
        if builder_image.value.trim() != builder_image.value
            || builder_image.value.contains(char::is_whitespace)
        {
            return Err(err(
                &builder_image.field,
                "must be an image reference without whitespace",
            ));
        }
        let namespace = match pick(
            args.namespace.as_ref(),
            "namespace",
            "KITFLEET_NAMESPACE",
            env,
        ) {
            Some(r) => dns_label(&r)?,
            None => SYSTEM_NAMESPACE.to_string(),
        };
        let cache_pvc = pick(
            args.cache_pvc.as_ref(),
            "cache-pvc",
            "KITFLEET_CACHE_PVC",
            env,
        )
        .map(|r| dns_label(&r))
        .transpose()?;
        let insecure_registries = if args.insecure_registries.is_empty() {
            let list = env("KITFLEET_INSECURE_REGISTRIES").unwrap_or_default();
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| host_port("KITFLEET_INSECURE_REGISTRIES", s))
                .collect::<Result<_, _>>()?
        } else {
            args.insecure_registries
                .iter()
                .map(|s| host_port("--insecure-registry", s.trim()))
                .collect::<Result<_, _>>()?
        };
        let arch = pick(args.arch.as_ref(), "arch", "KITFLEET_ARCH", env)
            .map_or_else(|| "amd64".to_string(), |r| r.value);
        let listen = match pick(args.listen.as_ref(), "listen", "KITFLEET_LISTEN", env) {
            None => SocketAddr::from(([0, 0, 0, 0], 8080)),
            Some(r) => r
                .value
                .parse()
                .map_err(|_| err(&r.field, format!("{:?} must be IP:PORT", r.value)))?,
        };
        let leader_election = if args.no_leader_election {
            false
        } else {
            match env("KITFLEET_LEADER_ELECTION").as_deref() {
                None | Some("") | Some("true") => true,
                Some("false") => false,
                Some(v) => {
                    return Err(err(
                        "KITFLEET_LEADER_ELECTION",
                        format!("{v:?} must be true or false"),
                    ));
                }
            }
        };
        let lease_name = match pick(
            args.lease_name.as_ref(),
            "lease-name",
            "KITFLEET_LEASE_NAME",
            env,
        ) {
            Some(r) => dns_label(&r)?,
            None => "kitfleet-operator".to_string(),
        };
        let identity = args
            .identity
            .clone()
            .or_else(|| env("POD_NAME").filter(|v| !v.is_empty()))
            .or_else(|| env("HOSTNAME").filter(|v| !v.is_empty()))
            .ok_or_else(|| {
                err(
                    "--identity",
                    "unset, and neither POD_NAME nor HOSTNAME is set",
                )
            })?;
        let defaults = BuildSettings::default();
        let build = BuildSettings {
            cpu: quantity(
                pick(
                    args.build_cpu.as_ref(),
                    "build-cpu",
                    "KITFLEET_BUILD_CPU",
                    env,
                ),
                &defaults.cpu,
            )?,
            memory: quantity(
                pick(
                    args.build_memory.as_ref(),
                    "build-memory",
                    "KITFLEET_BUILD_MEMORY",
                    env,
                ),
                &defaults.memory,
            )?,
            timeout: seconds(
                pick(
                    args.build_timeout.as_ref(),
                    "build-timeout",
                    "KITFLEET_BUILD_TIMEOUT",
                    env,
                ),
                defaults.timeout,
            )?,
            retry_base: seconds(
                pick(
                    args.retry_base.as_ref(),
                    "retry-base",
                    "KITFLEET_RETRY_BASE",
                    env,
                ),
                defaults.retry_base,
            )?,
            retry_max: seconds(
                pick(
                    args.retry_max.as_ref(),
                    "retry-max",
                    "KITFLEET_RETRY_MAX",
                    env,
                ),
                defaults.retry_max,
            )?,
        };
        if build.retry_max < build.retry_base {
            return Err(err("--retry-max", "must not be shorter than --retry-base"));
        }
        let cache_dir = pick(
            args.cache_dir.as_ref(),
            "cache-dir",
            "KITFLEET_CACHE_DIR",
            env,
        )
        .map_or_else(
            || {
                let tmp = env("TMPDIR")
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| "/tmp".into());
                format!("{}/kitfleet-operator", tmp.trim_end_matches('/'))
            },
            |r| r.value,
        );
        let docker_config = pick(
            args.docker_config.as_ref(),
            "docker-config",
            "KITFLEET_DOCKER_CONFIG",
            env,
        )
        .map(|r| r.value);
        Ok(Config {
            builder_image: builder_image.value,
            namespace,
            cache_pvc,
            insecure_registries,
            arch,
            listen,
            docker_config,
            cache_dir,
            leader_election,
            lease_name,
            identity,
            build,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn parse(argv: &[&str], vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let args = RunArgs::try_parse_from(std::iter::once("run").chain(argv.iter().copied()))
            .expect("flags parse");
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(&args, &|k| vars.get(k).cloned())
    }

    const BASE: &[(&str, &str)] = &[
        ("KITFLEET_BUILDER_IMAGE", "reg/kitfleet-build:1"),
        ("HOSTNAME", "op-0"),
    ];

    #[test]
    fn defaults() {
        let c = parse(&[], BASE).unwrap();
        assert_eq!(c.builder_image, "reg/kitfleet-build:1");
        assert_eq!(c.namespace, "kitfleet-system");
        assert_eq!(c.cache_pvc, None);
        assert!(c.insecure_registries.is_empty());
        assert_eq!(c.arch, "amd64");
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert!(c.leader_election);
        assert_eq!(c.lease_name, "kitfleet-operator");
        assert_eq!(c.identity, "op-0");
        assert_eq!(c.cache_dir, "/tmp/kitfleet-operator");
        assert_eq!(c.build, BuildSettings::default());
    }

    #[test]
    fn flags_override_env_and_env_overrides_defaults() {
        let env = [
            ("KITFLEET_BUILDER_IMAGE", "env/image:1"),
            ("KITFLEET_NAMESPACE", "from-env"),
            ("KITFLEET_CACHE_PVC", "cache"),
            (
                "KITFLEET_INSECURE_REGISTRIES",
                "127.0.0.1:5000, reg.local:80",
            ),
            ("POD_NAME", "pod-a"),
            ("HOSTNAME", "host-a"),
            ("KITFLEET_BUILD_MEMORY", "2Gi"),
        ];
        let c = parse(&[], &env).unwrap();
        assert_eq!(
            (c.builder_image.as_str(), c.namespace.as_str()),
            ("env/image:1", "from-env")
        );
        assert_eq!(c.cache_pvc.as_deref(), Some("cache"));
        assert_eq!(
            c.insecure_registries,
            vec!["127.0.0.1:5000", "reg.local:80"]
        );
        assert_eq!(c.identity, "pod-a");
        assert_eq!(c.build.memory, Quantity("2Gi".into()));
        let c = parse(
            &[
                "--builder-image",
                "flag/image:2",
                "--namespace",
                "flagns",
                "--insecure-registry",
                "10.0.0.1:5000",
                "--no-leader-election",
                "--identity",
                "me",
                "--build-timeout",
                "60",
            ],
            &env,
        )
        .unwrap();
        assert_eq!(
            (c.builder_image.as_str(), c.namespace.as_str()),
            ("flag/image:2", "flagns")
        );
        assert_eq!(c.insecure_registries, vec!["10.0.0.1:5000"]);
        assert!(!c.leader_election);
        assert_eq!(c.identity, "me");
        assert_eq!(c.build.timeout, Duration::from_secs(60));
    }

    #[test]
    fn bad_values_name_their_source() {
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (&[], &[("HOSTNAME", "h")], "--builder-image: required"),
            (
                &["--namespace", "Bad_NS"],
                BASE,
                "--namespace: \"Bad_NS\" is not a DNS label",
            ),
            (
                &[],
                &[
                    ("KITFLEET_BUILDER_IMAGE", "i"),
                    ("HOSTNAME", "h"),
                    ("KITFLEET_NAMESPACE", "-x"),
                ],
                "KITFLEET_NAMESPACE: \"-x\" is not a DNS label",
            ),
            (
                &["--cache-pvc", "a/b"],
                BASE,
                "--cache-pvc: \"a/b\" is not a DNS label",
            ),
            (
                &["--insecure-registry", "127.0.0.1"],
                BASE,
                "--insecure-registry: \"127.0.0.1\" must be HOST:PORT",
            ),
            (
                &[],
                &[
                    ("KITFLEET_BUILDER_IMAGE", "i"),
                    ("HOSTNAME", "h"),
                    ("KITFLEET_INSECURE_REGISTRIES", "h:x"),
                ],
                "KITFLEET_INSECURE_REGISTRIES: \"h:x\" must be HOST:PORT",
            ),
            (
                &["--listen", "8080"],
                BASE,
                "--listen: \"8080\" must be IP:PORT",
            ),
            (
                &["--build-timeout", "0"],
                BASE,
                "--build-timeout: \"0\" must be a positive number of seconds",
            ),
            (
                &["--build-cpu", "lots"],
                BASE,
                "--build-cpu: \"lots\" is not a resource quantity",
            ),
            (
                &["--build-memory", "1GB"],
                BASE,
                "--build-memory: \"1GB\" is not a resource quantity",
            ),
            (
                &["--retry-base", "60", "--retry-max", "30"],
                BASE,
                "--retry-max: must not be shorter",
            ),
            (&[], &[("KITFLEET_BUILDER_IMAGE", "i")], "--identity: unset"),
            (
                &[],
                &[
                    ("KITFLEET_BUILDER_IMAGE", "i"),
                    ("HOSTNAME", "h"),
                    ("KITFLEET_LEADER_ELECTION", "maybe"),
                ],
                "KITFLEET_LEADER_ELECTION: \"maybe\"",
            ),
            (
                &["--builder-image", "a b"],
                BASE,
                "--builder-image: must be an image reference",
            ),
        ];
        for (argv, env, want) in cases {
            let e = parse(argv, env).expect_err(want).to_string();
            assert!(
                e.starts_with(want),
                "{argv:?} {env:?}: got {e:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn leader_election_can_be_disabled_from_env() {
        let mut env = BASE.to_vec();
        env.push(("KITFLEET_LEADER_ELECTION", "false"));
        assert!(!parse(&[], &env).unwrap().leader_election);
    }
}
