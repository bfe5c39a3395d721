//! End-to-end tests across the crates; see `tests/tests/`.
//!
//! Test support lives here: [`RedisServer`] starts a throwaway `redis-server` on a free loopback
//! port (which a test may kill, pause, resume and restart), also over TLS with [`TestCerts`],
//! and [`RedisCluster`] a three-master Redis Cluster, [`RedisSentinels`] a master and replica
//! under three sentinels. Neither touches a server it did not
//! start. [`FaultProxy`] sits between a client and a server and can delay or stall replies,
//! reset connections, and drop the reply of one request. [`failover`] holds the load and the
//! figures the failover tests share; [`Relay`] wraps a Redis connection in a type of its own.
//!
//! Tests that need Redis call [`redis_available`] first: when `redis-server` is not on the
//! `PATH` they print `SKIPPED: redis-server not found` and return, unless `CI=true`, where a
//! missing server fails the test.

pub mod failover;
mod fault_proxy;
pub mod load;
mod netns;
mod redis_cluster;
mod redis_sentinel;
mod redis_server;
mod relay;
pub mod replay;
mod tls;

pub use fault_proxy::{Fault, FaultProxy};
pub use netns::PartitionedRedis;
pub use redis_cluster::RedisCluster;
pub use redis_sentinel::{MASTER_NAME, RedisSentinels};
pub use redis_server::{RedisServer, redis_available};
pub use relay::{Relay, SendFn};
pub use tls::TestCerts;
