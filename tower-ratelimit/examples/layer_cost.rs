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
//! `memory-10k` (10,000 keys in turn), `headers` (no limiter: a response map that writes the
//! five rate-limit fields of a `memory-hot` response as fixed values, the least any layer
//! writing them can cost). The quota never denies; both header styles are on, as in
//! `examples/bench_server.rs`.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::pin;
use std::process::ExitCode;
use std::task::{Context, Poll, Waker};

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use axum::routing::get;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use rate_limit_core::{MemoryStore, Quota};
use tower::Service as _;
use tower::util::MapResponseLayer;
use tower_ratelimit::{HeaderStyle, RateLimitLayer, headers, key};

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

/// The rate-limit fields of `sample`, with values that live for the whole run, so that writing
/// them copies and allocates nothing.
fn fixed_fields(sample: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    [
        headers::X_RATELIMIT_LIMIT,
        headers::X_RATELIMIT_REMAINING,
        headers::X_RATELIMIT_RESET,
        headers::RATELIMIT_POLICY,
        headers::RATELIMIT,
    ]
    .into_iter()
    .filter_map(|name| {
        let text = sample.get(&name)?.to_str().ok()?;
        let text: &'static str = Box::leak(text.to_owned().into_boxed_str());
        Some((name, HeaderValue::from_static(text)))
    })
    .collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(count)) = (args.get(1), args.get(2).and_then(|n| n.parse().ok())) else {
        eprintln!("usage: layer_cost <bare|memory-hot|memory-10k|headers> <requests>");
        return ExitCode::from(2);
    };
    let count: usize = count;
    let router = Router::new().route("/", get(|| async { "ok" }));
    let quota = Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap_or(NonZeroU32::MAX));
    let layer = RateLimitLayer::new(MemoryStore::new(), quota)
        .key(key::Header::new("x-client-id"))
        .headers(HeaderStyle::Both);
    let keys: Vec<HeaderValue> = match mode.as_str() {
        "bare" | "memory-hot" | "headers" => vec![HeaderValue::from_static("hot")],
        "memory-10k" => (0..10_000)
            .map(|i| HeaderValue::from(i + 1_000_000))
            .collect(),
        _ => {
            eprintln!("unknown mode {mode:?}");
            return ExitCode::from(2);
        }
    };
    let app = match mode.as_str() {
        "bare" => router,
        "headers" => {
            let mut sample = router.clone().layer(layer).with_state::<()>(());
            let req = Request::get("/")
                .header("x-client-id", "sample")
                .body(Body::empty())
                .unwrap_or_default();
            let fields = match block_on(sample.call(req)) {
                Ok(res) => fixed_fields(res.headers()),
                Err(never) => match never {},
            };
            if fields.len() != 5 {
                eprintln!("the layer wrote {} of the five fields", fields.len());
                return ExitCode::FAILURE;
            }
            // Leaked once, so that the per-request clone of the route's service copies a
            // pointer, not a vector.
            let fields: &'static [(HeaderName, HeaderValue)] = Box::leak(fields.into_boxed_slice());
            router.layer(MapResponseLayer::new(move |mut res: Response| {
                let map = res.headers_mut();
                map.reserve(fields.len());
                for (name, value) in fields {
                    map.insert(name.clone(), value.clone());
                }
                res
            }))
        }
        _ => router.layer(layer),
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
