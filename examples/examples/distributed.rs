//! Two instances of an app sharing one budget per client through Redis.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example distributed
//! ```
//!
//! Needs a Redis server: set `REDIS_URL` (without it the example explains and exits with 2).
//! It starts two instances of the same axum app on two ports, each with its own connection to
//! Redis (as two processes behind a load balancer would), and sends 12 requests from one client
//! alternately to each. The quota is 5 per minute for the client, whichever instance serves it:
//! exactly 5 are admitted in total, and each instance's headers show the shared remaining budget.
//! Keys live under the `distributed-example` policy name, with a random client id per run, so
//! the example leaves nothing but keys that expire within a minute.

use std::net::SocketAddr;
use std::process::ExitCode;

use axum::Router;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_ratelimit::{FailureMode, Quota, RateLimitLayer, RedisStore, key};

/// One instance: its own Redis connection, the shared quota.
async fn instance(url: &str) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let store = RedisStore::connect(url).await?;
    let quota = Quota::per_minute(5);
    let layer = RateLimitLayer::new(store, quota)
        .name("distributed-example")
        .key(key::Header::new("x-client-id"))
        .on_store_error(FailureMode::Closed);
    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// The status line and `X-RateLimit-Remaining` of one request.
async fn fetch(addr: SocketAddr, client: &str) -> std::io::Result<(String, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let req =
        format!("GET / HTTP/1.1\r\nhost: x\r\nx-client-id: {client}\r\nconnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let status = text.lines().next().unwrap_or_default().to_owned();
    let remaining = text
        .lines()
        .find_map(|l| l.strip_prefix("x-ratelimit-remaining: "))
        .unwrap_or("-")
        .to_owned();
    Ok((status, remaining))
}

#[tokio::main]
async fn main() -> ExitCode {
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!(
            "this example needs a Redis server shared by its two instances:\n  \
             REDIS_URL=redis://127.0.0.1:6379 cargo run --example distributed"
        );
        return ExitCode::from(2);
    };
    match run(&url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("distributed example failed: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let a = instance(url).await?;
    let b = instance(url).await?;
    println!("instance A on {a}, instance B on {b}, sharing {url}");
    // A fresh client per run, so that earlier runs' budgets do not interfere.
    let client = format!("client-{}-{}", std::process::id(), a.port());
    let mut admitted = 0;
    for i in 0..12 {
        let (name, addr) = if i % 2 == 0 { ("A", a) } else { ("B", b) };
        let (status, remaining) = fetch(addr, &client).await?;
        if status.contains(" 200 ") {
            admitted += 1;
        }
        println!(
            "request {:>2} via {name}: {status} (remaining {remaining})",
            i + 1
        );
    }
    println!("admitted {admitted} of 12 (quota 5 per minute, shared)");
    if admitted != 5 {
        return Err(format!("expected exactly 5 admitted, got {admitted}").into());
    }
    Ok(())
}
