//! Rate limiting without axum: a hyper 1 server and a `tower::ServiceBuilder`.
//!
//! ```text
//! cargo run --example plain_hyper
//! curl -i http://127.0.0.1:3000/ -H 'x-client-id: alice'    # 3 per minute per client
//! ```
//!
//! The layer works on any `tower::Service<http::Request<B>>`. Without axum there is no
//! `ConnectInfo`, so the accept loop inserts the peer's `SocketAddr` into each request's
//! extensions: clients without the `x-client-id` header are keyed by IP. The layer's own 429
//! needs a response body with `Default` (here `Full<Bytes>`, empty).

use std::convert::Infallible;
use std::net::SocketAddr;

use http::request::Parts;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_ratelimit::key::{self, KeyExtractor};
use tower_ratelimit::{MemoryStore, Quota, RateLimit, RateLimitLayer};

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
}

/// The client id header if present, else the peer IP.
fn client(parts: &Parts) -> Option<String> {
    match parts.headers.get("x-client-id") {
        Some(id) => Some(format!("id:{}", key::compact_bytes(id.as_bytes()))),
        None => key::PeerIp::new()
            .extract(parts)
            .map(|ip| format!("ip:{ip}")),
    }
}

/// Serves `listener` until the task is dropped, every connection sharing one limiter.
async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let quota = Quota::per_minute(3);
    let layer = RateLimitLayer::new(MemoryStore::new(), quota).key(client);
    let svc: RateLimit<_> = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(hello));
    loop {
        let (stream, peer) = listener.accept().await?;
        let svc = svc.clone();
        tokio::spawn(async move {
            let per_request = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert::<SocketAddr>(peer);
                svc.clone().oneshot(req)
            });
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), per_request)
                .await
            {
                eprintln!("connection from {peer}: {err}");
            }
        });
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    serve(listener).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn status(port: u16, client: Option<&str>) -> String {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let id = client.map_or(String::new(), |c| format!("x-client-id: {c}\r\n"));
        let req = format!("GET / HTTP/1.1\r\nhost: x\r\n{id}connection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out.lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn a_real_socket_gets_three_then_429() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(serve(listener));
        for _ in 0..3 {
            assert_eq!(status(port, Some("alice")).await, "HTTP/1.1 200 OK");
        }
        assert_eq!(
            status(port, Some("alice")).await,
            "HTTP/1.1 429 Too Many Requests"
        );
        // No header: keyed by the peer address, which the accept loop supplied.
        assert_eq!(status(port, None).await, "HTTP/1.1 200 OK");
        server.abort();
    }
}
