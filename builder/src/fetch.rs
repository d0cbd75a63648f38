//! Bounded registry reads: a manifest is read with a size cap (like containerd's 4 MiB) instead
//! of whole into memory, a blob is streamed to a file and stops at the first byte past the size
//! its descriptor declares, and every connection has connect and read timeouts.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use oci_client::Reference;
use oci_client::RegistryOperation;
use oci_client::secrets::RegistryAuth;

/// Limits of registry reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetLimits {
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response.
    pub read_timeout: Duration,
    /// Largest manifest or index accepted.
    pub max_manifest: u64,
    /// Largest image or artifact config accepted (configs are read into memory).
    pub max_config: u64,
}

impl Default for NetLimits {
    fn default() -> Self {
        NetLimits {
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            max_manifest: 4 << 20,
            max_config: 16 << 20,
        }
    }
}

/// Why a bounded read failed.
#[derive(Debug)]
pub enum FetchError {
    /// Longer than the limit.
    TooLarge(u64),
    /// The registry answered 404 (no such manifest or repository).
    NotFound(String),
    /// Anything else (HTTP, TLS, timeouts, status), as text.
    Other(String),
}

/// `GET /v2/<repo>/manifests/<ref>`, reading at most `max` bytes. Authentication goes through
/// `client` (the registry's token flow); the request itself through `http`.
pub async fn manifest(
    http: &reqwest::Client,
    client: &oci_client::Client,
    reference: &Reference,
    auth: &RegistryAuth,
    accepted: &[&str],
    insecure: bool,
    max: u64,
) -> Result<Vec<u8>, FetchError> {
    let other = |e: &(dyn std::error::Error + 'static)| FetchError::Other(chain(e));
    let token = client
        .auth(reference, auth, RegistryOperation::Pull)
        .await
        .map_err(|e| other(&e))?;
    let scheme = if insecure { "http" } else { "https" };
    let tail = reference
        .digest()
        .or(reference.tag())
        .unwrap_or("latest")
        .to_string();
    let url = format!(
        "{scheme}://{}/v2/{}/manifests/{tail}",
        reference.resolve_registry(),
        reference.repository()
    );
    let mut req = http.get(&url).header("Accept", accepted.join(", "));
    req = match (token, auth) {
        (Some(t), _) => req.bearer_auth(t),
        (None, RegistryAuth::Basic(u, p)) => req.basic_auth(u, Some(p)),
        (None, _) => req,
    };
    let mut resp = req.send().await.map_err(|e| other(&e))?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(FetchError::NotFound(format!("GET {url}: {status}")));
    }
    if !status.is_success() {
        let body = read_capped(&mut resp, 4096).await.unwrap_or_default();
        let text = format!(
            "GET {url}: {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
        // The distribution spec's error codes for a missing manifest or repository.
        let unknown = ["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]
            .iter()
            .any(|c| text.contains(c));
        return Err(if unknown {
            FetchError::NotFound(text)
        } else {
            FetchError::Other(text)
        });
    }
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(FetchError::TooLarge(max));
    }
    read_capped(&mut resp, max).await
}

/// An error with every cause in its chain, each piece once ("error sending request" alone hides
/// whether the connection was refused or the TLS handshake failed).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

async fn read_capped(resp: &mut reqwest::Response, max: u64) -> Result<Vec<u8>, FetchError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| FetchError::Other(chain(&e)))?
    {
        if out.len() as u64 + chunk.len() as u64 > max {
            return Err(FetchError::TooLarge(max));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A file that refuses to grow past `limit` bytes: the write that would cross it fails, so a
/// download stops at the first extra byte.
#[derive(Debug)]
pub struct CappedFile {
    file: std::fs::File,
    written: u64,
    limit: u64,
    /// Set when the limit was hit (the error the writer returned is an `io::Error`).
    pub over: bool,
}

impl CappedFile {
    /// Wraps `file`.
    pub fn new(file: std::fs::File, limit: u64) -> Self {
        CappedFile {
            file,
            written: 0,
            limit,
            over: false,
        }
    }

    /// Bytes written.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl tokio::io::AsyncWrite for CappedFile {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.written + buf.len() as u64 > this.limit {
            this.over = true;
            return Poll::Ready(Err(std::io::Error::other(format!(
                "longer than the {} bytes its descriptor declares",
                this.limit
            ))));
        }
        // A local file write: blocking, but short (the network read is what waits).
        let r = this.file.write_all(buf).map(|()| buf.len());
        if let Ok(n) = r {
            this.written += n as u64;
        }
        Poll::Ready(r)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.get_mut().file.flush())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}
