//! `/healthz`, `/readyz` and `/metrics` over plain HTTP/1.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// What the endpoints report.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once the operator can serve (API server reachable; controller started or standing by for the lease).
    pub ready: AtomicBool,
}

/// The answer to one request (pure, so the routes are tested without a socket).
pub fn respond(
    method: &Method,
    path: &str,
    health: &Health,
    metrics: &Metrics,
) -> (StatusCode, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n".into());
    }
    match path {
        "/healthz" | "/livez" => (StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" if health.ready.load(Ordering::Acquire) => {
            (StatusCode::OK, TEXT, "ready\n".into())
        }
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n".into()),
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

/// Serves on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        };
        let (health, metrics) = (health.clone(), metrics.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let (code, ct, body) = respond(req.method(), req.uri().path(), &health, &metrics);
                let resp = Response::builder()
                    .status(code)
                    .header("content-type", ct)
                    .body(Full::new(Bytes::from(body)));
                async move { Ok::<_, Infallible>(resp.expect("static headers are valid")) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "health connection ended");
            }
        });
    }
}

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let h = Health::default();
        let m = Metrics::default();
        assert_eq!(respond(&Method::GET, "/healthz", &h, &m).0, StatusCode::OK);
        assert_eq!(
            respond(&Method::GET, "/readyz", &h, &m).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        h.ready.store(true, Ordering::Release);
        assert_eq!(respond(&Method::GET, "/readyz", &h, &m).0, StatusCode::OK);
        let (code, _, body) = respond(&Method::GET, "/metrics", &h, &m);
        assert_eq!(code, StatusCode::OK);
        assert!(
            body.contains("kitfleet_operator_reconciles_total"),
            "{body}"
        );
        assert_eq!(
            respond(&Method::GET, "/nope", &h, &m).0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&Method::POST, "/healthz", &h, &m).0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn serves_over_tcp_and_stops() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, Arc::default(), Arc::default(), rx));
        let body = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        assert!(
            body.starts_with("HTTP/1.1 200 OK") && body.ends_with("ok\n"),
            "{body}"
        );
        tx.send(true).unwrap();
        task.await.unwrap().unwrap();
    }
}
