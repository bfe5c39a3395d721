//! [`RedisSentinels`]: a master, one replica and three sentinels, all on free loopback ports.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::RedisServer;
use crate::redis_server::{cli, free_port, temp_dir, wait_for_ping};

/// The service name the sentinels monitor.
pub const MASTER_NAME: &str = "rlmaster";

/// One master and its replica (two [`RedisServer`]s) watched by three sentinels
/// (`redis-server <file> --sentinel`, quorum 2) that fail over quickly: the master is deemed
/// down after 400 ms without an answer, and a failover times out after 2 s. Everything is
/// killed, and its directories removed, on drop.
#[derive(Debug)]
pub struct RedisSentinels {
    servers: Vec<RedisServer>,
    sentinels: Vec<Sentinel>,
}

#[derive(Debug)]
struct Sentinel {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisSentinels {
    /// Starts the master, the replica (waiting until it has synced), then the sentinels, and
    /// waits until every sentinel knows the replica and the two other sentinels, so that a
    /// failover can start at once.
    ///
    /// # Panics
    ///
    /// If a process does not start or the sentinels do not agree within about 15 seconds.
    pub fn start() -> Self {
        let master = RedisServer::start();
        let port = master.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
        wait_until("the replica to sync", || {
            replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
        });
        let sentinels = (0..3).map(|_| Sentinel::start(master.port())).collect();
        let set = Self {
            servers: vec![master, replica],
            sentinels,
        };
        wait_until("the sentinels to know each other and the replica", || {
            set.sentinels.iter().all(|s| {
                let info = s.master_info();
                field(&info, "num-slaves") == Some("1")
                    && field(&info, "num-other-sentinels") == Some("2")
            })
        });
        set
    }

    /// The two data servers: `0` the first master, `1` its replica.
    pub fn server(&self, i: usize) -> &RedisServer {
        &self.servers[i]
    }

    /// As [`server`](Self::server), to kill or pause it.
    pub fn server_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.servers[i]
    }

    /// `redis://127.0.0.1:<port>` of every sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect()
    }

    /// The master's port as sentinel `i` names it now (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    pub fn master_port(&self, i: usize) -> Option<u16> {
        let out = cli(
            self.sentinels[i].port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
        );
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// Runs `redis-cli` against sentinel `i` and returns its output, trimmed.
    pub fn sentinel_cli(&self, i: usize, args: &[&str]) -> String {
        cli(self.sentinels[i].port, args)
    }

    /// Waits until every sentinel names server `i` as the master and that server says it is
    /// one; `false` after `timeout`.
    pub fn wait_for_master(&self, i: usize, timeout: Duration) -> bool {
        let port = self.servers[i].port();
        poll(timeout, || {
            (0..self.sentinels.len()).all(|s| self.master_port(s) == Some(port))
                && self.servers[i]
                    .cli(&["ROLE"])
                    .lines()
                    .next()
                    .is_some_and(|l| l.trim() == "master")
        })
    }
}

impl Sentinel {
    fn start(master_port: u16) -> Self {
        for _ in 0..8 {
            let port = free_port();
            let mut sentinel = Self {
                port,
                dir: temp_dir(port),
                child: None,
            };
            if sentinel.spawn(master_port) {
                return sentinel;
            }
        }
        panic!("could not start a sentinel on any of 8 free ports");
    }

    fn spawn(&mut self, master_port: u16) -> bool {
        if std::fs::create_dir_all(&self.dir).is_err() {
            return false;
        }
        // Sentinel rewrites its file (what it learns), so it must be its own and writable.
        let file = self.dir.join("sentinel.conf");
        let conf = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} 400\n\
             sentinel failover-timeout {MASTER_NAME} 2000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            port = self.port,
            dir = self.dir.display(),
        );
        if std::fs::write(&file, conf).is_err() {
            return false;
        }
        let log = std::fs::File::create(self.dir.join("sentinel.log")).ok();
        let child = Command::new("redis-server")
            .arg(&file)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(log.map_or_else(Stdio::null, Stdio::from))
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            return false;
        };
        self.child = Some(child);
        if wait_for_ping(self.port, 50) {
            return true;
        }
        self.kill();
        false
    }

    /// `SENTINEL MASTER <name>`: field and value lines in turn.
    fn master_info(&self) -> String {
        cli(self.port, &["SENTINEL", "MASTER", MASTER_NAME])
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value after the line `name` in `redis-cli`'s output of a map.
fn field<'a>(out: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = out.lines().map(str::trim);
    lines.by_ref().find(|l| *l == name)?;
    lines.next()
}

fn poll(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let step = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    while waited < timeout {
        if done() {
            return true;
        }
        thread::sleep(step);
        waited += step;
    }
    done()
}

fn wait_until(what: &str, done: impl FnMut() -> bool) {
    assert!(
        poll(Duration::from_secs(15), done),
        "timed out waiting for {what}"
    );
}
