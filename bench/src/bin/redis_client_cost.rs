//! Sends checks through a `RedisStore`, so that a profiler can count what the client side of
//! a check costs. `bench/redis_client_instructions.sh` runs it under
//! `valgrind --tool=callgrind` (instruction counts do not depend on machine load) twice, with N
//! and 2N checks, and divides the difference by N.
//!
//! ```text
//! cargo run --release -p bench --bin redis_client_cost -- redis://127.0.0.1:6390 10000 [lone|hot-32]
//! ```
//!
//! Shapes: `lone` (default) sends one check at a time, each a call of its own; `hot-32` sends
//! them from 32 tasks on one key, so that checks share calls (how many share one depends on
//! timing). One current-thread Tokio runtime; a GCRA quota that never denies.

use std::num::NonZeroU32;
use std::process::ExitCode;
use std::sync::Arc;

use rate_limit_core::{Algorithm, Limit, Quota, RedisStore, Store};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(count)) = (args.get(1), args.get(2).and_then(|n| n.parse().ok())) else {
        eprintln!("usage: redis_client_cost <redis-url> <checks> [lone|hot-32]");
        return ExitCode::from(2);
    };
    let count: usize = count;
    let shape = args.get(3).map_or("lone", String::as_str);
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
    let allowed = runtime.block_on(async {
        let store = match RedisStore::connect(url).await {
            Ok(store) => Arc::new(store),
            Err(e) => {
                eprintln!("cannot connect to {url}: {e}");
                return None;
            }
        };
        let quota = Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap_or(NonZeroU32::MAX));
        let limit = [Limit::new(quota, Algorithm::Gcra)];
        let one = NonZeroU32::MIN;
        match shape {
            "lone" => {
                let mut allowed = 0;
                for _ in 0..count {
                    if store.check("hot", &limit, one).await.ok()?.is_allowed() {
                        allowed += 1;
                    }
                }
                Some(allowed)
            }
            "hot-32" => {
                let tasks: Vec<_> = (0..32)
                    .map(|t| {
                        let store = Arc::clone(&store);
                        let n = count / 32 + usize::from(t < count % 32);
                        tokio::spawn(async move {
                            let mut allowed = 0;
                            for _ in 0..n {
                                if store.check("hot", &limit, one).await.ok()?.is_allowed() {
                                    allowed += 1;
                                }
                            }
                            Some(allowed)
                        })
                    })
                    .collect();
                let mut allowed = 0;
                for task in tasks {
                    allowed += task.await.ok()??;
                }
                Some(allowed)
            }
            other => {
                eprintln!("unknown shape {other:?}");
                None
            }
        }
    });
    match allowed {
        Some(n) if n == count => ExitCode::SUCCESS,
        Some(n) => {
            eprintln!("{n} of {count} checks allowed");
            ExitCode::FAILURE
        }
        None => ExitCode::FAILURE,
    }
}
