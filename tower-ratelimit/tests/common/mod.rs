//! Helpers shared by the public-API tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use http::{Request, Response};
use rate_limit_core::{
    BoxFuture, Decision, Limit, ManualClock, MemoryStore, Store, StoreError, StoreErrorKind,
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

/// A store that always waits: it forwards to `inner` through `check` and never answers in place
/// (the default `try_check_now`), so the layer takes its boxed, waiting path.
#[derive(Debug)]
pub struct Waiting<S>(pub S);

impl<S: Store> Store for Waiting<S> {
    fn check<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            self.0.check(key, limits, cost).await
        })
    }

    fn peek<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.0.peek(key, limits, cost)
    }

    fn backend(&self) -> &'static str {
        self.0.backend()
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
