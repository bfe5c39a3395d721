//! `RedisStore` over TLS (`rediss://`), against a `redis-server` that serves TLS with a
//! certificate authority made by the test (`TestCerts`).

use std::num::NonZeroU32;
use std::sync::Arc;

use integration_tests::{RedisServer, TestCerts, redis_available};
use rate_limit_core::{Algorithm, Limit, Quota, RedisStore, Store, StoreErrorKind};
use redis::TlsCertificates;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// A TLS server and the certificates it serves, or `None` where the test is skipped.
fn tls_server() -> Option<(RedisServer, TestCerts)> {
    if !redis_available() {
        return None;
    }
    let certs = TestCerts::generate()?;
    Some((RedisServer::start_tls(&certs), certs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_over_tls_decides_and_batches_exactly() {
    let Some((server, certs)) = tls_server() else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{}", server.tls_port());
    let certificates = TlsCertificates {
        client_tls: None,
        root_cert: Some(certs.ca_pem()),
    };
    let client = redis::Client::build_with_tls(url.as_str(), certificates).unwrap();
    let conn = client.get_connection_manager().await.unwrap();
    let store = Arc::new(RedisStore::builder(conn).build().unwrap());

    // One check at a time: the quota, then a denial with a wait.
    let limits = [Limit::new(Quota::per_minute(nz(5)), Algorithm::Gcra)];
    for i in 0..5 {
        let d = store
            .check("alone", &limits, NonZeroU32::MIN)
            .await
            .unwrap();
        assert!(d.is_allowed(), "check {i}");
        assert_eq!(d.remaining(), 4 - i);
    }
    let d = store
        .check("alone", &limits, NonZeroU32::MIN)
        .await
        .unwrap();
    assert!(!d.is_allowed());
    assert!(d.retry_after().is_some());

    // 64 checks at once share calls over the one TLS connection: exactly the quota passes.
    let limits = [Limit::new(
        Quota::per_minute(nz(20)),
        Algorithm::SlidingWindowLog,
    )];
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.check("crowd", &limits, NonZeroU32::MIN).await })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap().unwrap().is_allowed());
    }
    assert_eq!(admitted, 20);

    // The states live in the server: its plain port shows them.
    let keys = server.cli(&["--scan", "--pattern", "rl:*"]);
    assert!(
        keys.contains("{alone}") && keys.contains("{crowd}"),
        "{keys}"
    );
}

#[tokio::test]
async fn connect_refuses_a_certificate_no_root_vouches_for() {
    let Some((server, _certs)) = tls_server() else {
        return;
    };
    // `connect` trusts the webpki roots: the test's own CA is not one of them.
    let url = format!("rediss://127.0.0.1:{}", server.tls_port());
    let err = RedisStore::connect(&url)
        .await
        .expect_err("a certificate from an unknown CA is refused");
    assert_eq!(err.kind(), StoreErrorKind::Connection, "{err}");
    // The cause, kept as the error's source, names the certificate.
    let cause = std::error::Error::source(&err).map(ToString::to_string);
    assert!(
        cause.as_deref().is_some_and(|c| c.contains("certificate")),
        "{cause:?}"
    );
    // Plain Redis on the same server still answers: the refusal is the certificate's.
    let plain = RedisStore::connect(&server.url()).await.unwrap();
    let limits = [Limit::new(Quota::per_minute(nz(1)), Algorithm::Gcra)];
    assert!(
        plain
            .check("k", &limits, NonZeroU32::MIN)
            .await
            .unwrap()
            .is_allowed()
    );
}
