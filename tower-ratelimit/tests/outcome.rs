//! Charging by outcome (`count_if`): what is given back, when, and what the client sees.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use common::*;
use http::{Method, Request, Response, StatusCode};
use rate_limit_core::{
    Algorithm, BoxFuture, Charge, Decision, Limit, ManualClock, MemoryStore, Quota, Snapshot,
    Store, StoreError, StoreErrorKind,
};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_ratelimit::key::Header;
use tower_ratelimit::{Policy, RateLimitLayer};

/// The login handler: 200 for the password `right`, 401 otherwise; counts its calls.
#[derive(Clone, Default)]
struct Login {
    calls: Arc<AtomicUsize>,
}

impl Login {
    fn service(&self) -> impl LoginService {
        handler(Arc::clone(&self.calls))
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

trait LoginService:
    Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<S> LoginService for S where
    S: Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send>
        + Clone
        + Send
        + 'static
{
}

fn handler(calls: Arc<AtomicUsize>) -> impl LoginService {
    service_fn(move |req: Request<String>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::task::yield_now().await;
            let status = if req.body() == "right" {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            let mut res = Response::new(String::new());
            *res.status_mut() = status;
            Ok(res)
        }
    })
}

/// `layer` in front of a login handler of its own.
fn login_service(layer: RateLimitLayer) -> impl LoginService {
    ServiceBuilder::new()
        .layer(layer)
        .service(handler(Arc::default()))
}

fn attempt(account: &str, password: &str) -> Request<String> {
    Request::post("/login")
        .header("x-account", account)
        .body(password.to_owned())
        .unwrap()
}

fn failures_only(layer: RateLimitLayer) -> RateLimitLayer {
    layer
        .name("login")
        .key(Header::new("x-account"))
        .count_if(|status| status == StatusCode::UNAUTHORIZED)
        // The tests read the decision: the refund's answer, or the check's.
        .decision_extensions(true)
}

/// 5 failed logins per 15 minutes, on a memory store and a layer sharing its manual clock.
fn login_layer(
    clock: &ManualClock,
    algorithm: Algorithm,
) -> (Arc<MemoryStore<ManualClock>>, RateLimitLayer) {
    let store = Arc::new(store(clock));
    let quota = Quota::with_period(5, Duration::from_secs(15 * 60)).unwrap();
    let layer = RateLimitLayer::new(Arc::clone(&store), quota)
        .algorithm(algorithm)
        .clock(clock.clone());
    (store, failures_only(layer))
}

/// What the store holds for `account` now: a peek of cost 1.
async fn budget(store: &impl Store, layer: &RateLimitLayer, account: &str) -> Decision {
    let policy = layer.default_policy();
    store
        .peek(&policy.store_key(account), policy.limits(), NonZeroU32::MIN)
        .await
        .unwrap()
}

#[tokio::test]
async fn successes_interleaved_with_failures_are_never_counted() {
    let clock = clock();
    let (_store, layer) = login_layer(&clock, Algorithm::FixedWindow);
    let login = Login::default();
    let svc = ServiceBuilder::new().layer(layer).service(login.service());
    for round in 0..5 {
        let res = send(&svc, attempt("ann", "right")).await;
        assert_eq!(res.status(), StatusCode::OK, "success {round}");
        let res = send(&svc, attempt("ann", "wrong")).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "failure {round}");
        assert_eq!(
            header(&res, "x-ratelimit-remaining"),
            Some(&*(4 - round).to_string())
        );
    }
    assert_eq!(
        login.calls(),
        10,
        "five successes and five failures reached the handler"
    );
    // The five failures spent the quota: the right password is refused too.
    for password in ["right", "wrong"] {
        let res = send(&svc, attempt("ann", password)).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(login.calls(), 10);
}

#[tokio::test]
async fn once_failures_spend_the_quota_every_attempt_is_denied_until_the_window_frees_one() {
    let clock = clock();
    let (_store, layer) = login_layer(&clock, Algorithm::SlidingWindowLog);
    let login = Login::default();
    let svc = ServiceBuilder::new().layer(layer).service(login.service());
    for _ in 0..5 {
        let res = send(&svc, attempt("ann", "wrong")).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        clock.advance(Duration::from_secs(60));
    }
    // 5 minutes after the first failure: 10 more to wait, for the right password as well.
    let res = send(&svc, attempt("ann", "right")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), Some("600"));
    clock.advance(Duration::from_secs(600) - Duration::from_millis(1));
    let res = send(&svc, attempt("ann", "right")).await;
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "one millisecond early"
    );
    clock.advance(Duration::from_millis(1));
    // The first failure has left the window: one attempt, and a success is given back again.
    let res = send(&svc, attempt("ann", "right")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("1"));
    let res = send(&svc, attempt("ann", "wrong")).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = send(&svc, attempt("ann", "wrong")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(login.calls(), 7);
}

#[tokio::test]
async fn headers_after_a_refund_show_the_restored_budget() {
    let clock = clock();
    let (store, layer) = login_layer(&clock, Algorithm::FixedWindow);
    let svc = login_service(layer.clone());
    send(&svc, attempt("ann", "wrong")).await;
    let res = send(&svc, attempt("ann", "right")).await;
    assert_eq!(res.status(), StatusCode::OK);
    // The check left 3; the refund gave one back.
    assert_eq!(header(&res, "x-ratelimit-limit"), Some("5"));
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("4"));
    assert_eq!(
        header(&res, "ratelimit"),
        Some(r#""login";r=4;t=120"#),
        "the 15-minute window aligned on the epoch ends 2 minutes after T0"
    );
    let decision = res.extensions().get::<Decision>().unwrap();
    assert_eq!(
        decision.remaining(),
        4,
        "the extension is the refund's answer"
    );
    // And the refund was done by the time the response came back.
    assert_eq!(budget(&*store, &layer, "ann").await.remaining(), 4);
}

#[tokio::test]
async fn a_cancelled_request_keeps_its_charge() {
    let clock = clock();
    let (store, layer) = login_layer(&clock, Algorithm::FixedWindow);
    // A handler that never answers: the client goes away while it works.
    let reached = Arc::new(AtomicUsize::new(0));
    let hang = {
        let reached = Arc::clone(&reached);
        service_fn(move |_req: Request<String>| {
            reached.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Result<Response<String>, Infallible>>()
        })
    };
    let mut svc = ServiceBuilder::new().layer(layer.clone()).service(hang);
    let mut future = svc.ready().await.unwrap().call(attempt("ann", "right"));
    let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut future).poll(cx))).await;
    assert!(polled.is_pending());
    assert_eq!(reached.load(Ordering::SeqCst), 1);
    drop(future);
    assert_eq!(budget(&*store, &layer, "ann").await.remaining(), 4);
}

#[tokio::test]
async fn an_inner_error_keeps_its_charge() {
    let clock = clock();
    let (store, layer) = login_layer(&clock, Algorithm::FixedWindow);
    let failing = service_fn(|_req: Request<String>| async {
        Err::<Response<String>, _>(std::io::Error::other("database down"))
    });
    let svc = ServiceBuilder::new().layer(layer.clone()).service(failing);
    let err = svc.oneshot(attempt("ann", "right")).await.unwrap_err();
    assert_eq!(err.to_string(), "database down");
    assert_eq!(budget(&*store, &layer, "ann").await.remaining(), 4);
}

#[test]
fn a_failed_refund_still_returns_the_response_with_the_check_headers() {
    let clock = clock();
    let quota = Quota::with_period(5, Duration::from_secs(900)).unwrap();
    let layer = RateLimitLayer::new(
        Double::new(store(&clock))
            .in_place()
            .failing_refunds()
            .named("no-refund"),
        quota,
    )
    .algorithm(Algorithm::FixedWindow)
    .clock(clock.clone());
    let layer = failures_only(layer);
    let svc = login_service(layer);
    let logs = Capture::default();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        logs.during(|| {
            runtime().block_on(async {
                for left in ["4", "3", "2"] {
                    let res = send(&svc, attempt("ann", "right")).await;
                    assert_eq!(res.status(), StatusCode::OK);
                    assert_eq!(header(&res, "x-ratelimit-remaining"), Some(left));
                    let decision = res.extensions().get::<Decision>().unwrap();
                    assert_eq!(decision.remaining().to_string(), left, "the check's answer");
                }
            });
        });
    });
    // Logged once (throttled), with its cause, never the key.
    let events = logs.events();
    assert_eq!(logs.lines().len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event.level, tracing::Level::WARN);
    assert_eq!(event.message, "rate limit refund failed: the charge stays");
    assert_eq!(event.field("cause"), Some("connection reset by the test"));
    assert_eq!(event.field("policy"), Some("login"));
    assert!(!format!("{events:?}").contains("ann"), "{events:?}");
    let text = handle.render();
    assert!(
        text.contains(
            r#"ratelimit_refunds_total{policy="login",result="failed",backend="no-refund"} 3"#
        ),
        "{text}"
    );
}

#[test]
fn exactly_the_quota_of_64_concurrent_failures_reach_the_handler() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    let clock = clock();
    let (store, layer) = login_layer(&clock, Algorithm::FixedWindow);
    let login = Login::default();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(login.service());
    let statuses = rt.block_on(async {
        let tasks: Vec<_> = (0..64)
            .map(|_| tokio::spawn(svc.clone().oneshot(attempt("ann", "wrong"))))
            .collect();
        let mut statuses = HashMap::new();
        for task in tasks {
            let status = task.await.unwrap().unwrap().status();
            *statuses.entry(status).or_insert(0) += 1;
        }
        statuses
    });
    assert_eq!(statuses[&StatusCode::UNAUTHORIZED], 5, "{statuses:?}");
    assert_eq!(statuses[&StatusCode::TOO_MANY_REQUESTS], 59, "{statuses:?}");
    assert_eq!(login.calls(), 5);
    let left = rt.block_on(budget(&*store, &layer, "ann"));
    assert!(!left.is_allowed());
}

/// A store that counts charges per key against the first limit's quota, never refills, and
/// records every refund: what the layer gives back, exactly.
#[derive(Default)]
struct Tally {
    used: Mutex<HashMap<String, u32>>,
    refunds: Mutex<Vec<(String, Vec<Limit>, Charge)>>,
}

impl Tally {
    fn answer(limits: &[Limit], used: u32, allowed: bool) -> Decision {
        let snapshots = limits
            .iter()
            .map(|l| {
                let capacity = l.quota().limit().get();
                let snapshot = if allowed {
                    Snapshot::allowed(capacity)
                } else {
                    Snapshot::denied(capacity).with_retry_after(Some(Duration::from_secs(60)))
                };
                snapshot.with_remaining(capacity.saturating_sub(used))
            })
            .collect();
        Decision::from_snapshots(snapshots)
    }

    fn refunds(&self) -> Vec<(String, Vec<Limit>, Charge)> {
        self.refunds.lock().unwrap().clone()
    }
}

impl Store for Tally {
    fn check<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        let mut used = self.used.lock().unwrap();
        let used = used.entry(key.to_owned()).or_default();
        let capacity = limits[0].quota().limit().get();
        let allowed = *used + cost.get() <= capacity;
        if allowed {
            *used += cost.get();
        }
        let decision = Self::answer(limits, *used, allowed);
        Box::pin(async move { Ok(decision) })
    }

    fn peek<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        _cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        let used = self.used.lock().unwrap().get(key).copied().unwrap_or(0);
        Box::pin(async move { Ok(Self::answer(limits, used, true)) })
    }

    fn refund<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        charge: Charge,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.refunds
            .lock()
            .unwrap()
            .push((key.to_owned(), limits.to_vec(), charge));
        let mut used = self.used.lock().unwrap();
        let used = used.entry(key.to_owned()).or_default();
        *used = used.saturating_sub(charge.cost().get());
        let decision = Self::answer(limits, *used, true);
        Box::pin(async move { Ok(decision) })
    }

    fn backend(&self) -> &'static str {
        "tally"
    }
}

#[tokio::test]
async fn the_refund_gives_back_exactly_the_key_limits_and_cost_that_were_charged() {
    let clock = clock();
    let tally = Arc::new(Tally::default());
    let route = Policy::new(
        "route",
        [
            Limit::new(Quota::per_minute(10), Algorithm::Gcra),
            Limit::new(Quota::per_hour(100), Algorithm::Gcra),
        ],
    )
    .unwrap();
    let picked = route.clone();
    let layer = RateLimitLayer::new(Arc::clone(&tally), Quota::per_minute(50))
        .key(Header::new("x-account"))
        .policy(move |parts, _key| (parts.uri.path() == "/route").then(|| picked.clone()))
        .cost(|_| 3)
        .clock(clock.clone())
        .decision_extensions(true)
        .count_if(|status| status.is_client_error());
    // The handler takes 2 s and succeeds.
    let slow = {
        let clock = clock.clone();
        service_fn(move |req: Request<String>| {
            // The decision, and nothing the layer keeps for itself meanwhile.
            assert_eq!(req.extensions().len(), 1);
            assert!(req.extensions().get::<Decision>().is_some());
            clock.advance(Duration::from_secs(2));
            async { Ok::<_, Infallible>(Response::new(String::new())) }
        })
    };
    let svc = ServiceBuilder::new().layer(layer).service(slow);
    let req = Request::get("/route")
        .header("x-account", "ann")
        .body(String::new());
    let res = send(&svc, req.unwrap()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let refunds = tally.refunds();
    assert_eq!(refunds.len(), 1);
    let (key, limits, charge) = &refunds[0];
    assert_eq!(key, &route.store_key("ann"));
    assert_eq!(limits, route.limits());
    assert_eq!(charge.cost().get(), 3);
    // Measured from before the check, with 1 ms for the refund's way to the store.
    assert_eq!(charge.since(), Duration::from_millis(2_001));
    assert!(!charge.is_local());
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("10"));
}

#[tokio::test]
async fn refused_skipped_free_and_shadowed_requests_give_nothing_back() {
    let tally = Arc::new(Tally::default());
    let layer = failures_only(RateLimitLayer::new(
        Arc::clone(&tally),
        Quota::per_minute(1),
    ))
    .skip(|parts| parts.method == Method::OPTIONS)
    .cost(|parts| u32::from(parts.uri.path() != "/free"));
    let svc = login_service(layer.clone());
    // One failure spends the quota; the rest are refused, skipped or free.
    assert_eq!(send(&svc, attempt("ann", "wrong")).await.status(), 401);
    assert_eq!(send(&svc, attempt("ann", "right")).await.status(), 429);
    let options = Request::options("/login")
        .header("x-account", "ann")
        .body(String::from("right"));
    assert_eq!(send(&svc, options.unwrap()).await.status(), 200);
    let free = Request::post("/free")
        .header("x-account", "ann")
        .body(String::from("right"));
    assert_eq!(send(&svc, free.unwrap()).await.status(), 200);
    // Shadow mode lets a denied request through, uncharged: nothing to give back.
    let shadow = login_service(layer.shadow(true));
    assert_eq!(send(&shadow, attempt("ann", "right")).await.status(), 200);
    assert!(tally.refunds().is_empty(), "{:?}", tally.refunds());
}

#[test]
fn a_failed_open_request_gives_nothing_back() {
    let layer = failures_only(RateLimitLayer::new(
        FailingStore(StoreErrorKind::Timeout),
        Quota::per_minute(1),
    ));
    let svc = login_service(layer);
    let logs = Capture::default();
    logs.during(|| {
        runtime().block_on(async {
            let res = send(&svc, attempt("ann", "right")).await;
            assert_eq!(res.status(), StatusCode::OK);
        });
    });
    // The check's failure only: no refund was tried (FailingStore's would fail and log).
    assert_eq!(
        logs.lines(),
        [(tracing::Level::WARN, "rate limit store failed".to_owned())]
    );
}

#[tokio::test]
async fn without_count_if_every_allowed_request_counts() {
    let tally = Arc::new(Tally::default());
    let layer =
        RateLimitLayer::new(Arc::clone(&tally), Quota::per_minute(2)).key(Header::new("x-account"));
    let svc = login_service(layer);
    assert_eq!(send(&svc, attempt("ann", "right")).await.status(), 200);
    assert_eq!(send(&svc, attempt("ann", "wrong")).await.status(), 401);
    assert_eq!(send(&svc, attempt("ann", "right")).await.status(), 429);
    assert!(tally.refunds().is_empty());
}

#[tokio::test]
async fn with_real_clocks_a_sliding_log_gives_back_the_entry_the_check_made() {
    // The store reads its clock for the refund after the layer measured the charge's age: an
    // age measured from the check's sending to the refund's sending alone would name a time
    // after the check's entry, and the log would give nothing back.
    let quota = Quota::with_period(5, Duration::from_secs(900)).unwrap();
    let layer = |store: Arc<dyn Store>| {
        let layer = RateLimitLayer::new(store, quota).algorithm(Algorithm::SlidingWindowLog);
        failures_only(layer)
    };
    let in_place = layer(Arc::new(MemoryStore::new()));
    let remote = layer(Arc::new(Double::new(MemoryStore::new()).waiting()));
    for layer in [in_place, remote] {
        let svc = login_service(layer);
        for i in 0..100 {
            let account = format!("user{i}");
            let res = svc
                .clone()
                .oneshot(attempt(&account, "right"))
                .await
                .unwrap();
            assert_eq!(header(&res, "x-ratelimit-remaining"), Some("5"), "{i}");
        }
    }
}

#[test]
fn refunds_are_counted_by_policy_and_result() {
    let clock = clock();
    let (_store, layer) = login_layer(&clock, Algorithm::FixedWindow);
    let svc = login_service(layer);
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        runtime().block_on(async {
            for password in ["right", "wrong", "right"] {
                send(&svc, attempt("ann", password)).await;
            }
        });
    });
    let text = handle.render();
    let refunded =
        r#"ratelimit_refunds_total{policy="login",result="refunded",backend="memory"} 2"#;
    assert!(text.contains(refunded), "{text}");
    assert!(!text.contains(r#"result="failed""#), "{text}");
}
