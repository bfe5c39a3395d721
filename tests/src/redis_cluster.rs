//! [`RedisCluster`]: three masters on loopback, with or without a replica each.

use std::thread;
use std::time::Duration;

use rate_limit_core::{RebuildingClusterConnection, RedisStore};

use crate::redis_server::{RedisServer, cli};

/// A Redis Cluster of three masters, each a [`RedisServer`] started with
/// `--cluster-enabled yes`, joined by `redis-cli --cluster create`. Killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three nodes, creates the cluster and waits for `cluster_state:ok` on every node.
    ///
    /// # Panics
    ///
    /// If the cluster does not form within about ten seconds.
    pub fn start() -> Self {
        Self::start_with_node_timeout(Duration::from_secs(2))
    }

    /// As [`start`](Self::start), with `cluster-node-timeout` set to `timeout` (2 s for
    /// `start`): the time a node may stay silent before the others mark it failing. A test that
    /// pauses a master for longer, and wants the others to keep serving, raises it.
    ///
    /// # Panics
    ///
    /// If the cluster does not form within about ten seconds.
    pub fn start_with_node_timeout(timeout: Duration) -> Self {
        Self::create(timeout, 0)
    }

    /// Three masters with one replica each (six nodes), with `cluster-node-timeout` set to
    /// `timeout`: a replica takes over its master's slots about that long after the master
    /// stops answering. Waits until every replica has synced.
    ///
    /// # Panics
    ///
    /// If the cluster does not form, or a replica does not sync, within about ten seconds.
    pub fn start_with_replicas(timeout: Duration) -> Self {
        let cluster = Self::create(timeout, 1);
        for _ in 0..200 {
            let synced = (0..cluster.nodes.len())
                .filter(|&i| cluster.master_of(i).is_some())
                .all(|i| {
                    cluster.nodes[i]
                        .cli(&["INFO", "replication"])
                        .contains("master_link_status:up")
                });
            if synced && cluster.masters().len() == 3 {
                return cluster;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("the replicas did not sync");
    }

    fn create(timeout: Duration, replicas: usize) -> Self {
        let timeout = timeout.as_millis().to_string();
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &timeout,
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        let replicas = replicas.to_string();
        args.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        cli(nodes[0].port(), &args);
        let cluster = Self { nodes };
        for _ in 0..200 {
            if cluster.nodes.iter().all(|n| {
                n.cli(&["cluster", "info"])
                    .lines()
                    .any(|l| l.trim() == "cluster_state:ok")
            }) {
                return cluster;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("the cluster did not reach cluster_state:ok");
    }

    /// The nodes: each a master, or with [`start_with_replicas`](Self::start_with_replicas)
    /// three masters and three replicas (see [`masters`](Self::masters),
    /// [`master_of`](Self::master_of)).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Node `i`, to kill or pause it.
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// The indexes of the nodes that say they are masters now (`ROLE`).
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].cli(&["ROLE"]).lines().next().map(str::trim) == Some("master")
            })
            .collect()
    }

    /// The index of the master node `i` replicates, if it is a replica (`ROLE`).
    pub fn master_of(&self, i: usize) -> Option<usize> {
        let role = self.nodes[i].cli(&["ROLE"]);
        let mut lines = role.lines().map(str::trim);
        if lines.next() != Some("slave") {
            return None;
        }
        let port: u16 = lines.nth(1)?.parse().ok()?;
        self.nodes.iter().position(|n| n.port() == port)
    }

    /// The index in [`nodes`](Self::nodes) of the master serving `key`'s slot.
    ///
    /// # Panics
    ///
    /// If no node claims the slot.
    pub fn node_of(&self, key: &str) -> usize {
        let slot: u16 = self.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("a slot number");
        (0..self.nodes.len())
            .find(|&i| self.slots_of(i).iter().any(|r| r.contains(&slot)))
            .unwrap_or_else(|| panic!("no node serves slot {slot}"))
    }

    /// The slot ranges node `i` serves, from its own `CLUSTER NODES` line.
    fn slots_of(&self, i: usize) -> Vec<std::ops::RangeInclusive<u16>> {
        let nodes = self.nodes[i].cli(&["CLUSTER", "NODES"]);
        let Some(me) = nodes.lines().find(|l| l.contains("myself")) else {
            return Vec::new();
        };
        me.split_whitespace()
            .skip(8)
            .filter_map(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                Some(lo.parse().ok()?..=hi.parse().ok()?)
            })
            .collect()
    }

    /// Makes node `i` tell clients to reach it on `port` (`cluster-announce-port`), as a node
    /// behind a proxy or a NAT does, and waits until every node says so in `CLUSTER NODES`,
    /// so that a client learning the slots from any node goes through `port`.
    ///
    /// # Panics
    ///
    /// If the nodes do not agree within about ten seconds.
    pub fn announce_port(&self, i: usize, port: u16) {
        let port = port.to_string();
        self.nodes[i].cli(&["CONFIG", "SET", "cluster-announce-port", &port]);
        let id = self.nodes[i].cli(&["CLUSTER", "MYID"]);
        let wanted = format!("127.0.0.1:{port}@");
        for _ in 0..200 {
            if self.nodes.iter().all(|n| {
                n.cli(&["CLUSTER", "NODES"])
                    .lines()
                    .any(|l| l.starts_with(&id) && l.contains(&wanted))
            }) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("the nodes did not learn node {i}'s announced port {port}");
    }

    /// Sets `name` to `value` on every node (`CONFIG SET`), e.g.
    /// `cluster-require-full-coverage no`.
    ///
    /// # Panics
    ///
    /// If a node refuses it.
    pub fn config_set(&self, name: &str, value: &str) {
        for node in &self.nodes {
            let out = node.cli(&["CONFIG", "SET", name, value]);
            assert_eq!(out, "OK", "CONFIG SET {name} {value} on {}", node.port());
        }
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// A `RedisStore` on this cluster, connected through every node
    /// ([`RedisStore::connect_cluster`]).
    ///
    /// # Panics
    ///
    /// If no node can be reached.
    pub async fn connect_store(&self) -> RedisStore<RebuildingClusterConnection> {
        let urls = self.urls();
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        RedisStore::connect_cluster(&urls)
            .await
            .expect("a store on the cluster")
    }
}
