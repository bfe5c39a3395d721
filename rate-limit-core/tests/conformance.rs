//! The conformance table against the in-memory store.
#![cfg(feature = "conformance")]

use std::num::NonZeroUsize;

use rate_limit_core::{ManualClock, MemoryStore, conformance};

#[tokio::test]
async fn memory_store_passes_the_table() {
    let clock = ManualClock::new(conformance::BASE);
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let steps = conformance::run(&store, &clock, "mem")
        .await
        .unwrap_or_else(|r| panic!("{r}"));
    assert!(steps >= 60, "only {steps} steps ran");
}

#[tokio::test]
async fn one_shard_store_passes_the_table() {
    let clock = ManualClock::new(conformance::BASE);
    let store = MemoryStore::builder()
        .shards(NonZeroUsize::MIN)
        .clock(clock.clone())
        .build();
    conformance::run(&store, &clock, "one")
        .await
        .unwrap_or_else(|r| panic!("{r}"));
}
