//! A scripted fake [`Store`] for the unit tests of the wrappers.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::Algorithm;
use crate::decision::{Decision, Snapshot};
use crate::error::{StoreError, StoreErrorKind};
use crate::limit::Limit;
use crate::quota::Quota;
use crate::store::{BoxFuture, Charge, Store};

/// What the next call does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Script {
    Allow,
    Deny,
    /// Denies from a local cache, without the backend (as a Redis deny-cache hit).
    Cached,
    Fail(StoreErrorKind),
    /// Never answers.
    Hang,
    /// Allows after a (Tokio) sleep.
    AllowAfter(Duration),
}

/// Plays its scripts in order, then allows.
#[derive(Debug, Default)]
pub(crate) struct Scripted {
    scripts: Mutex<VecDeque<Script>>,
    calls: AtomicUsize,
    live: std::sync::Arc<AtomicUsize>,
}

/// Counts a future alive until it is dropped.
struct Live(std::sync::Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Scripted {
    pub(crate) fn new(scripts: impl IntoIterator<Item = Script>) -> Self {
        let s = Self::default();
        s.push(scripts);
        s
    }

    pub(crate) fn push(&self, scripts: impl IntoIterator<Item = Script>) {
        self.scripts.lock().unwrap().extend(scripts);
    }

    /// Calls that reached this store.
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Calls whose future has not been dropped yet.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    fn run(&self, limits: &[Limit]) -> BoxFuture<'static, Result<Decision, StoreError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let script = self
            .scripts
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Script::Allow);
        let limit = limits.first().map_or(0, |l| l.quota().limit().get());
        self.live.fetch_add(1, Ordering::SeqCst);
        let live = Live(std::sync::Arc::clone(&self.live));
        Box::pin(async move {
            let _live = live;
            let decided = |allowed: bool| {
                let retry = (!allowed).then_some(Duration::from_secs(1));
                Ok(Decision::single(Snapshot::new(
                    allowed,
                    limit,
                    0,
                    Duration::ZERO,
                    retry,
                )))
            };
            match script {
                Script::Allow => decided(true),
                Script::Deny => decided(false),
                Script::Cached => decided(false).map(Decision::mark_cached),
                Script::Fail(kind) => Err(StoreError::new(kind, "scripted")
                    .with_source(std::io::Error::other("refused by the test"))),
                Script::Hang => std::future::pending().await,
                Script::AllowAfter(d) => {
                    tokio::time::sleep(d).await;
                    decided(true)
                }
            }
        })
    }
}

impl Store for Scripted {
    fn check<'a>(
        &'a self,
        _key: &'a str,
        limits: &'a [Limit],
        _cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.run(limits)
    }

    fn peek<'a>(
        &'a self,
        _key: &'a str,
        limits: &'a [Limit],
        _cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.run(limits)
    }

    fn refund<'a>(
        &'a self,
        _key: &'a str,
        limits: &'a [Limit],
        _charge: Charge,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.run(limits)
    }

    fn backend(&self) -> &'static str {
        "scripted"
    }
}

/// One GCRA limit of `n` per second.
pub(crate) fn limits(n: u32) -> [Limit; 1] {
    let q = Quota::per_second(NonZeroU32::new(n).unwrap());
    [Limit::new(q, Algorithm::Gcra)]
}

/// A store that forwards to `inner` while up, and fails with a connection error while down.
#[derive(Debug)]
pub(crate) struct Switch<S> {
    pub(crate) inner: S,
    down: std::sync::atomic::AtomicBool,
}

impl<S> Switch<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }
}

impl<S: Store> Store for Switch<S> {
    fn check<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        if self.is_down() {
            return Box::pin(async { Err(StoreError::new(StoreErrorKind::Connection, "down")) });
        }
        self.inner.check(key, limits, cost)
    }

    fn peek<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        if self.is_down() {
            return Box::pin(async { Err(StoreError::new(StoreErrorKind::Connection, "down")) });
        }
        self.inner.peek(key, limits, cost)
    }

    fn refund<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        charge: Charge,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        if self.is_down() {
            return Box::pin(async { Err(StoreError::new(StoreErrorKind::Connection, "down")) });
        }
        self.inner.refund(key, limits, charge)
    }

    fn backend(&self) -> &'static str {
        "switch"
    }
}

/// One `tracing` event: its level, message and other fields.
#[derive(Debug, Clone)]
pub(crate) struct Logged {
    pub(crate) level: tracing::Level,
    pub(crate) message: String,
    pub(crate) fields: Vec<(&'static str, String)>,
}

impl Logged {
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A `tracing` subscriber that keeps every event at INFO or above.
#[derive(Debug, Clone, Default)]
pub(crate) struct Capture(std::sync::Arc<Mutex<Vec<Logged>>>);

impl Capture {
    /// Runs `f` with this subscriber as the thread's default.
    pub(crate) fn during<T>(&self, f: impl FnOnce() -> T) -> T {
        tracing::subscriber::with_default(self.clone(), f)
    }

    pub(crate) fn events(&self) -> Vec<Logged> {
        self.0.lock().unwrap().clone()
    }

    /// `(level, message)` of each event.
    pub(crate) fn lines(&self) -> Vec<(tracing::Level, String)> {
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
