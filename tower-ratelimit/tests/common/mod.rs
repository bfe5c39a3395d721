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
        Box::pin(async move { Err(StoreError::new(kind, "injected")) })
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
