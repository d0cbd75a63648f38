//! The upgrade agent: reacts to the build key the operator asks this node to run (Node annotations
//! `operator.kitfleet.dev/desired-build-key`, `…/desired-artifact`, `…/upgrade-method`, `…/rollout-state`) and
//! reports under its own keys (`agent.kitfleet.dev/staged-build-key`, `…/booted-build-key`, `…/upgrade-failure`).
//!
//! It stages whenever the desired key is neither booted nor staged, switches (reboot, kexec, the kind simulation)
//! only while the operator's rollout state is `Rebooting` (after the drain), commits after a boot of the desired
//! key, and reports a terminal failure as `<key> <RFC 3339> <message>`. Its memory is a small JSON file under a
//! hostPath ([`AgentState`]), so a restarted agent neither stages nor switches twice, and it recognises a switch
//! that came back on the old image (the boot id changed but not the booted key) as a failed boot.
//!
//! [`decide`] is pure; [`Agent::step`] runs one decision against a [`NodeExecutor`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kitfleet_api::constants::{
    ANNOTATION_BOOTED_BUILD_KEY, ANNOTATION_DESIRED_ARTIFACT, ANNOTATION_DESIRED_BUILD_KEY,
    ANNOTATION_ROLLOUT_SINCE, ANNOTATION_ROLLOUT_STATE, ANNOTATION_STAGED_BUILD_KEY,
    ANNOTATION_UPGRADE_FAILURE, ANNOTATION_UPGRADE_METHOD,
};
use serde::{Deserialize, Serialize};

use super::node_exec::{ExecError, NodeExecutor, SwitchMethod};

/// Server-side-apply field manager of the upgrade agent (the mesh has its own: each owns its keys).
pub const FIELD_MANAGER: &str = "kitfleet-node-upgrade";
/// Where the kernel reports the id of the current boot (changes on every boot and kexec).
pub const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// The rollout state in which the operator wants the node to switch.
pub const STATE_REBOOTING: &str = "Rebooting";

/// Errors of the agent itself (the executor's are [`ExecError`]).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an agent state file: {source}")]
    BadState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// A failure the agent reported for a build key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub key: String,
    /// RFC 3339.
    pub at: String,
    pub message: String,
}

impl Failure {
    /// The Node annotation's value: `<key> <RFC 3339> <message>`.
    pub fn annotation(&self) -> String {
        format!("{} {} {}", self.key, self.at, self.message)
    }
}

/// A switch the agent started: the key and the boot id it was started from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub key: String,
    pub boot_id: String,
}

/// What the agent remembers across restarts (`agent.json` in its state directory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub staged: Option<String>,
    pub activating: Option<Activation>,
    pub committed: Option<String>,
    pub failure: Option<Failure>,
}

/// What the operator asks of this node, read from its annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ask {
    pub desired: Option<String>,
    pub artifact: Option<String>,
    pub method: Option<String>,
    pub state: Option<String>,
    pub since: Option<Timestamp>,
}

impl Ask {
    pub fn of(node: &Node) -> Self {
        let ann = node.metadata.annotations.as_ref();
        let get = |k: &str| ann.and_then(|a| a.get(k)).cloned();
        Ask {
            desired: get(ANNOTATION_DESIRED_BUILD_KEY),
            artifact: get(ANNOTATION_DESIRED_ARTIFACT),
            method: get(ANNOTATION_UPGRADE_METHOD),
            state: get(ANNOTATION_ROLLOUT_STATE),
            since: get(ANNOTATION_ROLLOUT_SINCE).and_then(|t| t.parse().ok()),
        }
    }
}

/// The agent's next move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do until the Node changes.
    Idle,
    /// The operator asks for a key but names no artifact yet (or a bad method): wait, saying why.
    Wait(String),
    Stage {
        key: String,
        artifact: String,
    },
    Activate {
        key: String,
        artifact: String,
        method: SwitchMethod,
    },
    Commit {
        key: String,
    },
    /// The switch to `key` came back on another image: a failed boot.
    BootFailed {
        key: String,
        message: String,
    },
}

/// A failure recorded for `key` still stands: the operator has not restarted the node's rollout since.
pub fn failure_stands(f: &Failure, ask: &Ask) -> bool {
    let at = f.at.parse::<Timestamp>().ok();
    ask.desired.as_deref() == Some(f.key.as_str())
        && match (ask.since, at) {
            (Some(since), Some(at)) => since <= at,
            _ => true,
        }
}

/// The next move, from the operator's ask, what the agent remembers, the booted key and the current boot id.
pub fn decide(ask: &Ask, st: &AgentState, booted: Option<&str>, boot_id: &str) -> Decision {
    let Some(key) = ask.desired.clone() else {
        return Decision::Idle;
    };
    if st.failure.as_ref().is_some_and(|f| failure_stands(f, ask)) {
        return Decision::Idle;
    }
    if booted == Some(key.as_str()) {
        if st.staged.as_deref() == Some(key.as_str())
            && st.committed.as_deref() != Some(key.as_str())
        {
            return Decision::Commit { key };
        }
        return Decision::Idle;
    }
    let Some(artifact) = ask.artifact.clone() else {
        return Decision::Wait(format!(
            "{ANNOTATION_DESIRED_BUILD_KEY} is {key} but {ANNOTATION_DESIRED_ARTIFACT} is not set"
        ));
    };
    if st.staged.as_deref() != Some(key.as_str()) {
        return Decision::Stage { key, artifact };
    }
    if ask.state.as_deref() != Some(STATE_REBOOTING) {
        return Decision::Idle;
    }
    if let Some(a) = &st.activating
        && a.key == key
        && a.boot_id != boot_id
    {
        let now = booted.unwrap_or("no build key");
        return Decision::BootFailed {
            message: format!(
                "switched to {key} but the node came back running {now} (boot {boot_id}, switched from boot {})",
                a.boot_id
            ),
            key,
        };
    }
    match SwitchMethod::parse(ask.method.as_deref()) {
        Ok(method) => Decision::Activate {
            key,
            artifact,
            method,
        },
        Err(e) => Decision::Wait(format!("{ANNOTATION_UPGRADE_METHOD}: {e}")),
    }
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Idle,
    Waiting(String),
    Staged(String),
    Activated(String),
    Committed(String),
    /// A terminal failure was recorded and is reported.
    Failed(String),
    /// A transient error: try again later.
    Retry(String),
}

/// Where the agent keeps its state.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    pub boot_id: PathBuf,
}

/// The agent: its state file, the executor, the current boot id.
#[derive(Debug)]
pub struct Agent<E> {
    cfg: AgentConfig,
    exec: E,
    state: AgentState,
    boot_id: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl<E: NodeExecutor> Agent<E> {
    /// Loads the state file (absent: a fresh node) and the boot id (absent: empty).
    pub fn load(cfg: AgentConfig, exec: E) -> Result<Self, AgentError> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(io(&cfg.state_dir))?;
        let path = cfg.state_dir.join("agent.json");
        let state = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| AgentError::BadState {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AgentState::default(),
            Err(e) => return Err(io(&path)(e)),
        };
        let boot_id = std::fs::read_to_string(&cfg.boot_id)
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Ok(Agent {
            cfg,
            exec,
            state,
            boot_id,
        })
    }

    pub fn state(&self) -> &AgentState {
        &self.state
    }

    pub fn executor(&self) -> &E {
        &self.exec
    }

    /// Writes the state file (temp file, fsync, rename).
    fn save(&self) -> Result<(), AgentError> {
        let path = self.cfg.state_dir.join("agent.json");
        let tmp = self.cfg.state_dir.join(".agent.json.tmp");
        let data = serde_json::to_vec_pretty(&self.state).expect("plain data serializes");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, &data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(io(&path))
    }

    /// The agent's annotations as they should be on the Node now (booted as the executor reports it).
    pub fn annotations(&mut self, node: &Node) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(k) = &self.state.staged {
            out.insert(ANNOTATION_STAGED_BUILD_KEY.to_string(), k.clone());
        }
        if let Some(k) = self.exec.booted(node) {
            out.insert(ANNOTATION_BOOTED_BUILD_KEY.to_string(), k);
        }
        if let Some(f) = &self.state.failure {
            out.insert(ANNOTATION_UPGRADE_FAILURE.to_string(), f.annotation());
        }
        out
    }

    /// One decision against `node`, carried out. `now` stamps a failure.
    pub fn step(&mut self, node: &Node, now: Timestamp) -> Result<Outcome, AgentError> {
        let ask = Ask::of(node);
        if let Some(f) = &self.state.failure
            && !failure_stands(f, &ask)
        {
            tracing::info!(key = %f.key, "the operator restarted the rollout (or changed the key): clearing the failure");
            if self.state.activating.as_ref().map(|a| &a.key) == Some(&f.key) {
                self.state.activating = None;
            }
            self.state.failure = None;
            self.save()?;
        }
        let booted = self.exec.booted(node);
        let d = decide(&ask, &self.state, booted.as_deref(), &self.boot_id);
        let r = match d {
            Decision::Idle => return Ok(Outcome::Idle),
            Decision::Wait(why) => return Ok(Outcome::Waiting(why)),
            Decision::BootFailed { key, message } => Err((key, ExecError::Terminal(message))),
            Decision::Stage { key, artifact } => {
                tracing::info!(%key, %artifact, "staging");
                match self.exec.stage(&key, &artifact) {
                    Ok(()) => {
                        self.state.staged = Some(key.clone());
                        self.save()?;
                        Ok(Outcome::Staged(key))
                    }
                    Err(e) => Err((key, e)),
                }
            }
            Decision::Activate {
                key,
                artifact,
                method,
            } => {
                tracing::info!(%key, ?method, "switching");
                self.state.activating = Some(Activation {
                    key: key.clone(),
                    boot_id: self.boot_id.clone(),
                });
                self.save()?;
                match self.exec.activate(&key, &artifact, method) {
                    Ok(()) => Ok(Outcome::Activated(key)),
                    Err(e) => Err((key, e)),
                }
            }
            Decision::Commit { key } => match self.exec.commit(&key) {
                Ok(()) => {
                    self.state.committed = Some(key.clone());
                    self.save()?;
                    Ok(Outcome::Committed(key))
                }
                Err(e) => Err((key, e)),
            },
        };
        match r {
            Ok(o) => Ok(o),
            Err((key, ExecError::Transient(m))) => {
                tracing::warn!(%key, error = %m, "transient; retrying");
                Ok(Outcome::Retry(m))
            }
            Err((key, ExecError::Terminal(message))) => {
                tracing::error!(%key, error = %message, "terminal failure; reporting it");
                self.state.failure = Some(Failure {
                    key,
                    at: now.to_string(),
                    message: message.clone(),
                });
                self.save()?;
                Ok(Outcome::Failed(message))
            }
        }
    }
}

/// The agent's keys as they are on `node` (to publish only when they differ).
pub fn published(node: &Node) -> BTreeMap<String, String> {
    node.metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| {
            [
                ANNOTATION_STAGED_BUILD_KEY,
                ANNOTATION_BOOTED_BUILD_KEY,
                ANNOTATION_UPGRADE_FAILURE,
            ]
            .contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
