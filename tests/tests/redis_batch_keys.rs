//! Calls that carry many checks of several keys, as the script decides them: read at once,
//! decided in turn (a key's checks in a row together), written once. Compared check by check
//! with the in-memory transitions, and on the server's clock with the quota each key admits.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use integration_tests::replay::{Rng, snapshot_micros};
use integration_tests::{RedisServer, redis_available};
use rate_limit_core::{
    Algorithm, Decision, Limit, ManualClock, MemoryStore, Quota, RedisStore, Store, StoreError,
    StoreErrorKind, conformance,
};
use redis::aio::MultiplexedConnection;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

async fn mux(server: &RedisServer) -> MultiplexedConnection {
    let client = redis::Client::open(server.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

fn quota(limit: u32, period_ms: u64, burst: u32) -> Quota {
    Quota::with_period(nz(limit), Duration::from_millis(period_ms))
        .unwrap()
        .burst(nz(burst))
        .unwrap()
}

/// One check of a round: its key, limits, cost, and whether it is a peek.
type Ask = (String, Vec<Limit>, NonZeroU32, bool);

/// Spawns every check of `asks` before any runs (one thread: they queue in this order and share
/// the calls that follow), and returns their answers in that order.
async fn at_once<S: Store + 'static>(store: &Arc<S>, asks: &[Ask]) -> Vec<Decision> {
    results_at_once(store, asks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn checks_of_many_keys_in_one_call_decide_as_the_transitions_in_turn() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let clock = ManualClock::new(conformance::BASE);
    let redis = Arc::new(
        RedisStore::builder(mux(&server).await)
            .clock(clock.clone())
            .deny_cache(None)
            .build()
            .unwrap(),
    );
    let memory = Arc::new(MemoryStore::builder().clock(clock.clone()).build());
    // Intervals of whole microseconds (500 ms, 125 ms) and not (333,333.334 µs, 1.001 µs).
    let quotas = [
        quota(8, 4_000, 3),
        quota(8, 1_000, 8),
        quota(3, 1_000, 3),
        quota(999_999, 1_000, 999_999),
    ];
    let mut limit_sets: Vec<Vec<Limit>> = Vec::new();
    for alg in Algorithm::ALL {
        if alg != Algorithm::SlidingWindowLog {
            for q in quotas {
                limit_sets.push(vec![Limit::new(q, alg)]);
            }
        }
    }
    limit_sets.push(vec![
        Limit::new(quotas[0], Algorithm::Gcra),
        Limit::new(quotas[1], Algorithm::FixedWindow),
    ]);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let (mut checks, fcalls) = (0, server.calls("fcall"));
    for round in 0..150 {
        clock.advance(Duration::from_micros(rng.below(600_000)));
        // Some 40 checks of 12 keys, each key under one limit set: runs of one key in a row,
        // keys mixed, costs up to above the capacity, some peeks.
        let mut asks: Vec<Ask> = Vec::new();
        while asks.len() < 40 {
            let k = rng.below(12) as usize;
            let limits = limit_sets[(k * 5 + round / 10) % limit_sets.len()].clone();
            let capacity = limits[0].quota().burst_size().get();
            let cost = match rng.below(10) {
                0 => capacity + 1,
                1..=3 => 1 + u32::try_from(rng.below(u64::from(capacity))).unwrap(),
                _ => 1,
            };
            let peek = rng.below(8) == 0;
            for _ in 0..=rng.below(4) {
                asks.push((format!("keys-{k}"), limits.clone(), nz(cost), peek));
            }
        }
        let got = at_once(&redis, &asks).await;
        assert_eq!(got.len(), asks.len());
        checks += asks.len();
        let mut want = Vec::new();
        for (key, limits, cost, peek) in &asks {
            want.push(if *peek {
                memory.peek(key, limits, *cost).await.unwrap()
            } else {
                memory.check(key, limits, *cost).await.unwrap()
            });
        }
        for (i, ((g, w), ask)) in got.iter().zip(&want).zip(&asks).enumerate() {
            assert_eq!(
                (g.is_allowed(), snapshot_micros(g)),
                (w.is_allowed(), snapshot_micros(w)),
                "round {round}, check {i}: {ask:?}"
            );
        }
    }
    // Many keys' checks shared calls: a round's checks queue before its first call ends.
    let fcalls = server.calls("fcall") - fcalls;
    assert!(
        fcalls * 4 <= checks as u64,
        "{fcalls} calls for {checks} checks"
    );
}

#[tokio::test]
async fn keys_read_together_on_the_server_clock_admit_exactly_their_quota() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let redis = Arc::new(
        RedisStore::builder(mux(&server).await)
            .deny_cache(None)
            .build()
            .unwrap(),
    );
    let day = Duration::from_secs(86_400);
    for alg in Algorithm::ALL {
        if alg == Algorithm::SlidingWindowLog {
            continue;
        }
        let limits = vec![Limit::new(Quota::with_period(nz(5), day).unwrap(), alg)];
        // A key holding a list where a state belongs, and a text that is no state: each fails
        // its own check in calls of keys that exist and keys that do not.
        server.cli(&["LPUSH", &redis.state_key("a-list", &limits[0]), "x"]);
        server.cli(&["SET", &redis.state_key("a-text", &limits[0]), "not a state"]);
        let (mut admitted, mut hot) = (vec![0; 16], 0);
        for round in 0..8 {
            let mut asks: Vec<Ask> = (0..16)
                .map(|k| (format!("{alg}-{k}"), limits.clone(), nz(1), false))
                .collect();
            // A hot key too, three times in a row, and the two bad keys in the middle.
            for _ in 0..3 {
                asks.push((format!("{alg}-hot"), limits.clone(), nz(1), false));
            }
            if round % 2 == 1 {
                asks.insert(5, ("a-list".to_owned(), limits.clone(), nz(1), false));
                asks.insert(9, ("a-text".to_owned(), limits.clone(), nz(1), false));
            }
            let handles: Vec<_> = asks
                .iter()
                .cloned()
                .map(|(key, limits, cost, _)| {
                    let store = Arc::clone(&redis);
                    tokio::spawn(
                        async move { (key.clone(), store.check(&key, &limits, cost).await) },
                    )
                })
                .collect();
            for h in handles {
                let (key, got): (String, Result<Decision, StoreError>) = h.await.unwrap();
                match key.as_str() {
                    "a-list" | "a-text" => {
                        let err = got.unwrap_err();
                        assert_eq!(err.kind(), StoreErrorKind::Backend, "{alg} {key}: {err}");
                    }
                    _ => {
                        let d = got.unwrap();
                        match key.rsplit('-').next().and_then(|k| k.parse::<usize>().ok()) {
                            Some(k) => admitted[k] += usize::from(d.is_allowed()),
                            None => hot += usize::from(d.is_allowed()),
                        }
                    }
                }
            }
        }
        assert_eq!(admitted, vec![5; 16], "{alg}");
        assert_eq!(hot, 5, "{alg}: the hot key's 24 checks");
        // The hot key's 24 checks admitted its 5; the states live until they are full again (a
        // sliding window's count weighs on the next window: two periods at most), and the bad
        // keys were not written over.
        let d = redis
            .peek(&format!("{alg}-hot"), &limits, nz(1))
            .await
            .unwrap();
        assert!(!d.is_allowed(), "{alg}: {d:?}");
        let pttl: i64 = server
            .cli(&["PTTL", &redis.state_key(&format!("{alg}-3"), &limits[0])])
            .parse()
            .unwrap();
        assert!(
            pttl > 0 && pttl <= 2 * 86_400_000 + 1_000,
            "{alg}: pttl {pttl}"
        );
        assert_eq!(
            server.cli(&["TYPE", &redis.state_key("a-list", &limits[0])]),
            "list"
        );
        assert_eq!(
            server.cli(&["GET", &redis.state_key("a-text", &limits[0])]),
            "not a state"
        );
    }
}

/// As [`at_once`], each answer or error.
async fn results_at_once<S: Store + 'static>(
    store: &Arc<S>,
    asks: &[Ask],
) -> Vec<Result<Decision, StoreError>> {
    let handles: Vec<_> = asks
        .iter()
        .cloned()
        .map(|(key, limits, cost, peek)| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                if peek {
                    store.peek(&key, &limits, cost).await
                } else {
                    store.check(&key, &limits, cost).await
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

// Calls whose checks differ only in their keys (one limit, one cost, once each: many clients
// under one quota) take the script's lean path when the limit is GCRA with an interval of
// whole microseconds. Each round is such a call: keys that come twice (not in a row), keys
// new, charged, full again or denied, costs above the capacity, peeks, and keys that hold a
// list or a text that is no state.
#[tokio::test]
async fn calls_of_one_quota_over_many_keys_decide_as_the_transitions_in_turn() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let clock = ManualClock::new(conformance::BASE);
    let redis = Arc::new(
        RedisStore::builder(mux(&server).await)
            .clock(clock.clone())
            .deny_cache(None)
            .build()
            .unwrap(),
    );
    let memory = Arc::new(MemoryStore::builder().clock(clock.clone()).build());
    // Every algorithm of a text state (GCRA's lean path is its own), with intervals of 500 ms
    // and 125 ms (whole microseconds) and 333,333.334 µs (not).
    let mut limit_sets = Vec::new();
    for alg in Algorithm::ALL {
        if alg != Algorithm::SlidingWindowLog {
            for q in [quota(8, 4_000, 3), quota(8, 1_000, 8), quota(3, 1_000, 3)] {
                limit_sets.push(vec![Limit::new(q, alg)]);
            }
        }
    }
    for limits in &limit_sets {
        server.cli(&["LPUSH", &redis.state_key("a-list", &limits[0]), "x"]);
        server.cli(&["SET", &redis.state_key("a-text", &limits[0]), "not a state"]);
        // Twelve bytes: the length of a state of one integer, which only GCRA's is. Of the
        // others' limits no state, whose check fails alone (the keys before it in the call are
        // decided and written, the call does not raise).
        if limits[0].algorithm() != Algorithm::Gcra {
            server.cli(&[
                "SET",
                &redis.state_key("a-short", &limits[0]),
                "abcdefghijkl",
            ]);
        }
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut checks, mut denied, fcalls) = (0, 0, server.calls("fcall"));
    for round in 0..600 {
        clock.advance(Duration::from_micros(rng.below(400_000)));
        let limits = limit_sets[round % limit_sets.len()].clone();
        let capacity = limits[0].quota().burst_size().get();
        let cost = match rng.below(12) {
            0 => capacity + 1,
            1 | 2 => 1 + u32::try_from(rng.below(u64::from(capacity))).unwrap(),
            _ => 1,
        };
        let peek = rng.below(10) == 0;
        // Some 24 checks of 16 keys: a key's checks never in a row (they would be sent once,
        // with a count), so some keys come twice in the call.
        let mut asks: Vec<Ask> = Vec::new();
        while asks.len() < 24 {
            let key = format!("many-{}", rng.below(16));
            if asks.last().is_some_and(|(k, ..)| *k == key) {
                continue;
            }
            asks.push((key, limits.clone(), nz(cost), peek));
        }
        if round % 7 == 3 {
            asks.insert(4, ("a-list".to_owned(), limits.clone(), nz(cost), peek));
            asks.insert(11, ("a-text".to_owned(), limits.clone(), nz(cost), peek));
        }
        if round % 3 == 1 && limits[0].algorithm() != Algorithm::Gcra {
            asks.insert(17, ("a-short".to_owned(), limits.clone(), nz(cost), peek));
        }
        let got = results_at_once(&redis, &asks).await;
        checks += asks.len();
        for (i, (got, ask)) in got.into_iter().zip(&asks).enumerate() {
            let (key, limits, cost, peek) = ask;
            if key.starts_with("a-") {
                let err = got.unwrap_err();
                assert_eq!(err.kind(), StoreErrorKind::Backend, "round {round}: {err}");
                continue;
            }
            let want = if *peek {
                memory.peek(key, limits, *cost).await.unwrap()
            } else {
                memory.check(key, limits, *cost).await.unwrap()
            };
            let got = got.unwrap();
            denied += usize::from(!got.is_allowed());
            assert_eq!(
                (got.is_allowed(), snapshot_micros(&got)),
                (want.is_allowed(), snapshot_micros(&want)),
                "round {round}, check {i}: {ask:?}"
            );
        }
    }
    // Denials came, and checks shared calls.
    assert!(denied > checks / 10, "{denied} of {checks} denied");
    let fcalls = server.calls("fcall") - fcalls;
    assert!(
        fcalls * 4 <= checks as u64,
        "{fcalls} calls for {checks} checks"
    );
    // A state full again goes when a call finds it (here peeks, which charge nothing).
    for alg in Algorithm::ALL {
        if alg == Algorithm::SlidingWindowLog {
            continue;
        }
        let hourly = vec![Limit::new(quota(2, 3_600_000, 2), alg)];
        let asks = |peek| -> Vec<Ask> {
            (0..16)
                .map(|k| (format!("many-{k}"), hourly.clone(), nz(1), peek))
                .collect()
        };
        let state_keys: Vec<String> = (0..16)
            .map(|k| redis.state_key(&format!("many-{k}"), &hourly[0]))
            .collect();
        let exist = || {
            let mut args = vec!["EXISTS"];
            args.extend(state_keys.iter().map(String::as_str));
            server.cli(&args)
        };
        assert!(
            at_once(&redis, &asks(false))
                .await
                .iter()
                .all(Decision::is_allowed)
        );
        assert_eq!(exist(), "16", "{alg}");
        clock.advance(Duration::from_secs(7_200));
        let peeks = at_once(&redis, &asks(true)).await;
        assert!(
            peeks.iter().all(|d| d.snapshots()[0].remaining() == 2),
            "{alg}: {peeks:?}"
        );
        assert_eq!(exist(), "0", "{alg}");
    }
    // The keys of other types were left as they were.
    for limits in &limit_sets {
        assert_eq!(
            server.cli(&["TYPE", &redis.state_key("a-list", &limits[0])]),
            "list"
        );
        assert_eq!(
            server.cli(&["GET", &redis.state_key("a-text", &limits[0])]),
            "not a state"
        );
    }
}

// The lean path on the server's clock: keys that come twice in a call, new keys among kept
// ones, a list and a text in their midst: each key admits exactly its quota, its state lives
// until it is full again (rounded up to the second), and the other keys are left alone.
#[tokio::test]
async fn calls_of_one_quota_over_many_keys_admit_exactly_on_the_server_clock() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let redis = Arc::new(
        RedisStore::builder(mux(&server).await)
            .deny_cache(None)
            .build()
            .unwrap(),
    );
    // 5 a day: an interval of 17,280 s, whole microseconds; every algorithm of a text state.
    let day = Duration::from_secs(86_400);
    // The general path asks EXISTS of the keys MGET found nothing at; the lean one never does.
    let exists = server.calls("exists");
    for alg in Algorithm::ALL {
        if alg == Algorithm::SlidingWindowLog {
            continue;
        }
        let limits = vec![Limit::new(Quota::with_period(nz(5), day).unwrap(), alg)];
        server.cli(&["LPUSH", &redis.state_key("a-list", &limits[0]), "x"]);
        server.cli(&["SET", &redis.state_key("a-text", &limits[0]), "not a state"]);
        let mut admitted = vec![0; 24];
        for round in 0..6 {
            // Keys 0..16 twice each (0..16 then 0..16), and from round 2 on keys 16..24 twice
            // each too, new to Redis in the midst of kept keys.
            let mut keys: Vec<usize> = (0..16).chain(0..16).collect();
            if round >= 2 {
                keys.extend((16..24).chain(16..24));
            }
            let mut asks: Vec<Ask> = keys
                .iter()
                .map(|k| (format!("kept-{k}"), limits.clone(), nz(1), false))
                .collect();
            asks.insert(3, ("a-list".to_owned(), limits.clone(), nz(1), false));
            asks.insert(20, ("a-text".to_owned(), limits.clone(), nz(1), false));
            let got = results_at_once(&redis, &asks).await;
            for (got, (key, ..)) in got.into_iter().zip(&asks) {
                match key.strip_prefix("kept-") {
                    Some(k) => {
                        let d = got.unwrap();
                        admitted[k.parse::<usize>().unwrap()] += usize::from(d.is_allowed());
                    }
                    None => {
                        let err = got.unwrap_err();
                        assert_eq!(err.kind(), StoreErrorKind::Backend, "{alg} {key}");
                    }
                }
            }
        }
        // Keys 0..16: 12 checks each; keys 16..24: 8 each: the quota of each.
        let want = vec![5; 24];
        assert_eq!(admitted, want, "{alg}");
        for k in [0, 20] {
            let pttl: i64 = server
                .cli(&["PTTL", &redis.state_key(&format!("kept-{k}"), &limits[0])])
                .parse()
                .unwrap();
            // The buckets are full again after as many intervals as they admitted; a window's
            // count lives to its window's end (the sliding window's weighs on the next).
            let (low, high) = match alg {
                Algorithm::Gcra | Algorithm::TokenBucket | Algorithm::LeakyBucket => {
                    let full_in_ms = 5 * 17_280_000;
                    (full_in_ms - 60_000, full_in_ms + 1_000)
                }
                _ => (1, 2 * 86_400_000 + 1_000),
            };
            assert!(pttl >= low && pttl <= high, "{alg} kept-{k}: pttl {pttl}");
        }
        assert_eq!(
            server.cli(&["TYPE", &redis.state_key("a-list", &limits[0])]),
            "list"
        );
        assert_eq!(
            server.cli(&["GET", &redis.state_key("a-text", &limits[0])]),
            "not a state"
        );
    }
    assert_eq!(
        server.calls("exists"),
        exists,
        "the calls took the lean path"
    );
}
