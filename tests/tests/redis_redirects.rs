//! `RedisStore` on a Redis Cluster whose slot moves between masters: the store's cluster
//! connection re-sends nothing itself, so the store follows `ASK` and `MOVED`, the replies that
//! prove the script did not run.

use std::num::NonZeroU32;

use integration_tests::{RedisCluster, redis_available};
use rate_limit_core::{Algorithm, Limit, Quota, Store};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrating_slot_is_followed_through_ask_then_moved() {
    if !redis_available() {
        return;
    }
    let cluster = RedisCluster::start();
    let store = cluster.connect_store().await;
    let limit = [Limit::new(Quota::per_hour(nz(10)), Algorithm::Gcra)];
    let state = store.state_key("mover", &limit[0]);
    let nodes = cluster.nodes();
    let from = cluster.node_of(&state);
    let to = (from + 1) % nodes.len();
    let slot = nodes[0].cli(&["CLUSTER", "KEYSLOT", &state]);
    let (from_id, to_id) = (
        nodes[from].cli(&["CLUSTER", "MYID"]),
        nodes[to].cli(&["CLUSTER", "MYID"]),
    );
    // Another client of another slot on the old master: the script is loaded there, not on
    // the new master, and the store has learnt the slot map.
    let other = (0..)
        .map(|i| format!("stay-{i}"))
        .find(|k| cluster.node_of(&store.state_key(k, &limit[0])) == from)
        .unwrap();
    assert!(
        store
            .check(&other, &limit, nz(1))
            .await
            .unwrap()
            .is_allowed()
    );

    // The slot starts migrating. The old master holds none of the client's keys, so it answers
    // ASK: the store sends the call to the new master after ASKING (loading the script there).
    let importing = ["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id];
    assert_eq!(nodes[to].cli(&importing), "OK");
    let migrating = ["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id];
    assert_eq!(nodes[from].cli(&migrating), "OK");
    let d = store.check("mover", &limit, nz(1)).await.unwrap();
    assert_eq!(d.remaining(), 9, "{d:?}");
    assert_eq!(nodes[from].cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot]), "0");

    // The migration ends: every master says the new one owns the slot. The store still maps
    // it to the old one, which answers MOVED: the call goes again, to the new master, where
    // the state the ASK created is.
    for node in nodes {
        assert_eq!(
            node.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]),
            "OK"
        );
    }
    let d = store.check("mover", &limit, nz(1)).await.unwrap();
    assert_eq!(d.remaining(), 8, "{d:?}");
    assert_eq!(nodes[to].cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot]), "1");
    assert_eq!(nodes[from].cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot]), "0");
    // Charged once per check: the call was sent again only where the script had not run.
    let d = store.peek("mover", &limit, nz(1)).await.unwrap();
    assert_eq!(d.remaining(), 8, "{d:?}");
}
