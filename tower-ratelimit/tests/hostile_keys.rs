//! Hostile input: huge and binary header values, spoofed forwarding headers, random bytes.

mod common;

use std::sync::Arc;

use common::*;
use http::{HeaderName, HeaderValue, Request};
use proptest::prelude::*;
use rate_limit_core::{Algorithm, Limit, MemoryStore, Quota};
use tower::ServiceBuilder;
use tower_ratelimit::key::{ApiKey, ForwardedIp, Header, KeyExtractor, MAX_KEY_LEN, PeerIp};
use tower_ratelimit::{Policy, RateLimitLayer};

/// A memory store that remembers every key it was asked about. It decides through its future,
/// or also in place (`try_check_now`) when built with `in_place`.
type Recording = Double<Arc<MemoryStore>>;

fn recording() -> Recording {
    Double::new(Arc::new(MemoryStore::new())).named("recording")
}

/// Every key a store sees is short, visible ASCII.
fn assert_compact(key: &str) {
    assert!(
        key.len() <= "default:".len() + MAX_KEY_LEN,
        "{} bytes",
        key.len()
    );
    assert!(key.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{key:?}");
}

#[tokio::test]
async fn ten_kilobyte_header_is_hashed_and_keeps_its_own_budget() {
    let rec = recording();
    let layer =
        RateLimitLayer::new(rec.clone(), Quota::per_minute(nz(1))).key(Header::new("x-client"));
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    let big_a = vec![b'a'; 10 * 1024];
    let mut big_b = big_a.clone();
    big_b[9_999] = b'b';
    assert_eq!(
        send(&svc, get_with("/", "x-client", &big_a)).await.status(),
        200
    );
    assert_eq!(
        send(&svc, get_with("/", "x-client", &big_a)).await.status(),
        429
    );
    assert_eq!(
        send(&svc, get_with("/", "x-client", &big_b)).await.status(),
        200
    );
    let keys = rec.keys();
    assert_eq!(keys.len(), 3);
    keys.iter().for_each(|k| assert_compact(k));
    assert_eq!(keys[0], keys[1]);
    assert_ne!(keys[0], keys[2]);
}

/// The layer reuses one key buffer for the requests it decides in place: no request's store
/// key keeps anything of the one before, whichever path each took.
#[tokio::test]
async fn store_keys_carry_nothing_of_the_request_before() {
    for rec in [recording(), recording().in_place()] {
        let premium = Policy::new(
            "premium",
            [Limit::new(Quota::per_minute(nz(5)), Algorithm::Gcra)],
        )
        .unwrap();
        let layer = RateLimitLayer::new(rec.clone(), Quota::per_minute(nz(5)))
            .key(Header::new("x-client"))
            .policy(move |_parts, key| (key == "vip").then(|| premium.clone()));
        let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
        let long = "a-rather-long-client-name-".repeat(30);
        for value in [long.as_str(), "b", "vip", "c", "vip"] {
            let res = send(&svc, get_with("/", "x-client", value.as_bytes())).await;
            assert_eq!(res.status(), 200);
        }
        let keys = rec.keys();
        assert_eq!(keys.len(), 5, "in place: {}", rec.is_in_place());
        assert!(keys[0].starts_with("default:#"), "{}", keys[0]);
        assert_eq!(
            keys[1..],
            ["default:b", "premium:vip", "default:c", "premium:vip"],
            "in place: {}",
            rec.is_in_place()
        );
    }
}

#[tokio::test]
async fn non_utf8_header_values_work() {
    let rec = recording();
    let layer =
        RateLimitLayer::new(rec.clone(), Quota::per_minute(nz(1))).key(Header::new("x-client"));
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    assert_eq!(
        send(&svc, get_with("/", "x-client", b"\xff\xfe\x80"))
            .await
            .status(),
        200
    );
    assert_eq!(
        send(&svc, get_with("/", "x-client", b"\xff\xfe\x80"))
            .await
            .status(),
        429
    );
    assert_eq!(
        send(&svc, get_with("/", "x-client", b"\xff\xfe\x81"))
            .await
            .status(),
        200
    );
    rec.keys().iter().for_each(|k| assert_compact(k));
}

#[tokio::test]
async fn api_keys_never_reach_the_store_in_clear() {
    let rec = recording();
    let layer = RateLimitLayer::new(rec.clone(), Quota::per_minute(nz(5))).key(ApiKey::new());
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    send(
        &svc,
        get_with("/", "authorization", b"Bearer sk_live_TOPSECRET"),
    )
    .await;
    send(&svc, get_with("/", "x-api-key", b"sk_live_OTHERSECRET")).await;
    let keys = rec.keys();
    assert_eq!(keys.len(), 2);
    for k in &keys {
        assert!(!k.contains("SECRET") && !k.contains("sk_live"), "{k}");
        assert_compact(k);
    }
}

#[tokio::test]
async fn spoofed_forwarded_for_without_trusted_proxies_gets_no_fresh_budget() {
    let clock = clock();
    let layer =
        RateLimitLayer::new(store(&clock), Quota::per_minute(nz(2))).key(ForwardedIp::new());
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    let mut allowed = 0;
    for i in 0..10u8 {
        let spoof = format!("10.0.0.{i}, 203.0.113.{i}");
        let req = from_peer(
            get_with("/", "x-forwarded-for", spoof.as_bytes()),
            [198, 51, 100, 7],
        );
        if send(&svc, req).await.status() == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 2);
}

#[tokio::test]
async fn spoofed_hops_left_of_a_trusted_proxy_are_ignored() {
    let clock = clock();
    let key = ForwardedIp::new().trust("10.0.0.0/8".parse().unwrap());
    let layer = RateLimitLayer::new(store(&clock), Quota::per_minute(nz(2))).key(key);
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    let mut allowed = 0;
    for i in 0..10u8 {
        // The client claims a new address each time; the proxy appends the real one.
        let chain = format!("192.0.2.{i}, 203.0.113.50");
        let req = from_peer(
            get_with("/", "x-forwarded-for", chain.as_bytes()),
            [10, 0, 0, 1],
        );
        if send(&svc, req).await.status() == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 2);
}

fn parts_with(headers: &[(&'static str, Vec<u8>)], peer: Option<[u8; 16]>) -> http::request::Parts {
    let mut req = Request::new(());
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            req.headers_mut()
                .append(HeaderName::from_static(name), value);
        }
    }
    if let Some(peer) = peer {
        req.extensions_mut().insert(std::net::IpAddr::from(peer));
    }
    req.into_parts().0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Random bytes in every header an extractor reads: no panic, and every key is compact.
    #[test]
    fn extractors_survive_random_bytes(
        value in proptest::collection::vec(any::<u8>(), 0..600),
        xff in proptest::collection::vec(prop_oneof![Just(b','), Just(b' '), Just(b'"'), Just(b'['), Just(b']'), Just(b':'), Just(b';'), Just(b'='), Just(b'.'), any::<u8>(), 0x30u8..0x3a], 0..300),
        peer in proptest::option::of(any::<[u8; 16]>()),
    ) {
        let mut fwd = b"for=".to_vec();
        fwd.extend_from_slice(&xff);
        let parts = parts_with(
            &[
                ("x-client", value.clone()),
                ("authorization", [b"Bearer ".as_slice(), &value].concat()),
                ("x-api-key", value.clone()),
                ("x-forwarded-for", xff.clone()),
                ("forwarded", fwd),
            ],
            peer,
        );
        let trusted = ForwardedIp::new().trust("::/0".parse().unwrap()).trust("0.0.0.0/0".parse().unwrap());
        let extractors: [&dyn KeyExtractor; 6] = [
            &Header::new("x-client"),
            &ApiKey::new(),
            &PeerIp::new(),
            &ForwardedIp::new(),
            &trusted,
            &trusted.clone().forwarded(),
        ];
        for e in extractors {
            if let Some(key) = e.extract(&parts) {
                prop_assert!(!key.is_empty() && key.len() <= MAX_KEY_LEN);
                prop_assert!(key.bytes().all(|b| (0x21..=0x7e).contains(&b)));
            }
        }
        // Without a peer there is never an IP key; with an untrusting extractor, the peer wins.
        let untrusting = ForwardedIp::new().client_ip(&parts);
        let expected = peer.map(|p| std::net::IpAddr::from(p).to_canonical());
        prop_assert_eq!(untrusting, expected);
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any key a closure returns is compacted before it reaches the store.
    #[test]
    fn closure_keys_are_compacted(key in ".{0,300}") {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let rec = recording();
        let k = key.clone();
        let layer = RateLimitLayer::new(rec.clone(), Quota::per_minute(nz(5)))
            .key(move |_: &http::request::Parts| Some(k.clone()));
        let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
        let res = rt.block_on(send(&svc, get("/")));
        if key.is_empty() {
            prop_assert_eq!(res.status(), 400);
        } else {
            prop_assert_eq!(res.status(), 200);
            let keys = rec.keys();
            prop_assert_eq!(keys.len(), 1);
            assert_compact(&keys[0]);
        }
    }
}
