//! Registry failures keep their cause: the operator's lookup against a port where nothing listens, against a
//! plain-HTTP registry (Debian's `docker-registry`) spoken to over TLS, and against the same registry as an insecure
//! one (it answers). Each message names the reference once and says what went wrong.

use kitfleet_builder::fixtures::Registry;
use kitfleet_operator::build::registry::{ArtifactRegistry, BuilderRegistry};

const KEY: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn lookup(registry: &BuilderRegistry, repo: &str) -> Result<Option<String>, String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(registry.lookup(repo, KEY, None))
        .map(|a| a.map(|a| a.reference))
        .map_err(|e| e.to_string())
}

#[test]
fn refused_tls_and_plain_http_read_differently() {
    kitfleet_builder::source::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let reg =
        Registry::start_with(None).expect("docker-registry (apt-get install docker-registry)");
    let a = reg.addr.clone();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let secure = BuilderRegistry::new(&dir.path().join("c1"), "amd64", vec![], None).unwrap();
    let insecure = BuilderRegistry::new(
        &dir.path().join("c2"),
        "amd64",
        vec![a.clone(), closed.clone()],
        None,
    )
    .unwrap();

    let refused = lookup(&insecure, &format!("{closed}/k/x")).unwrap_err();
    println!("refused: {refused}");
    assert!(refused.contains("connection refused"), "{refused}");

    let tls = lookup(&secure, &format!("{a}/k/x")).unwrap_err();
    println!("tls: {tls}");
    assert!(
        tls.contains("TLS handshake failed: the registry speaks plain HTTP"),
        "{tls}"
    );
    assert!(!tls.contains("connection refused"), "{tls}");

    for e in [&refused, &tls] {
        let repo_mentions = e.matches("/k/x:bk-").count();
        assert_eq!(repo_mentions, 1, "the reference once: {e}");
    }
    // Spoken to as it should be, the registry answers: nothing published under that key.
    assert_eq!(lookup(&insecure, &format!("{a}/k/x")), Ok(None));
}
