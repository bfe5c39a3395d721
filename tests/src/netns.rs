//! [`PartitionedRedis`]: a `redis-server` in a network namespace of the test's own, reached
//! over a veth pair whose link the test takes down (a partition) and up again.

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

/// The port Redis listens on inside its namespace (which has no other server).
const PORT: u16 = 16379;

/// A `redis-server` in a network namespace created for it, at the namespace's end of a veth
/// pair on a private /30 (`10.213.x.y`) used by nothing else. Killed, and the namespace and
/// its link deleted, on drop.
#[derive(Debug)]
pub struct PartitionedRedis {
    ns: String,
    host_if: String,
    addr: Ipv4Addr,
    dir: PathBuf,
    child: Option<Child>,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl PartitionedRedis {
    /// Creates the namespace and the link, and starts Redis in it. `None`, with
    /// `SKIPPED: network namespaces are not permitted here` printed, where the test may not
    /// create namespaces.
    ///
    /// # Panics
    ///
    /// Where namespaces are not permitted and `CI=true`; or if Redis does not answer.
    pub fn start() -> Option<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let ns = format!("rlt-{pid}-{n}");
        if !ip(&["netns", "add", &ns]) {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("cannot create a network namespace (`ip netns add`), and CI=true");
            }
            eprintln!("SKIPPED: network namespaces are not permitted here");
            return None;
        }
        // A /30 from the process id and a counter: .1 on the host's end, .2 in the namespace.
        let block = (pid.wrapping_mul(7).wrapping_add(n)) % 16_384;
        let base = [10, 213, (block / 64) as u8, ((block % 64) * 4) as u8];
        let host = Ipv4Addr::new(base[0], base[1], base[2], base[3] + 1);
        let addr = Ipv4Addr::new(base[0], base[1], base[2], base[3] + 2);
        let host_if = format!("rl{}h{n}", pid % 100_000);
        let ns_if = format!("rl{}n{n}", pid % 100_000);
        let mut me = Self {
            ns,
            host_if,
            addr,
            dir: std::env::temp_dir().join(format!("rl-netns-{pid}-{n}")),
            child: None,
        };
        let ns = me.ns.clone();
        let ok = ip(&[
            "link",
            "add",
            &me.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ]) && ip(&["link", "set", &ns_if, "netns", &ns])
            && ip(&["addr", "add", &format!("{host}/30"), "dev", &me.host_if])
            && ip(&["link", "set", &me.host_if, "up"])
            && ip(&[
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                &ns_if,
            ])
            && ip(&["netns", "exec", &ns, "ip", "link", "set", &ns_if, "up"])
            && ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        assert!(ok, "could not set up the veth pair for namespace {ns}");
        std::fs::create_dir_all(&me.dir).expect("a directory for redis");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "redis-server"])
            .args(["--port", &PORT.to_string()])
            .args(["--bind", &addr.to_string()])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            // Clients come from the host's end of the link, not loopback; nothing else can
            // reach the namespace.
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&me.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server in the namespace");
        me.child = Some(child);
        let target = SocketAddrV4::new(addr, PORT);
        for _ in 0..100 {
            if TcpStream::connect_timeout(&target.into(), Duration::from_millis(100)).is_ok() {
                return Some(me);
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server in namespace {ns} does not answer");
    }

    /// `redis://<address in the namespace>:<port>`.
    pub fn url(&self) -> String {
        format!("redis://{}:{PORT}", self.addr)
    }

    /// Takes the host's end of the link down: packets are lost both ways, and nothing tells
    /// the client (no reset).
    pub fn partition(&self) {
        assert!(ip(&["link", "set", &self.host_if, "down"]), "link down");
    }

    /// Brings the link up again.
    pub fn heal(&self) {
        assert!(ip(&["link", "set", &self.host_if, "up"]), "link up");
    }
}

impl Drop for PartitionedRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
