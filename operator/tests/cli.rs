//! The `kitfleet-operator` binary's exit codes and messages for configuration and connection failures.

use std::process::Command;

fn operator() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kitfleet-operator"));
    c.env_clear().env("PATH", "/usr/bin:/bin");
    c
}

#[test]
fn bad_configuration_exits_2_naming_the_flag() {
    let out = operator()
        .args(["run"])
        .env("HOSTNAME", "h")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--builder-image: required"), "{err}");

    let out = operator()
        .args([
            "run",
            "--builder-image",
            "b:1",
            "--identity",
            "me",
            "--build-memory",
            "1GB",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--build-memory: \"1GB\" is not a resource quantity"),
        "{err}"
    );
}

/// `check-config` prints what `run` would use: each setting from its flag, else its variable, else the default.
#[test]
fn environment_variables_fall_back_under_flags() {
    let out = operator()
        .args(["check-config", "--namespace", "flagns"])
        .envs([
            ("KITFLEET_BUILDER_IMAGE", "env/image:1"),
            ("KITFLEET_NAMESPACE", "from-env"),
            ("KITFLEET_CACHE_PVC", "cache"),
            (
                "KITFLEET_INSECURE_REGISTRIES",
                "127.0.0.1:5000, reg.local:80",
            ),
            ("KITFLEET_ARCH", "arm64"),
            ("KITFLEET_LISTEN", "127.0.0.1:8081"),
            ("KITFLEET_DOCKER_CONFIG", "/etc/d.json"),
            ("KITFLEET_LEADER_ELECTION", "false"),
            ("KITFLEET_LEASE_NAME", "lease-x"),
            ("KITFLEET_LEASE_DURATION", "30"),
            ("KITFLEET_LEASE_RENEW_DEADLINE", "20"),
            ("KITFLEET_LEASE_RETRY_PERIOD", "3"),
            ("POD_NAME", "pod-a"),
            ("HOSTNAME", "host-a"),
            ("KITFLEET_BUILD_CPU", "2"),
            ("KITFLEET_BUILD_MEMORY", "2Gi"),
            ("KITFLEET_BUILD_TIMEOUT", "60"),
            ("KITFLEET_RETRY_BASE", "5"),
            ("KITFLEET_RETRY_MAX", "50"),
            ("TMPDIR", "/var/tmp/"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "builder_image: \"env/image:1\"",
        "namespace: \"flagns\"",
        "cache_pvc: Some(\n        \"cache\"",
        "\"127.0.0.1:5000\",\n        \"reg.local:80\"",
        "arch: \"arm64\"",
        "listen: 127.0.0.1:8081",
        "docker_config: Some(\n        \"/etc/d.json\"",
        "cache_dir: \"/var/tmp/kitfleet-operator\"",
        "leader_election: false",
        "name: \"lease-x\"",
        "duration: 30s",
        "renew_deadline: 20s",
        "retry_period: 3s",
        "identity: \"pod-a\"",
        "cpu: Quantity(\n            \"2\"",
        "memory: Quantity(\n            \"2Gi\"",
        "timeout: 60s",
        "retry_base: 5s",
        "retry_max: 50s",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    // HOSTNAME when POD_NAME is unset; an empty variable counts as unset.
    let out = operator()
        .args(["check-config"])
        .envs([
            ("KITFLEET_BUILDER_IMAGE", "i"),
            ("HOSTNAME", "host-a"),
            ("POD_NAME", ""),
            ("KITFLEET_CACHE_PVC", ""),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("identity: \"host-a\"") && text.contains("cache_pvc: None"),
        "{text}"
    );
    assert!(
        text.contains("cache_dir: \"/tmp/kitfleet-operator\"")
            && text.contains("namespace: \"kitfleet-system\""),
        "{text}"
    );
}

#[test]
fn a_bad_variable_is_named() {
    for (var, value, want) in [
        (
            "KITFLEET_NAMESPACE",
            "-x",
            "KITFLEET_NAMESPACE: \"-x\" is not a DNS label",
        ),
        (
            "KITFLEET_INSECURE_REGISTRIES",
            "h:x",
            "KITFLEET_INSECURE_REGISTRIES: \"h:x\" must be HOST:PORT",
        ),
        (
            "KITFLEET_LEADER_ELECTION",
            "maybe",
            "KITFLEET_LEADER_ELECTION: \"maybe\" must be true or false",
        ),
        (
            "KITFLEET_BUILD_MEMORY",
            "1GB",
            "KITFLEET_BUILD_MEMORY: \"1GB\" is not a resource quantity",
        ),
        (
            "KITFLEET_RETRY_BASE",
            "0",
            "KITFLEET_RETRY_BASE: \"0\" must be a positive number of seconds",
        ),
    ] {
        let out = operator()
            .args(["check-config"])
            .envs([
                ("KITFLEET_BUILDER_IMAGE", "i"),
                ("HOSTNAME", "h"),
                (var, value),
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{var}={value}: {err}");
    }
    let out = operator()
        .args(["check-config", "--builder-image", "i"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--identity: unset, and neither POD_NAME nor HOSTNAME is set"),
        "{err}"
    );
}

#[test]
fn no_api_server_exits_1_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = operator()
        .args([
            "run",
            "--builder-image",
            "b:1",
            "--identity",
            "me",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", dir.path().join("missing-kubeconfig"))
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connecting to the API server"), "{err}");
}
