//! Sends requests through an axum router in-process, with no socket and no runtime, so that
//! a profiler sees only the router and the layer. `bench/instructions.sh` runs it under
//! `valgrind --tool=callgrind` (instruction counts do not depend on what else the machine does)
//! and divides by the request count.
//!
//! ```text
//! cargo run --release -p tower-ratelimit --example layer_cost -- memory-hot 100000
//! ```
//!
//! Modes: `bare` (no layer), `memory-hot` (our layer on a `MemoryStore`, one key),
//! `memory-10k` (10,000 keys in turn). The quota never denies; both header styles are on,
//! as in `examples/bench_server.rs`.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::pin;
use std::process::ExitCode;
use std::task::{Context, Poll, Waker};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderValue, Request};
use rate_limit_core::{MemoryStore, Quota};
use tower::Service as _;
use tower_ratelimit::{HeaderStyle, RateLimitLayer, key};

/// Polls `fut` to completion with a waker that does nothing: every future here is ready at
/// once (the memory store never waits), so no runtime is needed.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(count)) = (args.get(1), args.get(2).and_then(|n| n.parse().ok())) else {
        eprintln!("usage: layer_cost <bare|memory-hot|memory-10k> <requests>");
        return ExitCode::from(2);
    };
    let count: usize = count;
    let router = Router::new().route("/", get(|| async { "ok" }));
    let quota = Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap_or(NonZeroU32::MAX));
    let layer = RateLimitLayer::new(MemoryStore::new(), quota)
        .key(key::Header::new("x-client-id"))
        .headers(HeaderStyle::Both);
    let keys: Vec<HeaderValue> = match mode.as_str() {
        "bare" | "memory-hot" => vec![HeaderValue::from_static("hot")],
        "memory-10k" => (0..10_000)
            .map(|i| HeaderValue::from(i + 1_000_000))
            .collect(),
        _ => {
            eprintln!("unknown mode {mode:?}");
            return ExitCode::from(2);
        }
    };
    let app = if mode == "bare" {
        router
    } else {
        router.layer(layer)
    };
    // As `axum::serve` does: handlers become routes once, not on every request.
    let mut app = app.with_state::<()>(());
    let mut ok = 0usize;
    for i in 0..count {
        let req = Request::get("/")
            .header("x-client-id", keys[i % keys.len()].clone())
            .body(Body::empty())
            .unwrap_or_default();
        let res = block_on(app.call(req));
        if res.is_ok_and(|r| r.status().is_success()) {
            ok += 1;
        }
    }
    if ok != count {
        eprintln!("{} of {count} requests were not answered 200", count - ok);
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
