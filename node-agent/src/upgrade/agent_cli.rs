//! `kitfleet-node-agent upgrade-agent`: the upgrade DaemonSet's command (flags, then [`super::agent_run::run`]).

use std::path::PathBuf;
use std::time::Duration;

use super::agent::{Agent, AgentConfig, BOOT_ID};
use super::efivars::DEFAULT_EFIVARS;
use super::kind::{KindConfig, KindNode, NodeMountNs};
use super::node_exec::{FirmwareNode, FirmwareNodeConfig};
use super::{agent_run, booted};

/// Which executor moves the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorKind {
    /// Real nodes: ESP + Boot#### + BootNext and reboot, or kexec.
    Firmware,
    /// kind nodes: a simulated reboot (restart of the node's pods, containerd and kubelet).
    Kind,
}

/// Flags of `upgrade-agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// This node's name (the Node object).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    #[arg(
        long,
        value_enum,
        env = "KITFLEET_UPGRADE_EXECUTOR",
        default_value = "firmware"
    )]
    pub executor: ExecutorKind,
    /// State directory (a hostPath: survives the pod).
    #[arg(long, default_value = "/var/lib/kitfleet/upgrade")]
    pub state_dir: PathBuf,
    /// The executor's own pod UID (kind: its containers survive the simulated reboot).
    #[arg(long, env = "POD_UID", default_value = "")]
    pub pod_uid: String,
    #[arg(long, default_value = BOOT_ID)]
    pub boot_id: PathBuf,
    /// The `kitfleet-build` program (pulls and verifies artifacts).
    #[arg(long, env = "KITFLEET_BUILD", default_value = "kitfleet-build")]
    pub builder: PathBuf,
    /// Registries (`host:port`) reached over plain HTTP.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure: Vec<String>,
    /// Firmware: the mounted ESP.
    #[arg(long, default_value = "/boot/efi")]
    pub esp: PathBuf,
    /// Firmware: efivarfs.
    #[arg(long, default_value = DEFAULT_EFIVARS)]
    pub efivars: PathBuf,
    /// Firmware: the disk holding the ESP (default: found from the ESP's mount).
    #[arg(long, requires = "esp_partition")]
    pub esp_disk: Option<PathBuf>,
    #[arg(long)]
    pub esp_partition: Option<u32>,
    #[arg(long, default_value = booted::PROC_CMDLINE)]
    pub proc_cmdline: PathBuf,
}

/// Runs the agent until `shutdown`.
pub async fn run(
    a: AgentArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the apiserver")?;
    let cfg = AgentConfig {
        state_dir: a.state_dir.clone(),
        boot_id: a.boot_id.clone(),
    };
    tracing::info!(node = %a.node_name, executor = ?a.executor, "upgrade agent starting");
    match a.executor {
        ExecutorKind::Kind => {
            if a.pod_uid.is_empty() {
                anyhow::bail!(
                    "--pod-uid (POD_UID): the kind executor must know its own pod to keep it"
                );
            }
            let exec = KindNode::new(
                KindConfig {
                    state_dir: a.state_dir.join("kind"),
                    pod_uid: a.pod_uid.clone(),
                    builder: a.builder.clone(),
                    insecure: a.insecure.clone(),
                    unit_timeout: Duration::from_secs(180),
                },
                NodeMountNs::default(),
            );
            let agent = Agent::load(cfg, exec)?;
            agent_run::run(client, &a.node_name, agent, shutdown).await?;
        }
        ExecutorKind::Firmware => {
            let exec = FirmwareNode::new(FirmwareNodeConfig {
                esp: a.esp.clone(),
                efivars: a.efivars.clone(),
                esp_disk: a.esp_disk.clone().zip(a.esp_partition),
                proc_cmdline: a.proc_cmdline.clone(),
                work: a.state_dir.join("work"),
                builder: a.builder.clone(),
                insecure: a.insecure.clone(),
            });
            let agent = Agent::load(cfg, exec)?;
            agent_run::run(client, &a.node_name, agent, shutdown).await?;
        }
    }
    Ok(())
}
