//! The verbs. `run` takes the validated environment and stdin and returns what to print.
#![forbid(unsafe_code)]

mod add;
mod check;
mod del;
pub mod fault;

pub use del::{REAP_ENV, REAP_MARKER_ENV, reap};
mod status_gc;

use serde_json::Value;

use crate::cni::config::{self, NetConf};
use crate::cni::env::{Command, Env};
use crate::cni::{CniError, SpecVersion, code, version_result};
use crate::ipam::store::IpamError;
use crate::state::{NodeState, StateError};
use kitfleet_netlink::NetlinkError;

/// Runs one invocation. `Ok(Some(json))` is printed on stdout; `Ok(None)` prints nothing.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(version_result(config::peek_version(stdin))));
    }
    let conf = config::parse(stdin)?;
    let v = conf.cni_version;
    let allowed = match env.command {
        Command::Check => v.has_check(),
        Command::Status | Command::Gc => v.has_status_gc(),
        _ => true,
    };
    if !allowed {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {v} does not allow {:?} (CHECK needs 0.4.0, STATUS and GC need 1.1.0)",
                env.command
            ),
        ));
    }
    tracing::debug!(command = ?env.command, container = %env.container_id, ifname = %env.ifname, "invoked");
    match env.command {
        Command::Add => add::add(env, &conf).map(Some),
        Command::Del => del::del(env, &conf).map(|()| None),
        Command::Check => check::check(env, &conf).map(|()| None),
        Command::Status => status_gc::status(&conf).map(|()| None),
        Command::Gc => status_gc::gc(&conf).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

/// The version to answer errors in: the configuration's, else the newest.
pub fn error_version(stdin: &[u8]) -> SpecVersion {
    config::peek_version(stdin).unwrap_or(SpecVersion::LATEST)
}

/// Sets up logging to `logFile` (appending) or stderr — never stdout.
pub fn init_logging(stdin: &[u8]) {
    let file = config::parse(stdin)
        .ok()
        .and_then(|c| c.log_file)
        .and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
    let filter = std::env::var("KITFLEET_WG_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(tracing::Level::INFO);
    let b = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(filter)
        .with_target(false);
    let _ = match file {
        Some(f) => b.with_writer(std::sync::Mutex::new(f)).try_init(),
        None => b.with_writer(std::io::stderr).try_init(),
    };
}

fn kernel(e: NetlinkError) -> CniError {
    CniError::new(code::KERNEL, format!("{} {} failed", e.op(), e.target())).details(e.errno())
}

fn ipam(e: IpamError) -> CniError {
    let c = match e {
        IpamError::Exhausted { .. } => code::NO_ADDRESS,
        IpamError::Duplicate { .. } => code::INTERFACE_EXISTS,
        IpamError::Io { .. } => code::IO_FAILURE,
    };
    CniError::new(c, e.to_string())
}

/// Opens `CNI_NETNS`: code 3 when it cannot be opened, 4 when it is not a namespace file (a
/// FIFO is refused without being opened, so it cannot block the plugin).
fn open_netns(env: &Env) -> Result<std::fs::File, CniError> {
    crate::netns::open(env.netns.as_ref()).map_err(|e| match e {
        crate::netns::NetnsError::NotNamespace { .. } => {
            CniError::new(code::INVALID_ENV, format!("CNI_NETNS: {e}"))
        }
        crate::netns::NetnsError::Open { .. } => CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("CNI_NETNS {:?} cannot be opened", env.netns),
        )
        .details(e),
    })
}

/// The pod CIDR for `conf` (the `podCIDR` override or the state file's), bounded by the state
/// file's `clusterCIDRs`: `Ok(None)` when the node has none yet, code 7 for an override outside.
fn pod_cidr(conf: &NetConf, state: &NodeState) -> Result<Option<ipnet::Ipv4Net>, CniError> {
    state
        .pod_cidr_with(conf.pod_cidr)
        .map_err(|m| CniError::new(code::INVALID_CONFIG, m))
}

/// Loads the node state for `conf`; `code` is the CNI error code used when it is unusable.
fn load_state(conf: &NetConf, code: u32) -> Result<NodeState, CniError> {
    NodeState::load(&conf.state_file).map_err(|e| {
        let msg = match &e {
            StateError::Missing { .. } => "node state file missing",
            _ => "node state file unusable",
        };
        CniError::new(code, format!("stateFile: {msg}")).details(e)
    })
}
