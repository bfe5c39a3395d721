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
//!
//! Three floors, for what a connection costs apart from the store: `get-manager` sends `GET` of
//! a 24-byte value (the size of a lone check's reply) one at a time through the `redis` crate's
//! `ConnectionManager`, `get-own` through the store's `RedisConnection` (what
//! `RedisStore::connect` builds), and `get-raw` writes the same command to a Tokio `TcpStream`
//! and reads the reply itself: no task, no channel, no parser beyond finding the reply's end.

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
    if let Some(floor) = shape.strip_prefix("get-") {
        return match runtime.block_on(get_floor(url, count, floor)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{shape}: {e}");
                ExitCode::FAILURE
            }
        };
    }
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

/// `count` `GET`s of a 24-byte value, one at a time, through `how` (`manager`, `own` or `raw`).
async fn get_floor(url: &str, count: usize, how: &str) -> Result<(), Box<dyn std::error::Error>> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(None);
    let mut manager = redis::aio::ConnectionManager::new_with_config(client, config).await?;
    let value = [7u8; 24];
    let () = redis::cmd("SET")
        .arg("floor")
        .arg(&value[..])
        .query_async(&mut manager)
        .await?;
    match how {
        "manager" => {
            for _ in 0..count {
                let got: Vec<u8> = redis::cmd("GET")
                    .arg("floor")
                    .query_async(&mut manager)
                    .await?;
                if got != value {
                    return Err("wrong value".into());
                }
            }
        }
        // The store's own connection exists from 6299cb3 on: a build of an earlier revision
        // (`REV=` in bench/redis_client_instructions.sh) has no `own-connection` feature.
        #[cfg(feature = "own-connection")]
        "own" => {
            let mut own = rate_limit_core::RedisConnection::connect(url).await?;
            for _ in 0..count {
                let got: Vec<u8> = redis::cmd("GET").arg("floor").query_async(&mut own).await?;
                if got != value {
                    return Err("wrong value".into());
                }
            }
        }
        #[cfg(not(feature = "own-connection"))]
        "own" => return Err("get-own: this revision has no RedisConnection".into()),
        "raw" => {
            let addr = url.trim_start_matches("redis://");
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let command = b"*2\r\n$3\r\nGET\r\n$5\r\nfloor\r\n";
            // `$24\r\n`, the value, `\r\n`.
            let mut reply = [0u8; 31];
            for _ in 0..count {
                // A command this small fits the socket's buffer whole.
                if stream.try_write(command)? != command.len() {
                    return Err("short write".into());
                }
                let mut read = 0;
                while read < reply.len() {
                    stream.readable().await?;
                    match stream.try_read(&mut reply[read..]) {
                        Ok(0) => return Err("closed".into()),
                        Ok(n) => read += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                if reply[5..29] != value {
                    return Err("wrong value".into());
                }
            }
        }
        other => return Err(format!("unknown floor {other:?}").into()),
    }
    Ok(())
}
