//! Helpers shared by the public-API tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use http::{Request, Response};
use rate_limit_core::{
    BoxFuture, Charge, ConfigError, Decision, Limit, ManualClock, MemoryStore, Store, StoreError,
    StoreErrorKind,
};
use tower::{Service, ServiceExt};

/// A whole minute since the epoch, so fixed windows start now.
pub const T0: Duration = Duration::from_secs(1_699_999_980);

pub fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

pub fn clock() -> ManualClock {
    ManualClock::new(T0)
}

pub fn store(clock: &ManualClock) -> MemoryStore<ManualClock> {
    MemoryStore::builder().clock(clock.clone()).build()
}

/// The inner service: 200 "ok", and counts nothing.
pub async fn ok(_req: Request<String>) -> Result<Response<String>, Infallible> {
    Ok(Response::new(String::from("ok")))
}

pub fn get(path: &str) -> Request<String> {
    Request::get(path).body(String::new()).unwrap()
}

pub fn get_with(path: &str, header: &str, value: &[u8]) -> Request<String> {
    Request::get(path)
        .header(header, value)
        .body(String::new())
        .unwrap()
}

pub fn from_peer(mut req: Request<String>, peer: [u8; 4]) -> Request<String> {
    req.extensions_mut().insert(SocketAddr::from((peer, 40000)));
    req
}

pub async fn send<S>(svc: &S, req: Request<String>) -> Response<String>
where
    S: Service<Request<String>, Response = Response<String>, Error = Infallible> + Clone,
{
    svc.clone().oneshot(req).await.unwrap()
}

pub fn header<'a, B>(res: &'a Response<B>, name: &str) -> Option<&'a str> {
    res.headers().get(name).map(|v| v.to_str().unwrap())
}

/// An IETF list field, parsed with `sfv`: each member's string and integer parameters.
pub fn ietf_list(value: &str) -> Vec<(String, Vec<(String, i64)>)> {
    let list: sfv::List = sfv::Parser::new(value).parse().unwrap();
    list.into_iter()
        .map(|entry| match entry {
            sfv::ListEntry::Item(item) => (
                item.bare_item.as_string().unwrap().as_str().to_owned(),
                item.params
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), i64::from(v.as_integer().unwrap())))
                    .collect(),
            ),
            sfv::ListEntry::InnerList(_) => panic!("inner list in {value}"),
        })
        .collect()
}

/// A store that always fails with `kind`.
#[derive(Debug)]
pub struct FailingStore(pub StoreErrorKind);

impl Store for FailingStore {
    fn check<'a>(
        &'a self,
        _key: &'a str,
        _limits: &'a [Limit],
        _cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        let kind = self.0;
        Box::pin(async move {
            let cause = std::io::Error::other("refused by the test");
            Err(StoreError::new(kind, "injected").with_source(cause))
        })
    }

    fn peek<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.check(key, limits, cost)
    }

    fn backend(&self) -> &'static str {
        "failing"
    }
}

/// A store double: it forwards to `inner`, altered by the methods that build it, and keeps
/// every key it was asked to charge (clones share the list).
#[derive(Debug, Clone)]
pub struct Double<S> {
    inner: S,
    in_place: bool,
    waits: bool,
    failing_refunds: bool,
    tick: Option<Duration>,
    backend: Option<&'static str>,
    keys: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl<S: Store> Double<S> {
    /// Forwards checks, peeks and refunds through their futures; never answers in place (the
    /// default `try_check_now` and `try_refund_now`).
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            in_place: false,
            waits: false,
            failing_refunds: false,
            tick: None,
            backend: None,
            keys: std::sync::Arc::default(),
        }
    }

    /// Also answers checks in place (`try_check_now`), when `inner` does.
    pub fn in_place(self) -> Self {
        Self {
            in_place: true,
            ..self
        }
    }

    /// Whether it answers checks in place.
    pub fn is_in_place(&self) -> bool {
        self.in_place
    }

    /// Always waits: each check and refund yields before it reaches `inner`, so the layer takes
    /// its boxed, waiting path, and, as with a remote store, a refund reaches it some time
    /// after it was sent.
    pub fn waiting(self) -> Self {
        Self {
            waits: true,
            ..self
        }
    }

    /// Every refund fails, as a store that lost its connection after the check: a connection
    /// error whose cause is "connection reset by the test".
    pub fn failing_refunds(self) -> Self {
        Self {
            failing_refunds: true,
            ..self
        }
    }

    /// Refuses (in `validate`) a limit whose emission interval is shorter than `tick`, as a
    /// store with coarse ticks.
    pub fn tick(self, tick: Duration) -> Self {
        Self {
            tick: Some(tick),
            ..self
        }
    }

    /// Its backend name (for metrics); `inner`'s when not set.
    pub fn named(self, backend: &'static str) -> Self {
        Self {
            backend: Some(backend),
            ..self
        }
    }

    /// Every key it was asked to charge, in order.
    pub fn keys(&self) -> Vec<String> {
        self.keys.lock().unwrap().clone()
    }
}

impl<S: Store> Store for Double<S> {
    fn try_check_now(
        &self,
        key: &str,
        limits: &[Limit],
        cost: NonZeroU32,
    ) -> Option<Result<Decision, StoreError>> {
        if !self.in_place {
            return None;
        }
        self.keys.lock().unwrap().push(key.to_owned());
        self.inner.try_check_now(key, limits, cost)
    }

    fn check<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.keys.lock().unwrap().push(key.to_owned());
        Box::pin(async move {
            if self.waits {
                tokio::task::yield_now().await;
            }
            self.inner.check(key, limits, cost).await
        })
    }

    fn peek<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.inner.peek(key, limits, cost)
    }

    fn refund<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        charge: Charge,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async move {
            if self.failing_refunds {
                let cause = std::io::Error::other("connection reset by the test");
                return Err(
                    StoreError::new(StoreErrorKind::Connection, "refund").with_source(cause)
                );
            }
            if self.waits {
                tokio::task::yield_now().await;
            }
            self.inner.refund(key, limits, charge).await
        })
    }

    fn backend(&self) -> &'static str {
        self.backend.unwrap_or_else(|| self.inner.backend())
    }

    fn validate(&self, limit: &Limit) -> Result<(), ConfigError> {
        match self.tick {
            Some(tick) if limit.quota().emission_interval() < tick => {
                Err(ConfigError::new("limit", limit, "below this store's tick"))
            }
            _ => self.inner.validate(limit),
        }
    }
}

/// One `tracing` event: its level, message and other fields.
#[derive(Debug, Clone)]
pub struct Logged {
    pub level: tracing::Level,
    pub message: String,
    pub fields: Vec<(&'static str, String)>,
}

impl Logged {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A `tracing` subscriber that keeps every event at INFO or above.
#[derive(Debug, Clone, Default)]
pub struct Capture(std::sync::Arc<std::sync::Mutex<Vec<Logged>>>);

impl Capture {
    /// Runs `f` with this subscriber as the thread's default.
    pub fn during<T>(&self, f: impl FnOnce() -> T) -> T {
        tracing::subscriber::with_default(self.clone(), f)
    }

    pub fn events(&self) -> Vec<Logged> {
        self.0.lock().unwrap().clone()
    }

    /// `(level, message)` of each event.
    pub fn lines(&self) -> Vec<(tracing::Level, String)> {
        self.events()
            .into_iter()
            .map(|e| (e.level, e.message))
            .collect()
    }
}

struct Fields<'a>(&'a mut Logged);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.0.message = text;
        } else {
            self.0.fields.push((field.name(), text));
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::INFO
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut logged = Logged {
            level: *event.metadata().level(),
            message: String::new(),
            fields: Vec::new(),
        };
        event.record(&mut Fields(&mut logged));
        self.0.lock().unwrap().push(logged);
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// A current-thread runtime with a timer.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}
