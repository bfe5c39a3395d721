//! Sends checks through `RedisStore::check`, the public API, so that a profiler of
//! redis-server can count what a decision costs the server whatever the script's arguments
//! are. `bench/redis_instructions.sh` runs redis-server under `valgrind --tool=callgrind` and
//! this program beside it.
//!
//! ```text
//! cargo run --release -p bench --bin redis_server_cost -- redis://127.0.0.1:6390 SHAPE ALGORITHM CHECKS
//! ```
//!
//! Shapes: `lone` (one check at a time, each a call of its own), `hot-32` (rounds of 32
//! concurrent checks of one key), `keys-32` (rounds of 32 concurrent checks of 32 keys) and
//! `new-32` (as `keys-32`, each round's 32 keys new to the server: clients whose state had
//! expired); `hot-N`, `keys-N` and `new-N` are the same with N (1 to 32) checks a round. A
//! round's checks are queued before its flush task runs (one current-thread runtime), so
//! they go in one call. `ALGORITHM` is an algorithm's name; its limit never denies (a million
//! per second: an emission interval of one microsecond, whole as most quotas' are), except `sliding_window_log-denied`: a sliding window log of 1,000 per hour,
//! filled before the measured checks, so that every measured check is denied on a full log.
//!
//! The program warms up (the first call loads the library, and the state exists), prints
//! `ready`, waits for a line on its standard input, sends `CHECKS` checks, prints `done` and the
//! number allowed, and waits for another line before it exits: the script zeroes the server's
//! counters on `ready` and reads them on `done`. The deny cache is off, so every denial is
//! decided by the server.

use std::io::BufRead;
use std::num::{NonZeroU32, NonZeroUsize};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rate_limit_core::{Algorithm, Limit, Quota, RedisStore, Store};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Checks per round of the concurrent shapes.
const ROUND: usize = 32;

/// Entries in the full sliding window log.
const FULL_LOG: u32 = 1_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(shape), Some(algorithm), Some(count)) = (
        args.get(1),
        args.get(2),
        args.get(3),
        args.get(4).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!(
            "usage: redis_server_cost <redis-url> <lone|hot-32|keys-32|new-32> <algorithm> <checks>"
        );
        return ExitCode::from(2);
    };
    let (limit, denied) = match limit_of(algorithm) {
        Some(l) => l,
        None => {
            eprintln!("unknown algorithm {algorithm:?}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(url, shape, [limit], denied, count));
    match result {
        Ok(allowed) => {
            let want = if denied { 0 } else { count };
            if allowed == want {
                ExitCode::SUCCESS
            } else {
                eprintln!("{allowed} of {count} checks allowed, {want} expected");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The limit measured for `name`, and whether its checks are all denied.
fn limit_of(name: &str) -> Option<(Limit, bool)> {
    let million = NonZeroU32::new(1_000_000)?;
    if name == "sliding_window_log-denied" {
        let quota = Quota::per_hour(NonZeroU32::new(FULL_LOG)?);
        return Some((Limit::new(quota, Algorithm::SlidingWindowLog), true));
    }
    let algorithm: Algorithm = name.parse().ok()?;
    Some((Limit::new(Quota::per_second(million), algorithm), false))
}

async fn run(
    url: &str,
    shape: &str,
    limit: [Limit; 1],
    denied: bool,
    count: usize,
) -> Result<usize, String> {
    let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
    // Patient timeouts: a server under callgrind, on a loaded machine, can take seconds to load
    // the library, far beyond the redis crate's default of half a second.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(60)))
        .set_response_timeout(Some(Duration::from_secs(600)));
    let conn = ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let store = RedisStore::builder(conn)
        .deny_cache(None)
        .max_batch(NonZeroUsize::new(ROUND).ok_or("no batch")?)
        .response_timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| e.to_string())?;
    let store = Arc::new(store);
    // A shape and its width: `lone`, or `hot-N`, `keys-N`, `new-N` (N checks per round).
    let (kind, width) = match shape.split_once('-') {
        Some((kind, n)) => match n.parse::<usize>() {
            Ok(n) if (1..=ROUND).contains(&n) => (kind, n),
            _ => return Err(format!("shape {shape:?}: a width of 1 to {ROUND}")),
        },
        None => (shape, 1),
    };
    let keys: Vec<String> = match kind {
        "lone" => vec!["lone".to_owned()],
        "hot" => vec!["hot".to_owned(); width],
        "keys" | "new" => (0..width).map(|i| format!("key-{i}")).collect(),
        other => return Err(format!("unknown shape {other:?}")),
    };
    // `new-N`: every round's keys are new to the server, as a client's are after its state
    // expired.
    let fresh = kind == "new";
    // Warm-up: the library loaded, every key's state present (a full log when denied: one
    // call per admission, each at a later microsecond of the server's clock, is an entry).
    let fill = if denied { FULL_LOG as usize } else { 2 };
    let mut distinct = keys.clone();
    distinct.dedup();
    for key in &distinct {
        for _ in 0..fill {
            store
                .check(key, &limit, NonZeroU32::MIN)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    if denied {
        for key in &distinct {
            let d = store
                .check(key, &limit, NonZeroU32::MIN)
                .await
                .map_err(|e| e.to_string())?;
            if d.is_allowed() {
                return Err("the full log still admits".to_owned());
            }
        }
    }
    println!("ready");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let mut allowed = 0;
    let mut left = count;
    let mut round = 0;
    while left > 0 {
        round += 1;
        let n = keys.len().min(left);
        left -= n;
        // Spawned before any is awaited: on this one thread, all of them queue before the
        // flush that the first one starts runs.
        let tasks: Vec<_> = keys[..n]
            .iter()
            .map(|key| {
                let key = if fresh {
                    format!("{key}-{round}")
                } else {
                    key.clone()
                };
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.check(&key, &limit, NonZeroU32::MIN).await })
            })
            .collect();
        for task in tasks {
            let decision = task
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            allowed += usize::from(decision.is_allowed());
        }
    }
    println!("done {allowed}");
    line.clear();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok(allowed)
}
