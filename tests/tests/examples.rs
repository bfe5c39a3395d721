//! The `distributed` example, run as a process against a Redis this test starts. (The other
//! examples carry their own tests, run by `cargo test -p examples`.)

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
