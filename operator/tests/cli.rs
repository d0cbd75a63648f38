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
