//! The demo server, run as a process the way a user runs it: its HTTP contract for every
//! algorithm, three instances sharing one Redis, start-up errors, graceful shutdown, and the
//! TOML configuration file.

mod demo_support;

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use demo_support::{Demo, HttpResponse, counter, demo_command, head, read_response};
use integration_tests::{MASTER_NAME, RedisSentinels, RedisServer, redis_available};
use rate_limit_core::{Clock, SystemClock};

const ALGORITHMS: [&str; 6] = [
    "token_bucket",
    "leaky_bucket",
    "fixed_window",
    "sliding_window_log",
    "sliding_window",
    "gcra",
];

/// A day: no refill and no window edge can plausibly fall inside a test.
const DAY: &str = "86400";

fn id(client: &str) -> [(&'static str, &str); 1] {
    [("X-Client-ID", client)]
}

/// Checks that the headers and the JSON of an answer agree, and returns the JSON.
fn check_answer(
    res: &HttpResponse,
    limit: u64,
    allowed: bool,
    remaining: u64,
) -> serde_json::Value {
    let status = if allowed { 200 } else { 429 };
    assert_eq!(res.status, status, "{res:?}");
    assert_eq!(res.header("content-type"), Some("application/json"));
    let json = res.json();
    assert_eq!(json["allowed"], allowed, "{json}");
    assert_eq!(json["limit"], limit, "{json}");
    assert_eq!(json["remaining"], remaining, "{json}");
    assert!(json["reset_after_ms"].as_u64().is_some(), "{json}");
    assert_eq!(res.header_u64("x-ratelimit-limit"), limit);
    assert_eq!(res.header_u64("x-ratelimit-remaining"), remaining);
    let reset = res.header_u64("x-ratelimit-reset");
    assert_eq!(
        reset,
        json["reset_after_ms"].as_u64().unwrap().div_ceil(1000),
        "{res:?}"
    );
    let policy = res.header("ratelimit-policy").expect("RateLimit-Policy");
    assert_eq!(policy, format!("\"default\";q={limit};w={DAY}"));
    let field = res.header("ratelimit").expect("RateLimit");
    assert_eq!(field, format!("\"default\";r={remaining};t={reset}"));
    if allowed {
        assert_eq!(json["retry_after_ms"], 0);
        assert_eq!(res.header("retry-after"), None);
    } else {
        let wait = json["retry_after_ms"].as_u64().expect("a wait");
        assert!(wait > 0);
        assert_eq!(res.header_u64("retry-after"), wait.div_ceil(1000).max(1));
    }
    json
}

fn status(demo: &Demo, client: &str) -> serde_json::Value {
    let res = demo.get(&format!("/status?key={client}"), &[]);
    assert_eq!(res.status, 200, "{res:?}");
    let json = res.json();
    // The headers `/ratelimit` would carry, agreeing with the JSON.
    assert_eq!(
        Some(res.header_u64("x-ratelimit-remaining")),
        json["remaining"].as_u64(),
        "{res:?}"
    );
    assert_eq!(
        Some(res.header_u64("x-ratelimit-limit")),
        json["limit"].as_u64(),
        "{res:?}"
    );
    json
}

fn contract(algorithm: &str, demo: &Demo) {
    let limit = 4;
    assert_eq!(demo.get("/healthz", &[]).status, 200);

    // Exactly the quota, then 429; the headers and the JSON agree.
    for remaining in (0..limit).rev() {
        check_answer(
            &demo.get("/ratelimit", &id("alice")),
            limit,
            true,
            remaining,
        );
    }
    let denied = demo.get("/ratelimit", &id("alice"));
    check_answer(&denied, limit, false, 0);

    // /status reports without charging, by ?key= or by the key header.
    let s = status(demo, "alice");
    assert_eq!(
        (s["allowed"].clone(), s["remaining"].clone()),
        (false.into(), 0.into())
    );
    assert_eq!(s["backend"], "memory");
    assert_eq!(s["circuit"], "closed");
    let by_header = demo.get("/status", &id("alice")).json();
    assert_eq!(by_header["remaining"], 0);
    for _ in 0..3 {
        let s = status(demo, "carol");
        assert_eq!(
            (s["allowed"].clone(), s["remaining"].clone()),
            (true.into(), limit.into())
        );
    }
    check_answer(
        &demo.get("/ratelimit", &id("carol")),
        limit,
        true,
        limit - 1,
    );
    assert_eq!(status(demo, "carol")["remaining"], limit - 1);

    // /acquire charges the cost in its body; no body or no cost field costs 1.
    let res = demo.post("/acquire", &id("bob"), r#"{"cost": 3, "note": "ignored"}"#);
    check_answer(&res, limit, true, limit - 3);
    let res = demo.post("/acquire", &id("bob"), r#"{"cost": 2}"#);
    check_answer(&res, limit, false, limit - 3);
    check_answer(&demo.post("/acquire", &id("bob"), "{}"), limit, true, 0);
    check_answer(&demo.post("/acquire", &id("bob"), ""), limit, false, 0);
    for bad in ["nope", r#"{"cost": 0}"#, r#"{"cost": -1}"#] {
        let res = demo.post("/acquire", &id("dave"), bad);
        assert_eq!(res.status, 400, "{algorithm}: {bad} -> {res:?}");
    }
    assert_eq!(
        status(demo, "dave")["remaining"],
        limit,
        "a 400 charges nothing"
    );

    // Without the key header the peer address is the key.
    let res = demo.get("/ratelimit", &[]);
    check_answer(&res, limit, true, limit - 1);
    assert_eq!(demo.get("/status", &[]).json()["remaining"], limit - 1);

    // /metrics counts the layer's decisions.
    let metrics = demo.get("/metrics", &[]);
    assert_eq!(metrics.status, 200);
    let allowed = r#"outcome="allowed""#;
    let denied = r#"outcome="denied""#;
    let name = "ratelimit_decisions_total";
    // alice 4, carol 1, bob 2, the peer 1 / alice 1, bob 2.
    assert_eq!(
        counter(&metrics.body, name, &[allowed, r#"backend="memory""#]),
        8,
        "{algorithm}:\n{}",
        metrics.body
    );
    assert_eq!(
        counter(&metrics.body, name, &[denied]),
        3,
        "{algorithm}:\n{}",
        metrics.body
    );
}

#[test]
fn the_http_contract_holds_for_every_algorithm() {
    // Started together, checked one by one: six short-lived processes.
    let demos: Vec<(&str, Demo)> = ALGORITHMS
        .iter()
        .map(|a| {
            let vars = [
                ("RATE_LIMIT", "4"),
                ("RATE_LIMIT_WINDOW_SEC", DAY),
                ("RATE_LIMIT_ALGORITHM", a),
            ];
            (*a, Demo::start(&vars))
        })
        .collect();
    for (algorithm, demo) in &demos {
        contract(algorithm, demo);
    }
}

#[test]
fn three_demos_sharing_one_redis_admit_exactly_the_quota() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url();
    for algorithm in ["token_bucket", "sliding_window_log"] {
        let vars = [
            ("REDIS_URL", url.as_str()),
            ("FAILURE_MODE", "closed"),
            // A loaded machine can take longer than the default 50 ms for the first call
            // (connecting, loading the library): closed mode would answer 503, not a decision.
            ("REDIS_TIMEOUT_MS", "2000"),
            ("RATE_LIMIT", "10"),
            ("RATE_LIMIT_WINDOW_SEC", DAY),
            ("RATE_LIMIT_ALGORITHM", algorithm),
        ];
        let demos: Vec<Demo> = (0..3).map(|_| Demo::start(&vars)).collect();
        let client = format!("shared-{algorithm}");
        // 3 × 4 threads × 3 requests = 36 requests at once, for a quota of 10.
        let statuses: Vec<u16> = thread::scope(|s| {
            let handles: Vec<_> = demos
                .iter()
                .flat_map(|demo| (0..4).map(move |_| demo))
                .map(|demo| {
                    let client = client.as_str();
                    s.spawn(move || {
                        (0..3)
                            .map(|_| demo.get("/ratelimit", &id(client)).status)
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let ok = statuses.iter().filter(|s| **s == 200).count();
        let limited = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!((ok, limited), (10, 26), "{algorithm}: {statuses:?}");
        for demo in &demos {
            let s = status(demo, &client);
            assert_eq!(s["backend"], "redis");
            assert_eq!(
                s["remaining"], 0,
                "{algorithm}: every instance sees the shared state"
            );
        }
        // Another client still has its whole budget, on any instance.
        assert_eq!(status(&demos[2], "someone-else")["remaining"], 10);
    }
}

#[test]
fn bad_settings_fail_fast_naming_the_variable_and_value() {
    let dir = std::env::temp_dir().join(format!("demo-bad-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "rate_limit = 0\n").unwrap();
    let file = file.display().to_string();
    let cases = [
        ("RATE_LIMIT", "abc"),
        ("RATE_LIMIT", "0"),
        ("RATE_LIMIT_WINDOW_SEC", "-5"),
        ("RATE_LIMIT_BURST", "lots"),
        ("RATE_LIMIT_ALGORITHM", "leaky"),
        ("RATE_LIMIT_MAX_KEYS", "0"),
        ("FAILURE_MODE", "sometimes"),
        ("REDIS_TIMEOUT_MS", "soon"),
        ("PORT", "99999"),
        ("KEY_HEADER", "not a header"),
        ("TRUSTED_PROXIES", "10.0.0.0/40"),
        ("REDIS_URL", "localhost:6379"),
        ("REDIS_SENTINELS", "127.0.0.1:26379"),
        ("REDIS_SENTINEL_MASTER", "mymaster"),
        ("RATELIMIT_CONFIG", "/nonexistent/ratelimit.toml"),
    ];
    for (var, value) in cases {
        let out = demo_command(&[(var, value)])
            .output()
            .expect("the demo runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "demo: configuration error: invalid {var} `{value}`: "
            )),
            "{var}={value}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{var}={value} said it was listening");
    }
    let out = demo_command(&[("RATELIMIT_CONFIG", &file)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("invalid rate_limit in {file} `0`: ")),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);

    // A Redis that cannot be reached is a start-up error too.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let out = demo_command(&[("REDIS_URL", &url), ("FAILURE_MODE", "closed")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&url), "{stderr}");
}

#[test]
fn sigterm_stops_accepting_and_lets_an_in_flight_request_finish() {
    let mut demo = Demo::start(&[("RATE_LIMIT", "5"), ("RATE_LIMIT_WINDOW_SEC", DAY)]);
    // A slow upload: the head and half the body now, the rest after the signal.
    let body = r#"{"cost": 2}"#;
    let (first, rest) = body.split_at(8);
    let mut slow = TcpStream::connect(("127.0.0.1", demo.port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let req = head("POST", "/acquire", &id("slow"), Some(body.len()));
    slow.write_all(req.as_bytes()).unwrap();
    slow.write_all(first.as_bytes()).unwrap();
    // Time for the server to read the head: from then on the request is in flight (a
    // connection whose head is not read yet is idle, and is closed by a graceful shutdown).
    thread::sleep(Duration::from_millis(1000));

    demo.terminate();
    thread::sleep(Duration::from_millis(500));
    assert!(demo.try_wait().is_none(), "exited with a request in flight");
    assert!(
        TcpStream::connect(("127.0.0.1", demo.port)).is_err(),
        "still accepting connections after SIGTERM"
    );

    slow.write_all(rest.as_bytes()).unwrap();
    let res = read_response(&mut slow);
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.json()["remaining"], 3);
    let code = demo.wait_timeout(Duration::from_secs(10));
    assert_eq!(code.and_then(|c| c.code()), Some(0), "{}", demo.stderr());
}

#[test]
fn a_config_file_adds_route_policies_and_tiers_under_the_environment() {
    let dir = std::env::temp_dir().join(format!("demo-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ratelimit.toml");
    std::fs::write(
        &file,
        r#"
rate_limit = 2
rate_limit_window_sec = 86400

[[routes]]
path = "/acquire"
limit = 5

[[tiers]]
name = "premium"
keys = ["vip"]
limit = 7
algorithm = "gcra"
"#,
    )
    .unwrap();
    let file_path = file.display().to_string();
    let demo = Demo::start(&[("RATELIMIT_CONFIG", &file_path), ("RATE_LIMIT", "3")]);
    let _ = std::fs::remove_dir_all(&dir);

    let res = demo.get("/ratelimit", &id("a"));
    assert_eq!(
        res.header_u64("x-ratelimit-limit"),
        3,
        "the environment wins"
    );
    assert_eq!(
        res.header("ratelimit-policy"),
        Some("\"default\";q=3;w=86400")
    );
    let res = demo.post("/acquire", &id("a"), "");
    assert_eq!(res.header_u64("x-ratelimit-limit"), 5);
    assert_eq!(
        res.header("ratelimit-policy"),
        Some("\"acquire\";q=5;w=86400")
    );
    assert_eq!(
        res.header_u64("x-ratelimit-remaining"),
        4,
        "a separate budget"
    );
    for (path, post) in [("/ratelimit", false), ("/acquire", true)] {
        let res = if post {
            demo.post(path, &id("vip"), "")
        } else {
            demo.get(path, &id("vip"))
        };
        assert_eq!(
            res.header("ratelimit-policy"),
            Some("\"premium\";q=7;w=86400")
        );
    }
    let s = status(&demo, "vip");
    assert_eq!(
        (s["limit"].clone(), s["remaining"].clone()),
        (7.into(), 5.into())
    );
}

#[test]
fn with_redis_down_at_start_up_local_mode_serves_and_then_shares_redis() {
    if !redis_available() {
        return;
    }
    let mut redis = RedisServer::start();
    redis.kill9();
    let demo = Demo::start(&[
        ("REDIS_URL", redis.url().as_str()),
        ("FAILURE_MODE", "local"),
        ("RATE_LIMIT", "6"),
        ("RATE_LIMIT_INSTANCES", "3"),
        ("RATE_LIMIT_WINDOW_SEC", DAY),
        ("REDIS_TIMEOUT_MS", "100"),
    ]);
    // Decided in memory on a third of the quota while Redis is away.
    let statuses: Vec<u16> = (0..3)
        .map(|_| demo.get("/ratelimit", &id("boot")).status)
        .collect();
    assert_eq!(statuses, [200, 200, 429], "{}", demo.stderr());
    assert!(
        wait_for_stderr(&demo, |l| l.contains("WARN")
            && l.contains("Redis is not in use")),
        "{}",
        demo.stderr()
    );
    // Redis comes up: once the breaker lets a probe through, Redis decides, on the full quota.
    redis.restart();
    let mut limit = 0;
    for _ in 0..100 {
        let res = demo.get("/ratelimit", &id("after-boot"));
        if res.status == 200 && res.header_u64("x-ratelimit-limit") == 6 {
            limit = 6;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(limit, 6, "Redis never took over: {}", demo.stderr());
    let keys = redis.cli(&["DBSIZE"]);
    assert_ne!(keys, "0", "no state in Redis");
}

#[test]
fn when_redis_dies_each_failure_mode_does_what_it_says() {
    if !redis_available() {
        return;
    }
    let mut redis = RedisServer::start();
    let url = redis.url();
    let start = |mode: &str| {
        Demo::start(&[
            ("REDIS_URL", url.as_str()),
            ("FAILURE_MODE", mode),
            ("RATE_LIMIT", "6"),
            ("RATE_LIMIT_INSTANCES", "3"),
            ("RATE_LIMIT_WINDOW_SEC", DAY),
            ("REDIS_TIMEOUT_MS", "100"),
        ])
    };
    let (open, closed, local) = (start("open"), start("closed"), start("local"));
    for demo in [&open, &closed, &local] {
        assert_eq!(demo.get("/ratelimit", &id("before")).status, 200);
        assert_eq!(status(demo, "before")["circuit"], "closed");
    }
    redis.kill9();

    // local: a third of the quota per instance, decided in memory, then 429.
    let statuses: Vec<u16> = (0..4)
        .map(|_| local.get("/ratelimit", &id("outage")).status)
        .collect();
    assert_eq!(statuses, [200, 200, 429, 429], "{}", local.stderr());
    let res = local.get("/ratelimit", &id("outage"));
    assert_eq!(res.header_u64("x-ratelimit-limit"), 2);
    // Enough failures have been counted: the breaker is open and says so.
    assert_eq!(status(&local, "outage")["circuit"], "open");

    // open: admitted without a decision, and marked.
    for _ in 0..4 {
        let res = open.get("/ratelimit", &id("outage"));
        assert_eq!(res.status, 200, "{res:?}");
        assert_eq!(res.json()["allowed"], true);
        assert!(res.json()["degraded"].is_string(), "{res:?}");
    }
    // closed: 503 with Retry-After.
    for _ in 0..4 {
        let res = closed.get("/ratelimit", &id("outage"));
        assert_eq!(res.status, 503, "{res:?}");
        assert_eq!(res.header_u64("retry-after"), 1);
    }
    let res = closed.get("/status?key=outage", &[]);
    assert_eq!(res.status, 503);
    assert_eq!(res.json()["circuit"], "open");
}

/// Waits (up to 10 s) for a line of the demo's log that `wanted` accepts.
fn wait_for_stderr(demo: &Demo, wanted: impl Fn(&str) -> bool) -> bool {
    (0..200).any(|_| {
        let found = demo.stderr().lines().any(&wanted);
        if !found {
            thread::sleep(Duration::from_millis(50));
        }
        found
    })
}

/// A Redis this test started, that refuses every client without `password`.
fn redis_with_password(password: &str) -> RedisServer {
    let redis = RedisServer::start();
    // Set after start-up: the start helper waits for an unauthenticated PING.
    assert_eq!(redis.cli(&["CONFIG", "SET", "requirepass", password]), "OK");
    redis
}

/// Runs the demo to completion (it is expected to refuse to start) and returns its exit code
/// and everything it printed.
/// One that starts instead is killed after 30 s, with no exit code.
fn run_to_exit(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = demo_command(vars)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the demo runs");
    let mut code = None;
    for _ in 0..1500 {
        if let Some(status) = child.try_wait().expect("try_wait") {
            code = status.code();
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    if code.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("the demo's output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (code, text)
}

#[test]
fn a_redis_password_is_never_printed() {
    if !redis_available() {
        return;
    }
    let redis = redis_with_password("the-right-one");
    let secret = "wr0ng-s3cret-pw";
    let url = format!("redis://demo:{secret}@127.0.0.1:{}", redis.port());
    let tls = format!("rediss://:{secret}@127.0.0.1:{}", redis.port());
    let nodes = format!("redis://:{secret}@127.0.0.1:1,http://:{secret}@127.0.0.1:2");

    // Refused at start-up (closed), and a configuration error about the URL itself.
    for vars in [
        vec![("REDIS_URL", url.as_str()), ("FAILURE_MODE", "closed")],
        vec![("REDIS_URL", tls.as_str())],
        vec![("REDIS_CLUSTER_NODES", nodes.as_str())],
    ] {
        let (code, text) = run_to_exit(&vars);
        assert_ne!(code, Some(0), "{vars:?} started: {text}");
        assert!(
            !text.contains(secret),
            "{vars:?} printed the password:\n{text}"
        );
        assert!(
            text.contains("127.0.0.1"),
            "{vars:?} says nothing useful:\n{text}"
        );
    }

    // Started anyway (open, local): the start-up warning, the answers while Redis refuses, and
    // the shutdown log carry no password either.
    for mode in ["open", "local"] {
        let mut demo = Demo::start(&[
            ("REDIS_URL", url.as_str()),
            ("FAILURE_MODE", mode),
            ("REDIS_TIMEOUT_MS", "500"),
        ]);
        let mut answers = String::new();
        for path in ["/ratelimit", "/status?key=x", "/healthz"] {
            answers.push_str(&format!("{:?}\n", demo.get(path, &id("x"))));
        }
        demo.terminate();
        let code = demo.wait_timeout(Duration::from_secs(10));
        let text = format!("{answers}{}", demo.stderr());
        assert_eq!(code.and_then(|c| c.code()), Some(0), "{text}");
        assert!(
            !text.contains(secret),
            "{mode} printed the password:\n{text}"
        );
    }
}

#[test]
fn closed_mode_refuses_to_start_when_redis_refuses_the_password_or_the_database() {
    if !redis_available() {
        return;
    }
    let redis = redis_with_password("the-right-one");
    let port = redis.port();
    let wrong = format!("redis://:not-it@127.0.0.1:{port}");
    let none = format!("redis://127.0.0.1:{port}");
    let bad_db = format!("redis://:the-right-one@127.0.0.1:{port}/99");
    for (url, cause) in [
        (&wrong, "authentication failed"),
        (&none, "authentication failed"),
        (&bad_db, "invalid DB index"),
    ] {
        let (code, text) = run_to_exit(&[("REDIS_URL", url), ("FAILURE_MODE", "closed")]);
        assert_eq!(code, Some(1), "{url} did not stop the demo: {text}");
        assert!(text.contains(cause), "{url}: no `{cause}` in:\n{text}");
        assert!(!text.contains("listening on"), "{url}: {text}");
    }
    // The right password and database: it starts, and Redis decides.
    let good = format!("redis://:the-right-one@127.0.0.1:{port}/1");
    let demo = Demo::start(&[
        ("REDIS_URL", &good),
        ("FAILURE_MODE", "closed"),
        ("REDIS_TIMEOUT_MS", "2000"),
    ]);
    assert_eq!(
        demo.get("/ratelimit", &id("a")).status,
        200,
        "{}",
        demo.stderr()
    );

    // open and local start, and say at WARN why Redis is not in use.
    for mode in ["open", "local"] {
        for (url, cause) in [
            (&wrong, "authentication failed"),
            (&bad_db, "invalid DB index"),
        ] {
            let demo = Demo::start(&[("REDIS_URL", url), ("FAILURE_MODE", mode)]);
            assert_eq!(demo.get("/healthz", &[]).status, 200);
            let warned = wait_for_stderr(&demo, |l| l.contains("WARN") && l.contains(cause));
            assert!(
                warned,
                "{mode} {url}: no WARN naming `{cause}`:\n{}",
                demo.stderr()
            );
        }
    }
}

#[test]
fn with_redis_unreachable_at_start_up_healthz_answers_at_once() {
    // A Redis that accepts the connection (the kernel does) and never answers: the listener is
    // held open and never read.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://127.0.0.1:{}", silent.local_addr().unwrap().port());
    // Built before the clock starts.
    demo_support::example_exe("demo");
    for mode in ["open", "local"] {
        let clock = SystemClock::new();
        let started = clock.now();
        let demo = Demo::start(&[("REDIS_URL", url.as_str()), ("FAILURE_MODE", mode)]);
        let res = demo.get("/healthz", &[]);
        let took = clock.now().saturating_sub(started);
        assert_eq!(res.status, 200, "{mode}: {res:?}");
        // The demo must not wait on Redis before serving; the bound is generous (process start
        // on a loaded machine), and well below the old 5 s connect wait.
        assert!(
            took < Duration::from_secs(4),
            "{mode}: /healthz first answered after {took:?}:\n{}",
            demo.stderr()
        );
        // Redis stays silent: requests are still decided (open admits, local falls back).
        assert_eq!(demo.get("/ratelimit", &id("a")).status, 200, "{mode}");
        // It served before it knew Redis's fate: the warning comes after the listening line.
        assert!(
            wait_for_stderr(&demo, |l| l.contains("WARN")
                && l.contains("Redis is not in use")),
            "{mode}: {}",
            demo.stderr()
        );
        let log = demo.stderr();
        let listening = log.find("demo listening").expect("the listening line");
        let warned = log.find("Redis is not in use").expect("the warning");
        assert!(listening < warned, "{mode}: waited on Redis first:\n{log}");
    }
    drop(silent);
}

#[test]
fn status_finds_clients_keyed_by_ip_and_refuses_what_it_cannot_answer() {
    let demo = Demo::start(&[("RATE_LIMIT", "5"), ("RATE_LIMIT_WINDOW_SEC", DAY)]);
    // Two requests keyed by this test's address (no key header).
    for _ in 0..2 {
        assert_eq!(demo.get("/ratelimit", &[]).status, 200);
    }
    // Asked by IP, from a caller that names itself otherwise.
    let res = demo.get("/status?ip=127.0.0.1", &id("someone-else"));
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.json()["remaining"], 3, "{res:?}");
    for query in [
        "/status?ip=not-an-ip",
        "/status?client=127.0.0.1",
        "/status?ip=127.0.0.1&key=a",
    ] {
        let res = demo.get(query, &[]);
        assert_eq!(res.status, 400, "{query}: {res:?}");
        assert!(res.json()["error"].is_string(), "{query}: {res:?}");
    }
    // Keyed by IP only: a `?key=` lookup could only ever answer "a fresh client".
    let by_ip = Demo::start(&[("KEY_HEADER", "")]);
    let res = by_ip.get("/status?key=alice", &[]);
    assert_eq!(res.status, 400, "{res:?}");
    assert!(res.body.contains("ip="), "{res:?}");
}

#[test]
fn every_bad_setting_exits_2_with_one_message_format() {
    let dir = std::env::temp_dir().join(format!("demo-exit-2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let two_tiers = dir.join("two-tiers.toml");
    std::fs::write(
        &two_tiers,
        "[[tiers]]\nname = \"gold\"\nkeys = [\"alice\"]\nlimit = 10\n\
         [[tiers]]\nname = \"silver\"\nkeys = [\"bob\", \"alice\"]\nlimit = 5\n",
    )
    .unwrap();
    let bad_name = dir.join("bad-name.toml");
    std::fs::write(
        &bad_name,
        "[[routes]]\npath = \"/acquire\"\nname = \"two words\"\nlimit = 5\n",
    )
    .unwrap();
    let two_tiers = two_tiers.display().to_string();
    let bad_name = bad_name.display().to_string();
    for (vars, setting, value) in [
        (vec![("RATE_LIMIT", "abc")], "RATE_LIMIT".to_owned(), "abc"),
        (
            vec![("RATELIMIT_CONFIG", two_tiers.as_str())],
            format!("tiers[1].keys in {two_tiers}"),
            "alice",
        ),
        (
            vec![("RATELIMIT_CONFIG", bad_name.as_str())],
            format!("routes[0].name in {bad_name}"),
            "two words",
        ),
        (
            vec![
                ("REDIS_SENTINELS", "127.0.0.1:26379,nohost"),
                ("REDIS_SENTINEL_MASTER", "mymaster"),
            ],
            "REDIS_SENTINELS".to_owned(),
            "127.0.0.1:26379,nohost",
        ),
        (
            vec![
                ("REDIS_SENTINELS", "127.0.0.1:26379"),
                ("REDIS_SENTINEL_MASTER", "redis://:s3cr3t-pw@mymaster:6379"),
            ],
            "REDIS_SENTINEL_MASTER".to_owned(),
            "redis://:***@mymaster:6379",
        ),
        (
            vec![
                ("REDIS_SENTINELS", "127.0.0.1:26379"),
                ("REDIS_SENTINEL_MASTER", "mymaster"),
                ("REDIS_URL", "redis://127.0.0.1:6379"),
            ],
            "REDIS_SENTINELS".to_owned(),
            "127.0.0.1:26379",
        ),
    ] {
        let (code, text) = run_to_exit(&vars);
        assert_eq!(code, Some(2), "{vars:?}: {text}");
        let line = format!("demo: configuration error: invalid {setting} `{value}`: ");
        assert!(text.contains(&line), "{vars:?}: no `{line}` in:\n{text}");
        assert!(
            !text.contains("s3cr3t-pw"),
            "{vars:?} printed a password:\n{text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Three demos behind Redis Sentinel (`REDIS_SENTINELS`, `REDIS_SENTINEL_MASTER`): each asks
/// the sentinels for the master, and they share its budget; `/status` says `sentinel`.
#[test]
fn demos_behind_sentinels_share_the_master_they_name() {
    if !redis_available() {
        return;
    }
    let sentinels = RedisSentinels::start();
    // `host:port`, as an operator writes them.
    let addrs: Vec<String> = sentinels
        .sentinel_urls()
        .iter()
        .map(|u| u.trim_start_matches("redis://").to_owned())
        .collect();
    let addrs = addrs.join(",");
    let vars = [
        ("REDIS_SENTINELS", addrs.as_str()),
        ("REDIS_SENTINEL_MASTER", MASTER_NAME),
        // closed: Redis decides every request, or it is a 503.
        ("FAILURE_MODE", "closed"),
        ("RATE_LIMIT", "4"),
        ("RATE_LIMIT_WINDOW_SEC", DAY),
    ];
    let demos: Vec<Demo> = (0..3).map(|_| Demo::start(&vars)).collect();
    let statuses: Vec<u16> = (0..6)
        .map(|i| {
            demos[i % 3]
                .get("/ratelimit", &id("sentinel-client"))
                .status
        })
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 429, 429],
        "{}",
        demos[0].stderr()
    );
    for demo in &demos {
        let s = status(demo, "sentinel-client");
        assert_eq!(s["backend"], "sentinel", "{s}");
        assert_eq!(s["remaining"], 0, "{s}");
    }
    // The state is on the master the sentinels name.
    assert_ne!(sentinels.server(0).cli(&["DBSIZE"]), "0");
    assert!(
        demos[0].stderr().contains(MASTER_NAME),
        "{}",
        demos[0].stderr()
    );
}

/// A Redis Cluster or a Sentinel set that cannot be reached at start-up (a port nothing listens
/// on): with `open` or `local` the demo serves `/healthz` at once, as with a single node, and
/// says at WARN why Redis is not in use; with `closed` it does not start.
#[test]
fn with_a_cluster_or_sentinels_unreachable_at_start_up_healthz_answers_at_once() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let node = format!("redis://127.0.0.1:{dead}");
    let sentinel = format!("127.0.0.1:{dead}");
    demo_support::example_exe("demo");
    let backends: [Vec<(&str, &str)>; 2] = [
        vec![("REDIS_CLUSTER_NODES", node.as_str())],
        vec![
            ("REDIS_SENTINELS", sentinel.as_str()),
            ("REDIS_SENTINEL_MASTER", "mymaster"),
        ],
    ];
    for backend in &backends {
        for mode in ["open", "local"] {
            let mut vars = backend.clone();
            vars.push(("FAILURE_MODE", mode));
            let clock = SystemClock::new();
            let started = clock.now();
            let demo = Demo::start(&vars);
            let res = demo.get("/healthz", &[]);
            let took = clock.now().saturating_sub(started);
            assert_eq!(res.status, 200, "{vars:?}: {res:?}");
            println!(
                "{} {mode}: /healthz answered {took:?} after the start",
                backend[0].0
            );
            // Generous: a process start on a loaded machine; the old cluster start-up waited
            // on the cluster first.
            assert!(
                took < Duration::from_secs(5),
                "{vars:?}: /healthz first answered after {took:?}:\n{}",
                demo.stderr()
            );
            assert_eq!(demo.get("/ratelimit", &id("a")).status, 200, "{vars:?}");
            assert!(
                wait_for_stderr(&demo, |l| l.contains("WARN")
                    && l.contains("Redis is not in use")),
                "{vars:?}: {}",
                demo.stderr()
            );
        }
        let mut vars = backend.clone();
        vars.push(("FAILURE_MODE", "closed"));
        let (code, text) = run_to_exit(&vars);
        assert_eq!(code, Some(1), "{vars:?} started: {text}");
        assert!(text.contains(&dead.to_string()), "{vars:?}: {text}");
    }
}
