//! `RedisStore` on a three-master Redis Cluster started by the test.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use integration_tests::load::admitted_per_key;
use integration_tests::{RedisCluster, redis_available};
use rate_limit_core::{Algorithm, Limit, Quota, RedisStore, Store, StoreErrorKind};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_masters_and_each_is_exact() {
    if !redis_available() {
        return;
    }
    let cluster = RedisCluster::start();
    let store = Arc::new(cluster.connect_store().await);
    assert_eq!(store.backend(), "cluster");
    // Three limits, three algorithms, one script per check: no CROSSSLOT.
    let limits = [
        Limit::new(Quota::per_hour(nz(5)), Algorithm::Gcra),
        Limit::new(Quota::per_hour(nz(6)), Algorithm::SlidingWindowLog),
        Limit::new(Quota::per_hour(nz(7)), Algorithm::TokenBucket),
    ];
    let keys: Vec<String> = (0..60)
        .map(|i| format!("client-{i}"))
        .chain(["{", "}x{", "", "a\nb", "東京"].map(str::to_owned))
        .collect();
    // Four tasks per key, two checks each.
    let per_key = admitted_per_key(std::slice::from_ref(&store), &keys, &limits, 4, 2).await;
    for key in &keys {
        // 8 attempts against the tightest limit, 5 per hour: exactly 5.
        assert_eq!(per_key[key], 5, "{key:?}");
    }
    // Keys landed on more than one master, and each client's keys share one slot.
    let mut masters_used = 0;
    for node in cluster.nodes() {
        let n: u64 = node.cli(&["DBSIZE"]).parse().unwrap();
        masters_used += usize::from(n > 0);
    }
    assert!(masters_used > 1, "every key on one master");
    for key in &keys {
        let slots: HashSet<String> = limits
            .iter()
            .map(|l| cluster.nodes()[0].cli(&["CLUSTER", "KEYSLOT", &store.state_key(key, l)]))
            .collect();
        assert_eq!(slots.len(), 1, "{key:?}: {slots:?}");
    }
}

/// Whether `node` holds a rate-limit library.
fn has_library(node: &integration_tests::RedisServer) -> bool {
    node.cli(&["FUNCTION", "LIST"]).contains("ratelimit_")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_is_loaded_on_every_master_and_again_after_a_flush() {
    if !redis_available() {
        return;
    }
    let cluster = RedisCluster::start();
    let store = cluster.connect_store().await;
    let limit = [Limit::new(Quota::per_hour(nz(5)), Algorithm::Gcra)];
    // One key per master: each key's slot on its own node.
    let mut keys: Vec<Option<String>> = vec![None; cluster.nodes().len()];
    for i in 0.. {
        let key = format!("client-{i}");
        let node = cluster.node_of(&store.state_key(&key, &limit[0]));
        keys[node].get_or_insert(key);
        if keys.iter().all(Option::is_some) {
            break;
        }
    }
    let keys: Vec<String> = keys.into_iter().flatten().collect();
    // The first call loads the library on every master, not only on the one it went to.
    assert!(
        store
            .check(&keys[0], &limit, nz(1))
            .await
            .unwrap()
            .is_allowed()
    );
    for (i, node) in cluster.nodes().iter().enumerate() {
        assert!(has_library(node), "master {i} has no library");
    }
    for key in &keys {
        assert!(store.check(key, &limit, nz(1)).await.unwrap().is_allowed());
    }
    // Flushed everywhere: every master's keys are decided again, on the state they had.
    for node in cluster.nodes() {
        assert_eq!(node.cli(&["FUNCTION", "FLUSH"]), "OK");
    }
    for (i, key) in keys.iter().enumerate() {
        let d = store.check(key, &limit, nz(1)).await.unwrap();
        let charged_before = if i == 0 { 2 } else { 1 };
        assert_eq!(d.remaining(), 5 - charged_before - 1, "{key}");
    }
    for (i, node) in cluster.nodes().iter().enumerate() {
        assert!(
            has_library(node),
            "master {i} has no library after the flush"
        );
    }
}

/// A store built with `connect_cluster_lazy` while every node is down: it is built at once and
/// its checks fail with a `Connection` error; once the nodes are back (the same cluster, its
/// configuration kept in each node's `nodes.conf`; `CLUSTERDOWN` until they agree), it connects
/// and Redis decides, one charge per check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_cluster_store_decides_on_redis_once_the_cluster_is_up() {
    if !redis_available() {
        return;
    }
    let mut cluster = RedisCluster::start();
    let urls = cluster.urls();
    for i in 0..cluster.nodes().len() {
        cluster.node_mut(i).kill9();
    }
    let seeds: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store = RedisStore::connect_cluster_lazy(&seeds).unwrap();
    assert_eq!(store.backend(), "cluster");
    let limits = [Limit::new(Quota::per_hour(nz(5)), Algorithm::Gcra)];
    for _ in 0..3 {
        let err = store.check("later", &limits, nz(1)).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Connection, "{err}");
    }

    for i in 0..cluster.nodes().len() {
        cluster.node_mut(i).restart();
    }
    // The nodes find each other again from their `nodes.conf`; the store connects on a check
    // after that.
    let (mut decided, mut failed) = (None, 0);
    for _ in 0..150 {
        match store.check("later", &limits, nz(1)).await {
            Ok(d) => {
                decided = Some(d);
                break;
            }
            Err(e) => {
                failed += 1;
                assert!(
                    matches!(
                        e.kind(),
                        StoreErrorKind::Connection | StoreErrorKind::Backend
                    ),
                    "{e}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let decided = decided.expect("the store never decided on the cluster once it was up");
    assert!(decided.is_allowed());
    assert_eq!(decided.remaining(), 4, "charged once");
    // The state is in the cluster, charged once: a store connected the ordinary way sees it.
    let direct = cluster.connect_store().await;
    assert_eq!(
        direct
            .peek("later", &limits, nz(1))
            .await
            .unwrap()
            .remaining(),
        4
    );
    println!("lazy cluster: decided on Redis after {failed} failed checks once the nodes were up");
}
