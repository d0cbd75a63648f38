//! Hostile registries on 127.0.0.1: an endless manifest, a blob longer than its descriptor, a
//! server that stalls. Each read stops at its limit with an error naming the reference.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use kitfleet_builder::Error;
use kitfleet_builder::cache::Cache;
use kitfleet_builder::digest::sha256;
use kitfleet_builder::fetch::NetLimits;
use kitfleet_builder::reference::ImageRef;
use kitfleet_builder::source::{SourceOptions, Sources};

/// Serves one canned behaviour per path; `/v2/` answers 200 without authentication.
fn serve(config_len: usize) -> (String, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // The config is 100 bytes by its descriptor but the server sends `config_len`.
    let declared = vec![b'{'; 100];
    let digest = sha256(&declared);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{digest}","size":100}},"layers":[]}}"#
    );
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let manifest = manifest.clone();
            std::thread::spawn(move || handle(conn, &manifest, config_len));
        }
    });
    (addr, digest)
}

fn handle(mut conn: TcpStream, manifest: &str, config_len: usize) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
    let head = |len: Option<usize>| {
        let len = len.map_or("Transfer-Encoding: chunked\r\n".into(), |n| {
            format!("Content-Length: {n}\r\n")
        });
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n{len}\r\n"
        )
    };
    if path == "/v2/" {
        let _ = conn.write_all(format!("{}{{}}", head(Some(2))).as_bytes());
    } else if path.ends_with("/manifests/endless") {
        // A JSON string that never ends, chunked, until the client hangs up.
        let _ = conn.write_all(head(None).as_bytes());
        let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, "a".repeat(64 << 10));
        let _ = conn.write_all(b"6\r\n{\"a\":\"\r\n");
        while conn.write_all(chunk.as_bytes()).is_ok() {}
    } else if path.ends_with("/manifests/stall") {
        let _ = conn.write_all(head(Some(1000)).as_bytes());
        let _ = conn.write_all(b"{\"schemaVersion\":");
        std::thread::sleep(Duration::from_secs(30));
    } else if path.ends_with("/manifests/long") {
        let _ = conn.write_all(format!("{}{manifest}", head(Some(manifest.len()))).as_bytes());
    } else if path.contains("/blobs/") {
        let _ = conn.write_all(head(Some(config_len)).as_bytes());
        let _ = conn.write_all(&vec![b'{'; config_len]);
    } else {
        let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    }
}

fn sources(addr: &str, dir: &std::path::Path) -> Sources {
    Sources::with_limits(
        Cache::open(dir).unwrap(),
        SourceOptions {
            insecure_registries: vec![addr.to_string()],
            ..SourceOptions::default()
        },
        NetLimits {
            read_timeout: Duration::from_secs(2),
            ..NetLimits::default()
        },
    )
}

async fn resolve(addr: &str, tag: &str) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let r = ImageRef::parse(&format!("{addr}/hostile/img:{tag}"), "onboot[0].image").unwrap();
    sources(addr, dir.path())
        .resolve(&r, "onboot[0].image")
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_manifest_stops_at_the_cap() {
    let (addr, _) = serve(100);
    let e = resolve(&addr, "endless").await;
    assert!(
        matches!(&e, Error::TooLarge { what, limit, .. } if what == "manifest" && *limit == 4 << 20),
        "{e}"
    );
    assert!(e.to_string().contains("hostile/img:endless"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_longer_than_its_descriptor_fails_at_the_first_extra_byte() {
    let (addr, digest) = serve(1 << 20);
    let e = resolve(&addr, "long").await;
    assert!(
        matches!(&e, Error::TooLarge { what, limit, .. } if what == &format!("blob {digest}") && *limit == 100),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalling_registry_times_out() {
    let (addr, _) = serve(100);
    let t = Instant::now();
    let e = resolve(&addr, "stall").await;
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(matches!(e, Error::Registry { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_looked_up_directly_is_capped_too() {
    // What the operator's artifact lookup calls.
    let (addr, _) = serve(100);
    let dir = tempfile::tempdir().unwrap();
    let s = sources(&addr, dir.path());
    let r: oci_client::Reference = format!("{addr}/hostile/img:endless").parse().unwrap();
    let e = s
        .fetch_manifest(&r, &["application/vnd.oci.image.manifest.v1+json"])
        .await;
    assert!(
        matches!(e, Err(Error::TooLarge { limit, .. }) if limit == 4 << 20),
        "{e:?}"
    );
    let missing: oci_client::Reference = format!("{addr}/hostile/img:absent").parse().unwrap();
    assert_eq!(
        s.fetch_manifest(&missing, &["application/vnd.oci.image.manifest.v1+json"])
            .await
            .unwrap(),
        None
    );
}
