//! Metrics through the `metrics` facade: outcomes, backend, latency; never a key.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use rate_limit_core::{Quota, StoreErrorKind};
use tower::ServiceBuilder;
use tower_ratelimit::key::Header;
use tower_ratelimit::{FailureMode, RateLimitLayer};

/// Counts every counter increment and histogram sample by its rendered key.
#[derive(Default)]
struct Capture {
    counts: Mutex<BTreeMap<String, Arc<Handle>>>,
}

#[derive(Default)]
struct Handle(AtomicU64);

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }

    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

impl HistogramFn for Handle {
    fn record(&self, _value: f64) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn render(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Capture {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        Arc::clone(self.counts.lock().unwrap().entry(render(key)).or_default())
    }

    fn get(&self, rendered: &str) -> u64 {
        self.counts
            .lock()
            .unwrap()
            .get(rendered)
            .map_or(0, |h| h.0.load(Ordering::SeqCst))
    }

    fn keys(&self) -> Vec<String> {
        self.counts.lock().unwrap().keys().cloned().collect()
    }
}

impl Recorder for Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(key))
    }
}

fn run<F: std::future::Future>(capture: &Capture, f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    metrics::with_local_recorder(capture, || rt.block_on(f))
}

#[test]
fn decisions_are_counted_by_outcome_policy_and_backend() {
    let capture = Capture::default();
    let clock = clock();
    let limited = RateLimitLayer::new(store(&clock), Quota::per_minute(nz(2)))
        .name("api")
        .key(Header::new("x-client"));
    let shadow = limited.clone().name("shadowed").shadow(true);
    run(&capture, async {
        let svc = ServiceBuilder::new().layer(limited).service_fn(ok);
        for _ in 0..5 {
            send(&svc, get_with("/", "x-client", b"secret-client-id")).await;
        }
        let svc = ServiceBuilder::new().layer(shadow).service_fn(ok);
        for _ in 0..3 {
            send(&svc, get_with("/", "x-client", b"secret-client-id")).await;
        }
    });
    let c = |policy: &str, outcome: &str| {
        capture.get(&format!(
            "ratelimit_decisions_total{{backend=memory,outcome={outcome},policy={policy}}}"
        ))
    };
    assert_eq!(c("api", "allowed"), 2);
    assert_eq!(c("api", "denied"), 3);
    assert_eq!(c("shadowed", "allowed"), 2);
    assert_eq!(c("shadowed", "shadow_denied"), 1);
    // The memory store decides in place: counted, not timed.
    assert_eq!(
        capture.get("ratelimit_store_duration_seconds{backend=memory}"),
        0
    );
    for key in capture.keys() {
        assert!(!key.contains("secret-client-id"), "{key}");
    }
}

/// With no header to write, an allowed request is counted where the store decides it in place,
/// rather than on the way to the response: counted all the same, once each.
#[test]
fn decisions_without_headers_are_counted_alike() {
    let capture = Capture::default();
    let clock = clock();
    let layer = RateLimitLayer::new(store(&clock), Quota::per_minute(nz(2)))
        .name("quiet")
        .key(Header::new("x-client"))
        .headers(tower_ratelimit::HeaderStyle::None);
    run(&capture, async {
        let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
        for _ in 0..5 {
            send(&svc, get_with("/", "x-client", b"client")).await;
        }
    });
    let c = |outcome: &str| {
        capture.get(&format!(
            "ratelimit_decisions_total{{backend=memory,outcome={outcome},policy=quiet}}"
        ))
    };
    assert_eq!((c("allowed"), c("denied")), (2, 3));
}

#[test]
fn store_failures_are_counted_by_mode() {
    let capture = Capture::default();
    let open = RateLimitLayer::new(
        FailingStore(StoreErrorKind::Timeout),
        Quota::per_minute(nz(2)),
    );
    let closed = open.clone().on_store_error(FailureMode::Closed);
    run(&capture, async {
        let svc = ServiceBuilder::new().layer(open).service_fn(ok);
        send(&svc, get("/")).await;
        let svc = ServiceBuilder::new().layer(closed).service_fn(ok);
        send(&svc, get("/")).await;
        send(&svc, get("/")).await;
    });
    let c = |outcome: &str| {
        capture.get(&format!(
            "ratelimit_decisions_total{{backend=failing,outcome={outcome},policy=default}}"
        ))
    };
    assert_eq!(c("failed_open"), 1);
    assert_eq!(c("failed_closed"), 2);
    // Each call that went through the store's future is timed, failed or not.
    assert_eq!(
        capture.get("ratelimit_store_duration_seconds{backend=failing}"),
        3
    );
}

#[test]
fn missing_key_rejections_are_counted() {
    let capture = Capture::default();
    let layer = RateLimitLayer::new(store(&clock()), Quota::per_minute(nz(2)))
        .name("api")
        .key(Header::new("x-client"));
    run(&capture, async {
        let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
        for _ in 0..4 {
            send(&svc, get("/")).await;
        }
        send(&svc, get_with("/", "x-client", b"c")).await;
    });
    let c = |outcome: &str| {
        capture.get(&format!(
            "ratelimit_decisions_total{{backend=memory,outcome={outcome},policy=api}}"
        ))
    };
    assert_eq!(c("missing_key"), 4);
    // The store was asked once.
    assert_eq!(c("allowed"), 1);
}

/// `text`'s lines that start with `prefix`.
fn lines_of<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn breaker_and_fallback_series_are_in_the_first_scrape() {
    use metrics_exporter_prometheus::PrometheusBuilder;
    use rate_limit_core::MemoryStore;
    use rate_limit_core::resilience::{CircuitBreaker, Fallback};

    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _layer = metrics::with_local_recorder(&recorder, || {
        let breaker = CircuitBreaker::new(FailingStore(StoreErrorKind::Connection));
        let store = Fallback::new(breaker, MemoryStore::new(), nz(2));
        RateLimitLayer::new(store, Quota::per_minute(nz(2)))
    });
    // Nothing has failed, nothing was asked: the series are there, described, at 0.
    let text = handle.render();
    for (name, kind) in [
        ("ratelimit_circuit_state", "gauge"),
        ("ratelimit_circuit_transitions_total", "counter"),
        ("ratelimit_fallback_decisions_total", "counter"),
    ] {
        assert_eq!(
            lines_of(&text, &format!("# TYPE {name} ")),
            [format!("# TYPE {name} {kind}")],
            "{text}"
        );
        assert_eq!(
            lines_of(&text, &format!("# HELP {name} ")).len(),
            1,
            "{text}"
        );
    }
    assert_eq!(
        lines_of(&text, "ratelimit_circuit_state{"),
        [r#"ratelimit_circuit_state{backend="failing"} 0"#],
        "{text}"
    );
    let mut transitions = lines_of(&text, "ratelimit_circuit_transitions_total{");
    transitions.sort_unstable();
    assert_eq!(
        transitions,
        [
            r#"ratelimit_circuit_transitions_total{backend="failing",to="closed"} 0"#,
            r#"ratelimit_circuit_transitions_total{backend="failing",to="half_open"} 0"#,
            r#"ratelimit_circuit_transitions_total{backend="failing",to="open"} 0"#,
        ],
        "{text}"
    );
    let mut fallback = lines_of(&text, "ratelimit_fallback_decisions_total{");
    fallback.sort_unstable();
    assert_eq!(
        fallback,
        [
            r#"ratelimit_fallback_decisions_total{backend="failing",outcome="allowed"} 0"#,
            r#"ratelimit_fallback_decisions_total{backend="failing",outcome="denied"} 0"#,
        ],
        "{text}"
    );
}
