//! Runs the demo (or another example) as a user would: built by cargo, started as a process,
//! spoken to over TCP with a minimal HTTP/1.1 client.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

/// Every variable the demo reads, removed from the environment a test starts it with. The demo
/// is an example target with no library to import its list from: keep this in step with
/// `SETTINGS` in `examples/examples/demo/config.rs`.
pub const DEMO_VARS: [&str; 17] = [
    "PORT",
    "REDIS_URL",
    "REDIS_ADDR",
    "REDIS_CLUSTER_NODES",
    "REDIS_SENTINELS",
    "REDIS_SENTINEL_MASTER",
    "RATE_LIMIT",
    "RATE_LIMIT_WINDOW_SEC",
    "RATE_LIMIT_BURST",
    "RATE_LIMIT_ALGORITHM",
    "RATE_LIMIT_MAX_KEYS",
    "RATE_LIMIT_INSTANCES",
    "FAILURE_MODE",
    "REDIS_TIMEOUT_MS",
    "KEY_HEADER",
    "TRUSTED_PROXIES",
    "RATELIMIT_CONFIG",
];

/// Builds `example` of the `examples` package with the cargo running the tests, and returns
/// the executable cargo reports (wherever the target directory is).
pub fn example_exe(example: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(example) {
        return path.clone();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace");
    let out = Command::new(env!("CARGO"))
        .current_dir(root)
        .args(["build", "-p", "examples", "--example", example])
        .args(["--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo build --example {example} failed"
    );
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == example)
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no executable for example {example}"));
    built.insert(example.to_owned(), exe.clone());
    exe
}

/// A running demo on a free port. Killed on drop if still running.
pub struct Demo {
    child: Child,
    /// The port it listens on (read from its `listening on` line).
    pub port: u16,
    stderr: Arc<Mutex<String>>,
}

impl Demo {
    /// Starts the demo with `vars` (on top of a clean demo environment and `PORT=0`), and waits
    /// until it says it is listening.
    pub fn start(vars: &[(&str, &str)]) -> Self {
        let mut child = demo_command(vars)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the demo starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        drain(child.stderr.take().expect("piped"), Arc::clone(&stderr));
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the demo did not start; its stderr:\n{}",
                    stderr.lock().unwrap_or_else(|e| e.into_inner())
                );
            }
        };
        let port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {addr}"));
        Self {
            child,
            port,
            stderr,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM with `kill`.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// The exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits up to `limit` for it to exit.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let step = Duration::from_millis(20);
        let mut waited = Duration::ZERO;
        while waited < limit {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            thread::sleep(step);
            waited += step;
        }
        None
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `GET path` with `headers`.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        http(self.port, "GET", path, headers, None)
    }

    /// `POST path` with `headers` and `body`.
    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> HttpResponse {
        http(self.port, "POST", path, headers, Some(body))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The demo's command with a clean demo environment, `PORT=0` and `vars`.
pub fn demo_command(vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(example_exe("demo"));
    for var in DEMO_VARS {
        cmd.env_remove(var);
    }
    cmd.env("PORT", "0")
        .envs(vars.iter().copied())
        .stdin(Stdio::null());
    cmd
}

fn drain(mut from: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl HttpResponse {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Header `name` parsed as an integer.
    pub fn header_u64(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} header in {self:?}"))
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not an integer in {self:?}"))
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One request on a new connection (`Connection: close`), read to the end.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpResponse {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the demo");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream
        .write_all(head(method, path, headers, body.map(str::len)).as_bytes())
        .expect("write");
    if let Some(body) = body {
        stream.write_all(body.as_bytes()).expect("write body");
    }
    read_response(&mut stream)
}

/// The request head, with `Host`, `Connection: close` and a `Content-Length` when given.
pub fn head(method: &str, path: &str, headers: &[(&str, &str)], len: Option<usize>) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(len) = len {
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Reads a whole `Connection: close` response.
pub fn read_response(stream: &mut TcpStream) -> HttpResponse {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The value of the Prometheus counter line for `name` whose labels contain every one of
/// `labels` (`outcome="allowed"`), or 0 when there is none.
pub fn counter(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}
