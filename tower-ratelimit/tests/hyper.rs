//! The layer in a plain hyper server over a real socket, keyed by the peer address.

mod common;

use std::convert::Infallible;

use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rate_limit_core::Quota;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;
use tower_ratelimit::RateLimitLayer;
use tower_ratelimit::key::PeerIp;

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
}

#[tokio::test]
async fn plain_hyper_server_keys_by_peer_address() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let clock = clock();
    let layer = RateLimitLayer::new(store(&clock), Quota::per_minute(nz(2))).key(PeerIp::new());
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            // Without axum, the server puts the peer address into the request extensions.
            let svc = ServiceBuilder::new()
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(peer);
                    req
                })
                .layer(layer.clone())
                .service_fn(hello);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
            tokio::spawn(conn);
        }
    });

    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let req = Request::get("/").body(Empty::<Bytes>::new()).unwrap();
        let res = client.send_request(req).await.unwrap();
        statuses.push(res.status());
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        last = Some((parts, body));
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let (parts, body) = last.unwrap();
    assert_eq!(parts.headers["retry-after"], "30");
    assert_eq!(parts.headers["x-ratelimit-remaining"], "0");
    assert!(body.is_empty(), "the 429 body is Full::default()");
}
