//! The conformance table against `RedisStore` in client-clock mode: the Lua twins make exactly
//! the decisions of the Rust transitions.

use integration_tests::{RedisServer, redis_available};
use rate_limit_core::{ManualClock, RedisStore, conformance};
use redis::aio::ConnectionManager;

#[tokio::test]
async fn redis_store_passes_the_table_over_a_multiplexed_connection() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let clock = ManualClock::new(conformance::BASE);
    let store = RedisStore::builder(conn)
        .clock(clock.clone())
        .build()
        .unwrap();
    let steps = conformance::run(&store, &clock, "mux")
        .await
        .unwrap_or_else(|r| panic!("{r}"));
    assert!(steps >= 60, "only {steps} steps ran");
}

#[tokio::test]
async fn redis_store_passes_the_table_through_a_connection_manager() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let conn = ConnectionManager::new(client).await.unwrap();
    let clock = ManualClock::new(conformance::BASE);
    let store = RedisStore::builder(conn)
        .prefix("cm")
        .clock(clock.clone())
        .build()
        .unwrap();
    conformance::run(&store, &clock, "cm")
        .await
        .unwrap_or_else(|r| panic!("{r}"));
}
