//! Throughput of `RedisStore` through one multiplexed connection. A measurement, not a test:
//! ignored by default. Run it with
//!
//! ```text
//! cargo test --release -p integration-tests --test redis_throughput -- --ignored --nocapture
//! ```

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use integration_tests::{RedisServer, redis_available};
use rate_limit_core::{Algorithm, Limit, Quota, RedisStore, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --ignored --nocapture"]
#[allow(clippy::disallowed_methods)] // wall time is what is measured
async fn checks_per_second_through_one_connection() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let store = Arc::new(RedisStore::builder(conn).build().unwrap());
    let limit = [Limit::new(
        Quota::per_second(NonZeroU32::new(1_000_000).unwrap()),
        Algorithm::Gcra,
    )];
    let (tasks, each) = (64, 500);
    for (label, keys) in [("one key", 1), ("10k keys", 10_000)] {
        let started = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for i in 0..each {
                        let key = format!("k{}", (t * each + i) % keys);
                        store.check(&key, &limit, NonZeroU32::MIN).await.unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let n = f64::from(tasks * each);
        println!(
            "{label}: {:.0} checks/s ({} checks, 64 tasks, {secs:.2}s)",
            n / secs,
            tasks * each
        );
    }
}
