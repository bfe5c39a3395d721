//! [`RedisServer`]: a throwaway `redis-server` on a free loopback port.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

/// Whether `redis-server` can run here. When it cannot, prints `SKIPPED: redis-server not found`
/// so the skip is visible, and returns `false`.
///
/// # Panics
///
/// When `redis-server` is missing and the environment has `CI=true`: CI must run these tests.
pub fn redis_available() -> bool {
    tool_available("redis-server", "--version")
}

/// Whether `program arg` runs and succeeds here. When it does not, prints
/// `SKIPPED: <program> not found` so the skip is visible, and returns `false`.
///
/// # Panics
///
/// When the program is missing and the environment has `CI=true`: CI must run every test.
pub(crate) fn tool_available(program: &str, arg: &str) -> bool {
    let found = Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{program} not found on the PATH, and CI=true: install {program}");
        }
        eprintln!("SKIPPED: {program} not found");
    }
    found
}

/// A `redis-server` process that this test started, on `127.0.0.1:port`, with no persistence
/// and a temporary working directory. Killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// If no server could be started after a few ports were tried.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As [`start`](Self::start), with extra `redis-server` arguments (`--cluster-enabled yes`).
    ///
    /// # Panics
    ///
    /// If no server could be started after a few ports were tried.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_with_ports(|_| extra.iter().map(|s| (*s).to_owned()).collect())
    }

    /// As [`start`](Self::start), also serving TLS with `certs` on [`tls_port`](Self::tls_port)
    /// (`port + 10000`). Clients need not present a certificate.
    ///
    /// # Panics
    ///
    /// If no server could be started after a few ports were tried.
    pub fn start_tls(certs: &crate::TestCerts) -> Self {
        let file = |name: &str| certs.path(name).to_string_lossy().into_owned();
        Self::start_with_ports(|port| {
            vec![
                "--tls-port".to_owned(),
                (port + 10_000).to_string(),
                "--tls-cert-file".to_owned(),
                file("server.crt"),
                "--tls-key-file".to_owned(),
                file("server.key"),
                "--tls-ca-cert-file".to_owned(),
                file("ca.crt"),
                "--tls-auth-clients".to_owned(),
                "no".to_owned(),
            ]
        })
    }

    /// The TLS port of a server started by [`start_tls`](Self::start_tls).
    pub fn tls_port(&self) -> u16 {
        self.port + 10_000
    }

    fn start_with_ports(extra: impl Fn(u16) -> Vec<String>) -> Self {
        for _ in 0..8 {
            let port = free_port();
            let mut server = Self {
                port,
                dir: temp_dir(port),
                extra: extra(port),
                child: None,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("could not start redis-server on any of 8 free ports");
    }

    fn spawn(&mut self) -> bool {
        if std::fs::create_dir_all(&self.dir).is_err() {
            return false;
        }
        let log = std::fs::File::create(self.dir.join("redis.log")).ok();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.map_or_else(Stdio::null, Stdio::from))
            .stderr(Stdio::null());
        let Ok(child) = cmd.spawn() else {
            return false;
        };
        self.child = Some(child);
        if wait_for_ping(self.port, 50) {
            return true;
        }
        self.kill9();
        false
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its working directory (its log is `redis.log` in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills it with SIGKILL and waits for it to exit.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = signal(child.id(), "CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it with SIGSTOP: connections stay open, nothing answers.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            signal(child.id(), "STOP");
        }
    }

    /// Resumes it with SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            signal(child.id(), "CONT");
        }
    }

    /// Kills it (if running) and starts a fresh, empty server on the same port.
    ///
    /// # Panics
    ///
    /// If the server does not come back on its port.
    pub fn restart(&mut self) {
        self.kill9();
        // The port may stay busy for a moment after the kill.
        for _ in 0..20 {
            if self.spawn() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// Runs `redis-cli` against it and returns its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// How many times the server has run `command` since it started, scripts' commands
    /// included (`INFO commandstats`; a subcommand is written `function|load`). 0 if never.
    pub fn calls(&self, command: &str) -> u64 {
        let prefix = format!("cmdstat_{command}:calls=");
        self.cli(&["INFO", "commandstats"])
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `redis-cli -p port args...` and returns its stdout, trimmed.
pub(crate) fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub(crate) fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

/// Sends `PING` every 20 ms, up to `tries` times, until `+PONG` comes back.
pub(crate) fn wait_for_ping(port: u16, tries: u32) -> bool {
    for _ in 0..tries {
        if ping(port) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A port that is free now, with its cluster bus port (`port + 10000`) free too.
pub(crate) fn free_port() -> u16 {
    let seed = RandomState::new().build_hasher().finish();
    for i in 0..1000u64 {
        let port = u16::try_from(20_000 + (seed.wrapping_add(i * 7919)) % 30_000).unwrap_or(20_000);
        let free = |p: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no free port pair found");
}

pub(crate) fn temp_dir(port: u16) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "rl-redis-{}-{port}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}
