//! The `distributed` and `login` examples, run as processes against a Redis this test starts.
//! (The examples also carry their own tests, in memory, run by `cargo test -p examples`.)

mod demo_support;

use std::process::Command;

use demo_support::example_exe;
use integration_tests::{RedisServer, redis_available};

#[test]
fn distributed_example_admits_the_quota_across_two_instances() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let out = Command::new(example_exe("distributed"))
        .env("REDIS_URL", redis.url())
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("admitted 5 of 12"), "{stdout}");
    assert!(stdout.contains("via A: HTTP/1.1 200") && stdout.contains("via B: HTTP/1.1 200"));
    assert!(stdout.contains("via B: HTTP/1.1 429"), "{stdout}");
}

#[test]
fn distributed_example_explains_what_it_needs() {
    let out = Command::new(example_exe("distributed"))
        .env_remove("REDIS_URL")
        .output()
        .expect("the example runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("REDIS_URL="));
}

/// A running `login` example, killed on drop.
struct Login {
    child: std::process::Child,
    port: u16,
}

impl Login {
    fn start(redis_url: &str) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(example_exe("login"))
            .env("REDIS_URL", redis_url)
            .env("PORT", "0")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the example starts");
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("its first line");
        // `listening on http://127.0.0.1:PORT (redis store)`
        let port = line
            .split_whitespace()
            .nth(2)
            .and_then(|url| url.rsplit(':').next())
            .and_then(|p| p.parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            panic!("no port in {line:?}");
        };
        assert!(line.contains("(redis store)"), "{line}");
        Self { child, port }
    }

    /// A login attempt: its status and `X-RateLimit-Remaining` (the account's budget).
    fn attempt(&self, credentials: &str) -> (u16, Option<String>) {
        let auth = format!("Basic {credentials}");
        let res = demo_support::http(
            self.port,
            "POST",
            "/login",
            &[("authorization", auth.as_str())],
            None,
        );
        let remaining = res.header("x-ratelimit-remaining").map(str::to_owned);
        (res.status, remaining)
    }
}

impl Drop for Login {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn login_example_counts_failures_across_two_processes_and_never_successes() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let (a, b) = (Login::start(&redis.url()), Login::start(&redis.url()));
    // ann:hunter2 and ann:guess, in Basic encoding.
    let (right, wrong) = ("YW5uOmh1bnRlcjI=", "YW5uOmd1ZXNz");
    let remaining = |n: u32| Some(n.to_string());
    assert_eq!(a.attempt(right), (200, remaining(5)));
    for (i, instance) in [&a, &b, &a, &b].into_iter().enumerate() {
        assert_eq!(instance.attempt(wrong), (401, remaining(4 - i as u32)));
        assert_eq!(instance.attempt(right), (200, remaining(4 - i as u32)));
    }
    assert_eq!(b.attempt(wrong), (401, remaining(0)));
    // Five failures between the two processes: ann is locked out on both.
    assert_eq!(a.attempt(right).0, 429);
    assert_eq!(b.attempt(right).0, 429);
}
