//! The kind executor's bookkeeping against a recording fake of the node's commands: one restart unit per key, a
//! restarted executor waits for the recorded unit instead of starting another, the booted key only after a fresh
//! Ready heartbeat. (The restart itself runs in the kind suite, e2e/tests/kind_rollout.rs.)

use super::*;
use serde_json::json;

const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const K2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

/// Answers `systemctl show` with the queued states; records every command.
#[derive(Debug, Default)]
struct FakeHost {
    calls: Vec<Vec<String>>,
    states: Vec<&'static str>,
}

impl HostCommand for FakeHost {
    fn run(&mut self, argv: &[String]) -> Result<String, String> {
        self.calls.push(argv.to_vec());
        match argv[0].as_str() {
            "systemctl" => {
                let s = if self.states.len() > 1 {
                    self.states.remove(0)
                } else {
                    self.states.first().copied().unwrap_or("active")
                };
                Ok(format!("ActiveState={s}\nResult=success\n"))
            }
            "journalctl" => Ok("boom\n".into()),
            _ => Ok(String::new()),
        }
    }
}

fn kind(dir: &Path, states: Vec<&'static str>) -> KindNode<FakeHost> {
    KindNode::new(
        KindConfig {
            state_dir: dir.to_path_buf(),
            pod_uid: "uid-1".into(),
            builder: "/nonexistent/kitfleet-build".into(),
            insecure: vec![],
            unit_timeout: Duration::from_secs(5),
        },
        FakeHost {
            states,
            ..FakeHost::default()
        },
    )
}

fn node_ready(heartbeat: &str, ready: bool) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": "n1"},
        "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
            "lastHeartbeatTime": heartbeat}]}
    }))
    .unwrap()
}

fn runs(k: &KindNode<FakeHost>) -> usize {
    k.host
        .calls
        .iter()
        .filter(|c| c[0] == "systemd-run")
        .count()
}

#[test]
fn one_unit_per_key_even_across_restarts_and_booted_after_a_fresh_ready() {
    let d = tempfile::tempdir().unwrap();
    let mut k = kind(d.path(), vec!["activating", "activating", "active"]);
    let old = node_ready("2020-01-01T00:00:00Z", true);
    assert_eq!(k.booted(&old), None);
    k.activate(K1, "a", SwitchMethod::Reboot).unwrap();
    assert_eq!(runs(&k), 1);
    // The script is written to a file of the node, then run by a transient unit (a multi-line argument would be
    // cut by systemd's unit file).
    let write = &k.host.calls[0];
    assert!(
        write[4].contains(r#"[ "$uid" = "uid-1" ] && continue"#),
        "own pod kept: {write:?}"
    );
    let run = k.host.calls.iter().find(|c| c[0] == "systemd-run").unwrap();
    assert_eq!(run.last(), Some(&write[5]));
    assert!(run.contains(&"--no-block".to_string()));
    assert!(run.iter().all(|a| !a.contains('\n')), "{run:?}");
    let r = k.reboot().unwrap();
    assert!(r.finished && r.key == K1);
    // A stale heartbeat (before the restart) is not the node coming back; NotReady neither.
    assert_eq!(k.booted(&old), None);
    let fresh = Timestamp::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(5))
        .unwrap()
        .to_string();
    assert_eq!(k.booted(&node_ready(&fresh, false)), None);
    assert_eq!(k.booted(&node_ready(&fresh, true)), Some(K1.into()));
    // Recorded: a new executor (the pod restarted) reports it without a fresh heartbeat, and does not restart again.
    let mut k = kind(d.path(), vec!["active"]);
    assert_eq!(k.booted(&old), Some(K1.into()));
    k.activate(K1, "a", SwitchMethod::Reboot).unwrap();
    assert_eq!(runs(&k), 0);
    // A new key: a new unit; until it is confirmed the old key stays booted.
    k.activate(K2, "a", SwitchMethod::Reboot).unwrap();
    assert_eq!(runs(&k), 1);
    assert_eq!(k.booted(&old), Some(K1.into()));
}

#[test]
fn a_restarted_executor_waits_for_the_unit_it_started() {
    let d = tempfile::tempdir().unwrap();
    // The pod dies while the unit runs: the first executor times out waiting (transient), the record stays.
    let mut k = kind(d.path(), vec!["activating"]);
    k.cfg.unit_timeout = Duration::from_millis(100);
    assert!(
        matches!(k.activate(K1, "a", SwitchMethod::Reboot), Err(ExecError::Transient(m)) if m.contains("still runs"))
    );
    let unit = k.reboot().unwrap().unit;
    let mut k = kind(d.path(), vec!["activating", "active"]);
    k.activate(K1, "a", SwitchMethod::Reboot).unwrap();
    assert_eq!(runs(&k), 0, "no second restart");
    assert!(k.host.calls.iter().all(|c| c.contains(&unit)));
    assert!(k.reboot().unwrap().finished);
}

#[test]
fn a_failed_unit_is_terminal_with_its_log() {
    let d = tempfile::tempdir().unwrap();
    let mut k = kind(d.path(), vec!["failed"]);
    let e = k.activate(K1, "a", SwitchMethod::Reboot).unwrap_err();
    assert!(
        matches!(&e, ExecError::Terminal(m) if m.contains("boom") && m.contains("kitfleet-sim-reboot-")),
        "{e:?}"
    );
}

#[test]
fn staging_without_a_builder_is_retried() {
    let d = tempfile::tempdir().unwrap();
    let mut k = kind(d.path(), vec![]);
    assert!(matches!(
        k.stage(K1, "reg/x@sha256:00"),
        Err(ExecError::Transient(_))
    ));
}

#[test]
fn the_restart_script_keeps_the_own_pod_and_restarts_in_order() {
    let s = restart_script("uid-7");
    let pos = |p: &str| s.find(p).unwrap_or_else(|| panic!("{p} missing"));
    assert!(pos("systemctl stop kubelet") < pos("tasks kill"));
    assert!(pos("tasks kill") < pos("systemctl restart containerd"));
    assert!(pos("systemctl restart containerd") < pos("systemctl start kubelet"));
    assert!(s.contains(r#"[ "$uid" = "uid-7" ] && continue"#));
}

#[test]
fn the_node_mount_namespace_runs_programs() {
    // Our own mount namespace stands in for PID 1's (the same call, no privileges beyond CAP_SYS_ADMIN).
    let mut h = NodeMountNs {
        ns: "/proc/self/ns/mnt".into(),
    };
    let out = h.run(&["/bin/echo".into(), "hi".into()]);
    match out {
        Ok(o) => assert_eq!(o, "hi\n"),
        Err(e) => assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "setns needs CAP_SYS_ADMIN: {e}"
        ),
    }
    let e = h.run(&["/bin/false".into()]).unwrap_err();
    assert!(e.contains("/bin/false"), "{e}");
}
