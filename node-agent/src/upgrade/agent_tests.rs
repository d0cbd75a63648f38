//! The agent against a recording fake executor: the state machine the operator's planner expects (stage on a new
//! desired key, switch only in `Rebooting`, commit after the boot), restarts between any two steps, failures.

use super::*;
use serde_json::json;

const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const K2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const ART: &str = "reg:5000/n@sha256:aaaa";

/// Records calls; `booted` is what the node runs; failures are injected per call kind.
#[derive(Debug, Default)]
struct Fake {
    calls: Vec<String>,
    booted: Option<String>,
    /// Makes `activate` "reboot" into its key (the kind simulation's outcome, or a good real reboot).
    boots: bool,
    stage_err: Option<ExecError>,
    activate_err: Option<ExecError>,
}

impl NodeExecutor for Fake {
    fn stage(&mut self, key: &str, artifact: &str) -> Result<(), ExecError> {
        self.calls.push(format!("stage {key} {artifact}"));
        self.stage_err.clone().map_or(Ok(()), Err)
    }
    fn activate(&mut self, key: &str, _a: &str, m: SwitchMethod) -> Result<(), ExecError> {
        self.calls.push(format!("activate {key} {m:?}"));
        if let Some(e) = self.activate_err.clone() {
            return Err(e);
        }
        if self.boots {
            self.booted = Some(key.into());
        }
        Ok(())
    }
    fn booted(&mut self, _n: &Node) -> Option<String> {
        self.booted.clone()
    }
    fn commit(&mut self, key: &str) -> Result<(), ExecError> {
        self.calls.push(format!("commit {key}"));
        Ok(())
    }
}

fn node(desired: Option<&str>, state: Option<&str>, since: &str) -> Node {
    let mut ann = serde_json::Map::new();
    if let Some(d) = desired {
        ann.insert(ANNOTATION_DESIRED_BUILD_KEY.into(), json!(d));
        ann.insert(ANNOTATION_DESIRED_ARTIFACT.into(), json!(ART));
    }
    if let Some(s) = state {
        ann.insert(ANNOTATION_ROLLOUT_STATE.into(), json!(s));
    }
    ann.insert(ANNOTATION_ROLLOUT_SINCE.into(), json!(since));
    serde_json::from_value(json!({"metadata": {"name": "n1", "annotations": ann}})).unwrap()
}

fn cfg(dir: &Path, boot_id: &str) -> AgentConfig {
    let b = dir.join("boot_id");
    std::fs::write(&b, format!("{boot_id}\n")).unwrap();
    AgentConfig {
        state_dir: dir.join("state"),
        boot_id: b,
    }
}

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

const T0: &str = "2026-11-29T10:00:00Z";
const T1: &str = "2026-11-29T10:01:00Z";
const T2: &str = "2026-11-29T10:02:00Z";

#[test]
fn stages_then_switches_only_when_rebooting_then_commits() {
    let d = tempfile::tempdir().unwrap();
    let fake = Fake {
        boots: true,
        ..Fake::default()
    };
    let mut a = Agent::load(cfg(d.path(), "boot-a"), fake).unwrap();
    // No desired key: nothing, nothing published.
    let n = node(None, None, T0);
    assert_eq!(a.step(&n, t(T1)).unwrap(), Outcome::Idle);
    assert!(a.annotations(&n).is_empty());
    // Staging: the agent stages and reports the staged key.
    let n = node(Some(K1), Some("Staging"), T0);
    assert_eq!(a.step(&n, t(T1)).unwrap(), Outcome::Staged(K1.into()));
    assert_eq!(
        a.annotations(&n),
        BTreeMap::from([(ANNOTATION_STAGED_BUILD_KEY.into(), K1.into())])
    );
    // Staged and Draining: no second stage, no switch.
    for s in ["Staging", "Staged", "Draining"] {
        assert_eq!(
            a.step(&node(Some(K1), Some(s), T0), t(T1)).unwrap(),
            Outcome::Idle,
            "{s}"
        );
    }
    assert_eq!(a.executor().calls, [format!("stage {K1} {ART}")]);
    // Rebooting: the switch; then the booted key is reported and committed once.
    let n = node(Some(K1), Some("Rebooting"), T0);
    assert_eq!(a.step(&n, t(T1)).unwrap(), Outcome::Activated(K1.into()));
    assert_eq!(
        a.annotations(&n)
            .get(ANNOTATION_BOOTED_BUILD_KEY)
            .map(String::as_str),
        Some(K1)
    );
    assert_eq!(a.step(&n, t(T1)).unwrap(), Outcome::Committed(K1.into()));
    for s in ["Rebooting", "Verifying", "Done"] {
        assert_eq!(
            a.step(&node(Some(K1), Some(s), T0), t(T1)).unwrap(),
            Outcome::Idle
        );
    }
    assert_eq!(
        a.executor().calls,
        [
            format!("stage {K1} {ART}"),
            format!("activate {K1} Reboot"),
            format!("commit {K1}")
        ]
    );
}

#[test]
fn a_restart_between_any_two_steps_neither_stages_nor_switches_twice() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path(), "boot-a");
    let script = [
        (Some(K1), Some("Staging")),
        (Some(K1), Some("Staged")),
        (Some(K1), Some("Draining")),
        (Some(K1), Some("Rebooting")),
        (Some(K1), Some("Rebooting")),
        (Some(K1), Some("Verifying")),
        (Some(K1), Some("Done")),
    ];
    let mut booted = None;
    let mut calls = Vec::new();
    for (desired, state) in script {
        // A fresh agent (and executor view) every step: only the state file and the node carry over.
        let fake = Fake {
            boots: true,
            booted: booted.clone(),
            ..Fake::default()
        };
        let mut a = Agent::load(c.clone(), fake).unwrap();
        a.step(&node(desired, state, T0), t(T1)).unwrap();
        booted = a.executor().booted.clone();
        calls.extend(a.executor().calls.clone());
    }
    assert_eq!(
        calls,
        [
            format!("stage {K1} {ART}"),
            format!("activate {K1} Reboot"),
            format!("commit {K1}")
        ]
    );
}

#[test]
fn a_new_key_is_staged_and_kexec_is_passed_through() {
    let d = tempfile::tempdir().unwrap();
    let fake = Fake {
        boots: true,
        booted: Some(K1.into()),
        ..Fake::default()
    };
    let mut a = Agent::load(cfg(d.path(), "b"), fake).unwrap();
    // Already booted: nothing (not even a commit: this agent never staged it).
    assert_eq!(
        a.step(&node(Some(K1), Some("Done"), T0), t(T1)).unwrap(),
        Outcome::Idle
    );
    let mut n = node(Some(K2), Some("Staging"), T0);
    assert_eq!(a.step(&n, t(T1)).unwrap(), Outcome::Staged(K2.into()));
    n.metadata.annotations.as_mut().unwrap().extend([
        (
            ANNOTATION_ROLLOUT_STATE.to_string(),
            "Rebooting".to_string(),
        ),
        (ANNOTATION_UPGRADE_METHOD.to_string(), "kexec".to_string()),
    ]);
    assert_eq!(a.step(&n, t(T1)).unwrap(), Outcome::Activated(K2.into()));
    assert_eq!(a.executor().calls[1], format!("activate {K2} Kexec"));
    // A bad method waits, naming the key.
    n.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(ANNOTATION_UPGRADE_METHOD.into(), "warp".into());
    let d2 = tempfile::tempdir().unwrap();
    let mut b = Agent::load(cfg(d2.path(), "b"), Fake::default()).unwrap();
    b.step(&node(Some(K2), Some("Staging"), T0), t(T1)).unwrap();
    assert!(
        matches!(b.step(&n, t(T1)).unwrap(), Outcome::Waiting(w) if w.contains(ANNOTATION_UPGRADE_METHOD) && w.contains("warp"))
    );
}

#[test]
fn a_terminal_staging_failure_is_reported_once_and_retried_after_the_operator_restarts() {
    let d = tempfile::tempdir().unwrap();
    let msg = "x: expected digest sha256:aa, got sha256:bb";
    let fake = Fake {
        stage_err: Some(ExecError::Terminal(msg.into())),
        ..Fake::default()
    };
    let mut a = Agent::load(cfg(d.path(), "b"), fake).unwrap();
    let n = node(Some(K1), Some("Staging"), T0);
    assert_eq!(a.step(&n, t(T1)).unwrap(), Outcome::Failed(msg.into()));
    let ann = a.annotations(&n);
    assert_eq!(ann[ANNOTATION_UPGRADE_FAILURE], format!("{K1} {T1} {msg}"));
    assert!(!ann.contains_key(ANNOTATION_STAGED_BUILD_KEY));
    // Failed stands: no second attempt, across restarts too.
    assert_eq!(
        a.step(&node(Some(K1), Some("Failed"), T0), t(T2)).unwrap(),
        Outcome::Idle
    );
    let fake = Fake::default();
    let mut a = Agent::load(cfg(d.path(), "b"), fake).unwrap();
    assert_eq!(
        a.step(&node(Some(K1), Some("Failed"), T0), t(T2)).unwrap(),
        Outcome::Idle
    );
    assert!(a.executor().calls.is_empty());
    // The operator's retry: Staging again with a later since. The failure goes, staging runs.
    let n = node(Some(K1), Some("Staging"), T2);
    assert_eq!(a.step(&n, t(T2)).unwrap(), Outcome::Staged(K1.into()));
    assert!(!a.annotations(&n).contains_key(ANNOTATION_UPGRADE_FAILURE));
}

#[test]
fn transient_errors_are_retried_not_reported() {
    let d = tempfile::tempdir().unwrap();
    let fake = Fake {
        stage_err: Some(ExecError::Transient("connection refused".into())),
        ..Fake::default()
    };
    let mut a = Agent::load(cfg(d.path(), "b"), fake).unwrap();
    let n = node(Some(K1), Some("Staging"), T0);
    for _ in 0..3 {
        assert_eq!(
            a.step(&n, t(T1)).unwrap(),
            Outcome::Retry("connection refused".into())
        );
    }
    assert!(a.annotations(&n).is_empty());
    assert_eq!(a.executor().calls.len(), 3);
}

#[test]
fn a_switch_that_comes_back_on_the_old_image_is_a_failed_boot() {
    let d = tempfile::tempdir().unwrap();
    // Boot "a": staged and switched (a real reboot: the call does not come back).
    let fake = Fake {
        booted: Some(K1.into()),
        ..Fake::default()
    };
    let mut a = Agent::load(cfg(d.path(), "boot-a"), fake).unwrap();
    a.step(&node(Some(K2), Some("Staging"), T0), t(T1)).unwrap();
    let n = node(Some(K2), Some("Rebooting"), T0);
    assert_eq!(a.step(&n, t(T1)).unwrap(), Outcome::Activated(K2.into()));
    // Boot "b" runs K1 again (BootNext was one-shot; the new image did not come up healthy).
    let fake = Fake {
        booted: Some(K1.into()),
        ..Fake::default()
    };
    let mut b = Agent::load(cfg(d.path(), "boot-b"), fake).unwrap();
    let Outcome::Failed(m) = b.step(&n, t(T2)).unwrap() else {
        panic!("not a failure")
    };
    assert!(
        m.contains(K2) && m.contains(K1) && m.contains("boot-a") && m.contains("boot-b"),
        "{m}"
    );
    assert!(b.executor().calls.is_empty(), "no second switch");
    assert!(b.annotations(&n)[ANNOTATION_UPGRADE_FAILURE].starts_with(&format!("{K2} {T2} ")));
    // The same boot after an agent restart (switch not yet done): the switch is retried, not failed.
    let d2 = tempfile::tempdir().unwrap();
    let mut c = Agent::load(cfg(d2.path(), "boot-a"), Fake::default()).unwrap();
    c.step(&node(Some(K2), Some("Staging"), T0), t(T1)).unwrap();
    c.step(&n, t(T1)).unwrap();
    let mut c = Agent::load(cfg(d2.path(), "boot-a"), Fake::default()).unwrap();
    assert_eq!(c.step(&n, t(T1)).unwrap(), Outcome::Activated(K2.into()));
}

#[test]
fn waits_for_the_artifact_and_rejects_a_corrupt_state_file() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Agent::load(cfg(d.path(), "b"), Fake::default()).unwrap();
    let mut n = node(Some(K1), Some("Staging"), T0);
    n.metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove(ANNOTATION_DESIRED_ARTIFACT);
    assert!(
        matches!(a.step(&n, t(T1)).unwrap(), Outcome::Waiting(w) if w.contains(ANNOTATION_DESIRED_ARTIFACT))
    );
    std::fs::write(d.path().join("state/agent.json"), "{not json").unwrap();
    let e = Agent::load(cfg(d.path(), "b"), Fake::default()).unwrap_err();
    assert!(e.to_string().contains("agent.json"), "{e}");
}

#[test]
fn published_reads_only_the_agents_keys() {
    let mut n = node(Some(K1), Some("Staging"), T0);
    n.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(ANNOTATION_STAGED_BUILD_KEY.into(), K1.into());
    assert_eq!(
        published(&n),
        BTreeMap::from([(ANNOTATION_STAGED_BUILD_KEY.to_string(), K1.to_string())])
    );
}
