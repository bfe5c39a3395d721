//! [`RedisCluster`]: three masters on loopback, no replicas.

use std::thread;
use std::time::Duration;

use rate_limit_core::RedisStore;
use redis::cluster_async::ClusterConnection;

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
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
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

    /// The nodes, each a master.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
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
    pub async fn connect_store(&self) -> RedisStore<ClusterConnection> {
        let urls = self.urls();
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        RedisStore::connect_cluster(&urls)
            .await
            .expect("a store on the cluster")
    }
}
