//! The operator's configuration, in one place: clap reads every setting from its flag, else its environment
//! variable (`#[arg(long, env = "KITFLEET_…")]`), else its default; [`Config::from_matches`] then checks the values
//! and names the flag or the variable a bad value came from.

use std::net::SocketAddr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kitfleet_api::constants::SYSTEM_NAMESPACE;

/// A flag or variable with a bad value: names it and says why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    /// `--flag`, or `VARIABLE` when the value came from the environment.
    pub field: String,
    pub reason: String,
}

/// `kitfleet-operator run` flags; each falls back to the environment variable shown in `--help`, then to a default.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// Image of the build Jobs (runs `kitfleet-build`). Required.
    #[arg(long, env = "KITFLEET_BUILDER_IMAGE")]
    pub builder_image: Option<String>,
    /// Namespace of build Jobs, push secrets and the leader Lease.
    #[arg(long, env = "KITFLEET_NAMESPACE", default_value = SYSTEM_NAMESPACE)]
    pub namespace: String,
    /// PersistentVolumeClaim (in the namespace) used as the build cache; unset: an emptyDir.
    #[arg(long, env = "KITFLEET_CACHE_PVC")]
    pub cache_pvc: Option<String>,
    /// Registries (HOST:PORT) reached over plain HTTP, comma-separated or repeated.
    #[arg(
        long = "insecure-registry",
        env = "KITFLEET_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// Target architecture of the builds.
    #[arg(long, env = "KITFLEET_ARCH", default_value = "amd64")]
    pub arch: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "KITFLEET_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Docker config file the operator uses for its own registry reads (NodeImages without a push secret).
    #[arg(long, env = "KITFLEET_DOCKER_CONFIG")]
    pub docker_config: Option<String>,
    /// Cache directory for resolved manifests. Default: $TMPDIR/kitfleet-operator.
    #[arg(long, env = "KITFLEET_CACHE_DIR")]
    pub cache_dir: Option<String>,
    /// Leader election on a Lease (`false`: run one replica only!).
    #[arg(long, env = "KITFLEET_LEADER_ELECTION", default_value = "true", action = clap::ArgAction::Set)]
    pub leader_election: String,
    /// Disable leader election (same as `--leader-election false`).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "KITFLEET_LEASE_NAME", default_value = "kitfleet-operator")]
    pub lease_name: String,
    /// Seconds a Lease is valid without renewal.
    #[arg(long, env = "KITFLEET_LEASE_DURATION", default_value = "15")]
    pub lease_duration: String,
    /// Seconds the leader keeps trying to renew before it stops reconciling (less than the Lease duration).
    #[arg(long, env = "KITFLEET_LEASE_RENEW_DEADLINE", default_value = "10")]
    pub lease_renew_deadline: String,
    /// Seconds between renewals, and between a standby's attempts (less than the renew deadline).
    #[arg(long, env = "KITFLEET_LEASE_RETRY_PERIOD", default_value = "2")]
    pub lease_retry_period: String,
    /// This replica's identity in the Lease (unique per replica). Default: POD_NAME, then HOSTNAME.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// The identity's fallback.
    #[arg(long, env = "HOSTNAME", hide = true)]
    pub hostname: Option<String>,
    /// CPU request of a build Job.
    #[arg(long, env = "KITFLEET_BUILD_CPU", default_value = "500m")]
    pub build_cpu: String,
    /// Memory request (and limit) of a build Job.
    #[arg(long, env = "KITFLEET_BUILD_MEMORY", default_value = "1Gi")]
    pub build_memory: String,
    /// Deadline of one build Job, seconds.
    #[arg(long, env = "KITFLEET_BUILD_TIMEOUT", default_value = "3600")]
    pub build_timeout: String,
    /// First retry delay after a failed build, seconds (doubles per attempt).
    #[arg(long, env = "KITFLEET_RETRY_BASE", default_value = "30")]
    pub retry_base: String,
    /// Longest retry delay, seconds.
    #[arg(long, env = "KITFLEET_RETRY_MAX", default_value = "900")]
    pub retry_max: String,
    /// The cache directory's parent when --cache-dir is unset.
    #[arg(long, env = "TMPDIR", hide = true)]
    pub tmpdir: Option<String>,
    /// Serve the admission webhooks over HTTPS at IP:PORT (every replica); unset or empty: not served.
    #[arg(long, env = "KITFLEET_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<String>,
    /// The webhook Service's name (its DNS names go into the serving certificate).
    #[arg(
        long,
        env = "KITFLEET_WEBHOOK_SERVICE",
        default_value = "kitfleet-webhook"
    )]
    pub webhook_service: String,
    /// More names (DNS or IP) for the serving certificate, comma-separated or repeated.
    #[arg(
        long = "webhook-extra-name",
        env = "KITFLEET_WEBHOOK_EXTRA_NAMES",
        value_delimiter = ','
    )]
    pub webhook_extra_names: Vec<String>,
    /// Read image entrypoints from registries for containers without `command` (`false`: such pods are refused).
    #[arg(long, env = "KITFLEET_WEBHOOK_IMAGE_LOOKUP", default_value = "true", action = clap::ArgAction::Set)]
    pub webhook_image_lookup: String,
    /// Seconds between certificate, caBundle and namespace-label passes.
    #[arg(long, env = "KITFLEET_WEBHOOK_REFRESH", default_value = "60")]
    pub webhook_refresh: String,
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
    pub lease: LeaseSettings,
    pub identity: String,
    pub build: BuildSettings,
    /// The admission webhooks, when served.
    pub webhook: Option<WebhookConfig>,
}

/// The admission webhooks' configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    pub settings: crate::webhook::server::WebhookSettings,
    /// Whether image entrypoints are read from registries.
    pub image_lookup: bool,
}

/// Leader election timing (client-go's defaults scaled to a 15 s Lease).
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseSettings {
    pub name: String,
    /// How long a Lease is valid without renewal.
    pub duration: Duration,
    /// The leader stops reconciling when it has not renewed for this long (< `duration`).
    pub renew_deadline: Duration,
    /// Between renewals, and between a standby's attempts (< `renew_deadline`).
    pub retry_period: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            name: "kitfleet-operator".into(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
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

fn err(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// A DNS-1123 label (namespace, PVC and Lease names).
fn dns_label(field: &str, v: &str) -> Result<String, ConfigError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(v.to_string())
    } else {
        Err(err(
            field,
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

fn seconds(field: &str, v: &str) -> Result<Duration, ConfigError> {
    match v.parse::<u64>() {
        Ok(s) if s > 0 => Ok(Duration::from_secs(s)),
        _ => Err(err(
            field,
            format!("{v:?} must be a positive number of seconds"),
        )),
    }
}

/// A resource quantity such as `500m`, `2`, `1Gi`.
fn quantity(field: &str, v: &str) -> Result<Quantity, ConfigError> {
    let num_end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, suffix) = v.split_at(num_end);
    const SUFFIXES: [&str; 14] = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    if num.is_empty() || num.parse::<f64>().is_err() || !SUFFIXES.contains(&suffix) {
        return Err(err(
            field,
            format!("{v:?} is not a resource quantity (e.g. 500m, 2, 1Gi)"),
        ));
    }
    Ok(Quantity(v.to_string()))
}

/// Where a value came from, as error messages name it: `--flag` or `VARIABLE`.
struct Sources<'a> {
    m: &'a ArgMatches,
}

impl Sources<'_> {
    fn field(&self, id: &str) -> String {
        let arg = RunArgs::augment_args(clap::Command::new("run"))
            .get_arguments()
            .find(|a| a.get_id() == id)
            .map(|a| {
                let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
                (a.get_long().unwrap_or(id).to_string(), env)
            });
        match (arg, self.m.value_source(id)) {
            (Some((_, Some(env))), Some(ValueSource::EnvVariable)) => env,
            (Some((long, _)), _) => format!("--{long}"),
            (None, _) => id.to_string(),
        }
    }
}

/// An optional setting: unset or empty is `None`.
fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

impl Config {
    /// Checks the values clap gathered (flags over environment over defaults) for `kitfleet-operator run`.
    pub fn from_matches(m: &ArgMatches) -> Result<Config, ConfigError> {
        let a = RunArgs::from_arg_matches(m).map_err(|e| err("arguments", e.to_string()))?;
        let s = Sources { m };
        let f = |id: &str| s.field(id);
        let builder_image = non_empty(&a.builder_image)
            .ok_or_else(|| {
                err(
                    "--builder-image",
                    "required (or set KITFLEET_BUILDER_IMAGE)",
                )
            })?
            .to_string();
        if builder_image.contains(char::is_whitespace) {
            return Err(err(
                &f("builder_image"),
                "must be an image reference without whitespace",
            ));
        }
        let namespace = dns_label(&f("namespace"), &a.namespace)?;
        let cache_pvc = non_empty(&a.cache_pvc)
            .map(|v| dns_label(&f("cache_pvc"), v))
            .transpose()?;
        let insecure_registries = a
            .insecure_registries
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| host_port(&f("insecure_registries"), s))
            .collect::<Result<_, _>>()?;
        let listen = a
            .listen
            .parse()
            .map_err(|_| err(&f("listen"), format!("{:?} must be IP:PORT", a.listen)))?;
        let leader_election = !a.no_leader_election
            && match a.leader_election.as_str() {
                "" | "true" => true,
                "false" => false,
                v => {
                    return Err(err(
                        &f("leader_election"),
                        format!("{v:?} must be true or false"),
                    ));
                }
            };
        let lease = LeaseSettings {
            name: dns_label(&f("lease_name"), &a.lease_name)?,
            duration: seconds(&f("lease_duration"), &a.lease_duration)?,
            renew_deadline: seconds(&f("lease_renew_deadline"), &a.lease_renew_deadline)?,
            retry_period: seconds(&f("lease_retry_period"), &a.lease_retry_period)?,
        };
        if lease.renew_deadline >= lease.duration {
            return Err(err(
                &f("lease_renew_deadline"),
                "must be shorter than the Lease duration",
            ));
        }
        if lease.retry_period >= lease.renew_deadline {
            return Err(err(
                &f("lease_retry_period"),
                "must be shorter than the renew deadline",
            ));
        }
        let identity = non_empty(&a.identity)
            .or(non_empty(&a.hostname))
            .ok_or_else(|| {
                err(
                    "--identity",
                    "unset, and neither POD_NAME nor HOSTNAME is set",
                )
            })?
            .to_string();
        if identity.len() > 100 || identity.contains(char::is_whitespace) {
            return Err(err(
                &f("identity"),
                format!("{identity:?} must be at most 100 characters without whitespace"),
            ));
        }
        let build = BuildSettings {
            cpu: quantity(&f("build_cpu"), &a.build_cpu)?,
            memory: quantity(&f("build_memory"), &a.build_memory)?,
            timeout: seconds(&f("build_timeout"), &a.build_timeout)?,
            retry_base: seconds(&f("retry_base"), &a.retry_base)?,
            retry_max: seconds(&f("retry_max"), &a.retry_max)?,
        };
        if build.retry_max < build.retry_base {
            return Err(err(
                &f("retry_max"),
                "must not be shorter than --retry-base",
            ));
        }
        let cache_dir = match non_empty(&a.cache_dir) {
            Some(d) => d.to_string(),
            None => format!(
                "{}/kitfleet-operator",
                non_empty(&a.tmpdir).unwrap_or("/tmp").trim_end_matches('/')
            ),
        };
        let webhook = match non_empty(&a.webhook_listen) {
            None => None,
            Some(l) => {
                let listen = l
                    .parse()
                    .map_err(|_| err(&f("webhook_listen"), format!("{l:?} must be IP:PORT")))?;
                let service = dns_label(&f("webhook_service"), &a.webhook_service)?;
                let mut names = crate::webhook::certs::service_names(&service, &namespace);
                names.extend(
                    a.webhook_extra_names
                        .iter()
                        .map(|n| n.trim().to_string())
                        .filter(|n| !n.is_empty()),
                );
                let image_lookup = match a.webhook_image_lookup.as_str() {
                    "" | "true" => true,
                    "false" => false,
                    v => {
                        return Err(err(
                            &f("webhook_image_lookup"),
                            format!("{v:?} must be true or false"),
                        ));
                    }
                };
                Some(WebhookConfig {
                    settings: crate::webhook::server::WebhookSettings {
                        listen,
                        namespace: namespace.clone(),
                        names,
                        refresh: seconds(&f("webhook_refresh"), &a.webhook_refresh)?,
                    },
                    image_lookup,
                })
            }
        };
        Ok(Config {
            builder_image,
            namespace,
            cache_pvc,
            insecure_registries,
            arch: a.arch,
            listen,
            docker_config: non_empty(&a.docker_config).map(String::from),
            cache_dir,
            leader_election,
            lease,
            identity,
            build,
            webhook,
        })
    }

    /// Parses `kitfleet-operator run`'s arguments (without the program name) and the process environment.
    pub fn parse_from<I, T>(argv: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let m = RunArgs::augment_args(clap::Command::new("run"))
            .try_get_matches_from(
                std::iter::once("run".into()).chain(argv.into_iter().map(Into::into)),
            )
            .map_err(|e| err("arguments", e.to_string()))?;
        Config::from_matches(&m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The process environment of `cargo test` may set HOSTNAME, TMPDIR or KITFLEET_* variables: these tests pass
    // every setting they check as a flag. The environment layer is tested on the binary (`tests/cli.rs`).
    fn parse(argv: &[&str]) -> Result<Config, ConfigError> {
        let mut all = argv.to_vec();
        for (flag, value) in [
            ("--builder-image", "reg/kitfleet-build:1"),
            ("--identity", "op-0"),
        ] {
            if !argv.contains(&flag) {
                all.extend([flag, value]);
            }
        }
        Config::parse_from(all)
    }

    #[test]
    fn flags_and_defaults() {
        let c = parse(&[
            "--namespace",
            "flagns",
            "--insecure-registry",
            "10.0.0.1:5000,reg.local:80",
            "--insecure-registry",
            "b:1",
            "--no-leader-election",
            "--build-timeout",
            "60",
            "--cache-dir",
            "/var/c",
            "--listen",
            "127.0.0.1:9",
        ])
        .unwrap();
        assert_eq!(c.builder_image, "reg/kitfleet-build:1");
        assert_eq!(c.namespace, "flagns");
        assert_eq!(
            c.insecure_registries,
            vec!["10.0.0.1:5000", "reg.local:80", "b:1"]
        );
        assert!(!c.leader_election);
        assert_eq!(c.identity, "op-0");
        assert_eq!(c.build.timeout, Duration::from_secs(60));
        assert_eq!(c.cache_dir, "/var/c");
        assert_eq!(c.listen.to_string(), "127.0.0.1:9");
        let c = parse(&["--leader-election", "true", "--lease-name", "x"]).unwrap();
        assert!(c.leader_election);
        assert_eq!(c.lease.name, "x");
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--namespace", "Bad_NS"],
                "--namespace: \"Bad_NS\" is not a DNS label",
            ),
            (
                &["--cache-pvc", "a/b"],
                "--cache-pvc: \"a/b\" is not a DNS label",
            ),
            (
                &["--insecure-registry", "127.0.0.1"],
                "--insecure-registry: \"127.0.0.1\" must be HOST:PORT",
            ),
            (&["--listen", "8080"], "--listen: \"8080\" must be IP:PORT"),
            (
                &["--build-timeout", "0"],
                "--build-timeout: \"0\" must be a positive number of seconds",
            ),
            (
                &["--build-cpu", "lots"],
                "--build-cpu: \"lots\" is not a resource quantity",
            ),
            (
                &["--build-memory", "1GB"],
                "--build-memory: \"1GB\" is not a resource quantity",
            ),
            (
                &["--retry-base", "60", "--retry-max", "30"],
                "--retry-max: must not be shorter",
            ),
            (
                &["--leader-election", "maybe"],
                "--leader-election: \"maybe\" must be true or false",
            ),
            (
                &["--lease-duration", "10", "--lease-renew-deadline", "10"],
                "--lease-renew-deadline: must be shorter than the Lease duration",
            ),
            (
                &["--lease-retry-period", "10"],
                "--lease-retry-period: must be shorter than the renew deadline",
            ),
            (
                &["--builder-image", "a b"],
                "--builder-image: must be an image reference",
            ),
            (&["--identity", "a b"], "--identity: \"a b\" must be"),
        ];
        for (argv, want) in cases {
            let e = parse(argv).expect_err(want).to_string();
            assert!(e.starts_with(want), "{argv:?}: got {e:?}, want {want:?}");
        }
    }
}
