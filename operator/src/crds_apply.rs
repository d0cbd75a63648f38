//! `kitfleet-operator crds apply`: the CRD upgrade path. Helm installs a chart's `crds/` only on first install and
//! never updates them, so the chart runs this as a pre-install/pre-upgrade hook Job: it server-side-applies the CRDs
//! compiled into this binary ([`kitfleet_api::crds::definitions`], the same objects `crdgen` writes) with its own
//! field manager and `force` (taking over the fields Helm's first install created), then waits until each one is
//! `Established` and its names are accepted. Any failure is an error naming the CRD, so the hook (and with it
//! `helm install`/`helm upgrade`) fails instead of leaving a release whose objects the apiserver would prune.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

/// Field manager of the CRD hook (distinct from the operator's, so `managedFields` tell who wrote the CRDs).
pub const FIELD_MANAGER: &str = "kitfleet-crds";

/// Errors of the CRD hook.
#[derive(Debug, thiserror::Error)]
pub enum CrdsError {
    #[error("connecting to the apiserver: {0}")]
    Client(#[source] kube::Error),
    #[error("CRD {name}: server-side apply failed: {source}")]
    Apply {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("CRD {name}: reading it back failed: {source}")]
    Get {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("CRD {name}: not Established after {waited:?}: {reason}")]
    NotEstablished {
        name: String,
        waited: Duration,
        reason: String,
    },
}

/// Options of `crds apply`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    /// How long to wait for each CRD to become Established, in seconds.
    #[arg(long, default_value_t = 60, env = "KITFLEET_CRDS_TIMEOUT")]
    pub timeout_seconds: u64,
}

/// `kitfleet-operator crds …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CrdsCommand {
    /// Server-side apply the CRDs compiled into this binary (field manager `kitfleet-crds`, force) and wait until
    /// they are Established: the chart's pre-install/pre-upgrade hook.
    Apply(ApplyArgs),
}

/// Whether `crd` is ready for objects: `Ok` when `Established=True` and no `NamesAccepted=False`; otherwise why not
/// (the message of the failing condition, or that it has none yet).
pub fn readiness(crd: &CustomResourceDefinition) -> Result<(), String> {
    let conditions = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let find = |t: &str| conditions.iter().find(|c| c.type_ == t);
    if let Some(c) = find("NamesAccepted").filter(|c| c.status == "False") {
        let msg = c.message.clone().unwrap_or_default();
        return Err(format!("NamesAccepted=False: {msg}"));
    }
    match find("Established") {
        Some(c) if c.status == "True" => Ok(()),
        Some(c) => Err(format!(
            "Established={}: {}",
            c.status,
            c.message.clone().unwrap_or_default()
        )),
        None => Err("no Established condition yet".into()),
    }
}

/// Applies every CRD, then waits for each; returns their names.
pub async fn apply_all(client: &Client, timeout: Duration) -> Result<Vec<String>, CrdsError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for (_, mut crd) in kitfleet_api::crds::definitions() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        // An apply body carries no status (the generated definition has an empty one).
        crd.status = None;
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .map_err(|source| CrdsError::Apply {
                name: name.clone(),
                source,
            })?;
        tracing::info!(crd = %name, field_manager = FIELD_MANAGER, "applied");
        names.push(name);
    }
    for name in &names {
        wait_ready(&api, name, timeout).await?;
        tracing::info!(crd = %name, "Established");
    }
    Ok(names)
}

async fn wait_ready(
    api: &Api<CustomResourceDefinition>,
    name: &str,
    timeout: Duration,
) -> Result<(), CrdsError> {
    let start = std::time::Instant::now();
    loop {
        let crd = api.get(name).await.map_err(|source| CrdsError::Get {
            name: name.into(),
            source,
        })?;
        let reason = match readiness(&crd) {
            Ok(()) => return Ok(()),
            Err(r) => r,
        };
        if start.elapsed() >= timeout {
            return Err(CrdsError::NotEstablished {
                name: name.into(),
                waited: start.elapsed(),
                reason,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `crds …` from the parsed command line (the binary's `main` hands it over before reading the operator's
/// configuration, which this command does not need). Exit code 0 on success, 1 with the error on stderr otherwise.
pub fn main(cmd: CrdsCommand) -> std::process::ExitCode {
    let CrdsCommand::Apply(args) = cmd;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .try_init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kitfleet-operator crds apply: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let timeout = Duration::from_secs(args.timeout_seconds);
    let started = std::time::Instant::now();
    let result = rt.block_on(async {
        let client = Client::try_default().await.map_err(CrdsError::Client)?;
        apply_all(&client, timeout).await
    });
    match result {
        Ok(names) => {
            println!(
                "kitfleet-operator crds apply: {} Established in {} ms",
                names.join(", "),
                started.elapsed().as_millis()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kitfleet-operator crds apply: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceDefinitionCondition, CustomResourceDefinitionStatus,
    };

    type Conditions<'a> = &'a [(&'a str, &'a str, &'a str)];

    fn with(conditions: Conditions) -> CustomResourceDefinition {
        let status = Some(CustomResourceDefinitionStatus {
            conditions: Some(
                conditions
                    .iter()
                    .map(|(t, s, m)| CustomResourceDefinitionCondition {
                        type_: t.to_string(),
                        status: s.to_string(),
                        message: Some(m.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        CustomResourceDefinition {
            status,
            ..Default::default()
        }
    }

    #[test]
    fn readiness_table() {
        let cases: [(Conditions, Result<(), &str>); 5] = [
            (&[], Err("no Established condition yet")),
            (&[("Established", "True", "")], Ok(())),
            (
                &[("Established", "False", "not yet")],
                Err("Established=False: not yet"),
            ),
            (
                &[
                    ("NamesAccepted", "False", "\"ni\" is already in use"),
                    ("Established", "True", ""),
                ],
                Err("NamesAccepted=False: \"ni\" is already in use"),
            ),
            (
                &[("NamesAccepted", "True", ""), ("Established", "True", "")],
                Ok(()),
            ),
        ];
        for (conds, want) in cases {
            assert_eq!(
                readiness(&with(conds)),
                want.map_err(String::from),
                "{conds:?}"
            );
        }
        assert!(readiness(&CustomResourceDefinition::default()).is_err());
    }

    #[test]
    fn every_compiled_crd_has_a_name() {
        let names: Vec<_> = kitfleet_api::crds::definitions()
            .into_iter()
            .map(|(_, c)| c.metadata.name.unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            ["nodeimages.kitfleet.dev", "securitypolicies.kitfleet.dev"]
        );
    }
}
