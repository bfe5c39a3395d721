//! Sends requests through an axum router in-process, with no socket and no runtime, so that
//! a profiler sees only the router and the layer in front of it. `bench/instructions.sh` runs it
//! under `valgrind --tool=callgrind` (instruction counts do not depend on what else the machine
//! does), counting only the request loop, and divides by the request count.
//!
//! ```text
//! cargo run --release -p bench --bin layer_cost -- memory:none hot 100000
//! ```
//!
//! Layers (the first argument):
//!
//! - `bare`: no layer.
//! - `memory:STYLE`: our layer on a `MemoryStore`, writing the headers of `HeaderStyle` `none`,
//!   `legacy`, `ietf` or `both` (`memory` alone is `memory:both`, the default style), with the
//!   default algorithm (token bucket).
//! - `memory-gcra:STYLE`: the same with GCRA, the algorithm governor implements.
//! - `governor-no-headers`: tower_governor's keyed limiter as it comes.
//! - `governor`: the same with `use_headers()`.
//! - `headers`: no limiter, a response map writing the five fields our layer writes by default
//!   as fixed values: the least any layer writing them can cost.
//!
//! Keys (the second): `hot` (one key) or `10k` (10,000 keys in turn). Every limiter keys by the
//! `X-Client-ID` header, with a quota that never denies (see the `bench` library).
//!
//! After the last request it prints `rate-limit fields: N`, the number of rate-limit fields on
//! that response, and it fails unless every request was answered 200.

use std::future::Future;
use std::pin::pin;
use std::process::ExitCode;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bench::{
    CLIENT_HEADER, header_style, header_style_names, ours, rate_limit_fields, with_fixed_fields,
    with_governor,
};
use http::{HeaderValue, Request};
use rate_limit_core::{Algorithm, MemoryStore};
use tower::Service as _;
use tower_ratelimit::HeaderStyle;

const USAGE: &str = "usage: layer_cost <bare|memory[:STYLE]|memory-gcra:STYLE|governor-no-headers|\
                     governor|headers> \
                     <hot|10k> <requests>";

/// Polls `fut` to completion with a waker that does nothing: every future here is ready at
/// once (the memory store and governor never wait), so no runtime is needed.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// Our layer's store. Its sweep, which drops the keys whose state is full again (here every
/// key a moment after its check), runs every 10 s of wall time by default: under callgrind,
/// which runs the program some fifty times slower, that is every few thousand requests rather
/// than every million, and whether it falls inside the counted loop depends on the machine's
/// load. It is put off beyond any run, so that the figures do not depend on either.
fn store() -> MemoryStore {
    MemoryStore::builder()
        .sweep_interval(Duration::from_secs(3_600))
        .build()
}

/// The route behind the layer named `layer`.
fn app(layer: &str) -> Result<Router, String> {
    let router = Router::new().route("/", get(|| async { "ok" }));
    Ok(match layer.split_once(':') {
        None if layer == "bare" => router,
        None if layer == "headers" => with_fixed_fields(router),
        None if layer == "governor" => with_governor(router, true)?,
        None if layer == "governor-no-headers" => with_governor(router, false)?,
        None if layer == "memory" => router.layer(ours(store(), HeaderStyle::default())),
        Some((algorithm @ ("memory" | "memory-gcra"), style)) => {
            let style = header_style(style).ok_or_else(|| {
                format!(
                    "unknown header style {style:?}: expected one of {}",
                    header_style_names()
                )
            })?;
            let layer = ours(store(), style);
            router.layer(if algorithm == "memory-gcra" {
                layer.algorithm(Algorithm::Gcra)
            } else {
                layer
            })
        }
        _ => return Err(format!("unknown layer {layer:?}")),
    })
}

/// The `X-Client-ID` values the requests take in turn.
fn keys(shape: &str) -> Option<Vec<HeaderValue>> {
    match shape {
        "hot" => Some(vec![HeaderValue::from_static("hot")]),
        "10k" => Some(
            (0..10_000)
                .map(|i| HeaderValue::from(i + 1_000_000))
                .collect(),
        ),
        _ => None,
    }
}

/// Sends `count` requests through `app`, taking `keys` in turn: the requests answered 200,
/// and the number of rate-limit fields on the last response. `bench/instructions.sh` counts
/// only the instructions under this function (`--toggle-collect`), so that what the program
/// does once (building the layers, calibrating the clocks) stays out of the figures.
#[inline(never)]
fn send_all(app: &mut Router, keys: &[HeaderValue], count: usize) -> (usize, usize) {
    let mut ok = 0usize;
    let mut fields = 0;
    for i in 0..count {
        let req = Request::get("/")
            .header(CLIENT_HEADER, keys[i % keys.len()].clone())
            .body(Body::empty())
            .unwrap_or_default();
        match block_on(app.call(req)) {
            Ok(res) if res.status().is_success() => {
                ok += 1;
                if i + 1 == count {
                    fields = rate_limit_fields(res.headers());
                }
            }
            Ok(_) => {}
            Err(never) => match never {},
        }
    }
    (ok, fields)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(layer), Some(shape), Some(count)) = (
        args.get(1),
        args.get(2),
        args.get(3).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let Some(keys) = keys(shape) else {
        eprintln!("unknown keys {shape:?}: expected hot or 10k\n{USAGE}");
        return ExitCode::from(2);
    };
    let app = match app(layer) {
        Ok(app) => app,
        Err(err) => {
            eprintln!("{err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // As `axum::serve` does: handlers become routes once, not on every request.
    let mut app = app.with_state::<()>(());
    let (ok, fields) = send_all(&mut app, &keys, count);
    if ok != count {
        eprintln!("{} of {count} requests were not answered 200", count - ok);
        return ExitCode::FAILURE;
    }
    println!("rate-limit fields: {fields}");
    ExitCode::SUCCESS
}
