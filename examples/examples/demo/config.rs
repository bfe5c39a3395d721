//! The demo's settings: environment variables over an optional TOML file.
//!
//! Every setting has an environment variable (`RATE_LIMIT`, ...) and the same name in lower
//! case in the file named by `RATELIMIT_CONFIG` (`rate_limit = 100`). The environment wins. The
//! file alone can also hold per-route policies (`[[routes]]`) and per-key tiers (`[[tiers]]`):
//!
//! ```toml
//! rate_limit = 100
//! rate_limit_window_sec = 60
//! rate_limit_algorithm = "gcra"
//! trusted_proxies = ["10.0.0.0/8"]
//!
//! [[routes]]            # POST /acquire gets its own budget
//! path = "/acquire"
//! limit = 20
//! window_sec = 1
//!
//! [[tiers]]             # these clients (values of the key header) get more, everywhere
//! name = "premium"
//! keys = ["alice", "bob"]
//! limit = 1000
//! window_sec = 60
//! ```
//!
//! A bad value is a [`ConfigError`] naming the variable (or the file key, with its entry:
//! `tiers[1].keys in demo.toml`) and that one value, any password in it masked. A wrong TOML
//! type, an unknown key, a key in two tiers, two policies with one name and two backends at once
//! are errors too (the file is read in [`file`]). With a Redis backend, so is a limit Redis
//! cannot decide exactly (a `sliding_window` limit whose `RATE_LIMIT × RATE_LIMIT_WINDOW_SEC` in
//! microseconds reaches 2^53): the demo stops at start-up rather than failing every request.

mod file;

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::str::FromStr;
use std::time::Duration;

use http::HeaderName;
use rate_limit_core::resilience::local_share;
use rate_limit_core::{Algorithm, ConfigError, Limit, Quota, RedisStore};
use redis::IntoConnectionInfo;
use tower_ratelimit::key::Cidr;

use file::FileSettings;

use crate::redact::{redact, remember_secret};

/// The endpoints a `[[routes]]` entry may give their own policy.
pub(crate) const LIMITED_ROUTES: [&str; 2] = ["/ratelimit", "/acquire"];

/// Every scalar setting, by environment variable name. The file uses the lower-case names.
pub(crate) const SETTINGS: [&str; 17] = [
    "PORT",
    "REDIS_URL",
    "REDIS_ADDR",
    "REDIS_CLUSTER_NODES",
    "REDIS_SENTINELS",
    "REDIS_SENTINEL_MASTER",
    "RATE_LIMIT",
    "RATE_LIMIT_WINDOW_SEC",
    "RATE_LIMIT_BURST",
    "RATE_LIMIT_ALGORITHM",
    "RATE_LIMIT_MAX_KEYS",
    "RATE_LIMIT_INSTANCES",
    "FAILURE_MODE",
    "REDIS_TIMEOUT_MS",
    "KEY_HEADER",
    "TRUSTED_PROXIES",
    "RATELIMIT_CONFIG",
];

/// Where rate-limit state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum Backend {
    /// An in-process [`MemoryStore`](rate_limit_core::MemoryStore): one budget per instance.
    Memory,
    /// One Redis server, by URL: one budget shared by every instance.
    Redis(String),
    /// A Redis Cluster, by the URLs of some of its nodes.
    Cluster(Vec<String>),
    /// The master of a service that Redis Sentinel monitors (`REDIS_SENTINELS`,
    /// `REDIS_SENTINEL_MASTER`), found again through the sentinels after a failover.
    Sentinel(SentinelSettings),
}

/// Where the sentinels are and how to reach the master they name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SentinelSettings {
    /// `redis://[user:password@]host:port` of each sentinel (its own AUTH).
    pub(crate) sentinels: Vec<String>,
    /// The service name the sentinels monitor.
    pub(crate) master: String,
    /// The master's AUTH and database, as `REDIS_SENTINEL_MASTER=redis://user:pw@name/db`
    /// gives them; `None` for a bare name.
    pub(crate) master_url: Option<String>,
}

impl Backend {
    /// Where state lives, for the log: `memory`, or the URL(s) with any password masked.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Memory => String::from("memory"),
            Self::Redis(url) => redact(url),
            Self::Cluster(nodes) => redact(&nodes.join(",")),
            Self::Sentinel(s) => redact(&format!(
                "{} via sentinels {}",
                s.master_url.as_deref().unwrap_or(&s.master),
                s.sentinels.join(",")
            )),
        }
    }
}

/// What happens to a request when Redis cannot decide (`FAILURE_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub(crate) enum FailureSetting {
    /// Let the request through.
    Open,
    /// Answer `503 Service Unavailable`.
    Closed,
    /// Decide with a per-instance in-memory limiter until Redis is back.
    #[default]
    Local,
}

impl FailureSetting {
    /// `open`, `closed` or `local`, as `FAILURE_MODE` spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Local => "local",
        }
    }
}

impl FromStr for FailureSetting {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        [Self::Open, Self::Closed, Self::Local]
            .into_iter()
            .find(|mode| mode.name() == wanted)
            .ok_or_else(|| {
                ConfigError::new("FAILURE_MODE", s, "expected one of open, closed, local")
            })
    }
}

/// A per-route policy from the file: the limit for one of [`LIMITED_ROUTES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteLimit {
    /// The path, `/ratelimit` or `/acquire`.
    pub(crate) path: String,
    /// The policy name (headers, metrics, store keys).
    pub(crate) name: String,
    /// The limit.
    pub(crate) limit: Limit,
}

/// A tier from the file: clients (values of the key header) with their own limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tier {
    /// The policy name.
    pub(crate) name: String,
    /// The key-header values that belong to the tier.
    pub(crate) keys: Vec<String>,
    /// The limit.
    pub(crate) limit: Limit,
}

/// The demo's whole configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) struct Config {
    /// Listen port on every interface; 0 picks a free one (the demo prints it).
    pub(crate) port: u16,
    /// Where state lives.
    pub(crate) backend: Backend,
    /// The default limit: `RATE_LIMIT` per `RATE_LIMIT_WINDOW_SEC`, burst `RATE_LIMIT_BURST`,
    /// with `RATE_LIMIT_ALGORITHM`.
    pub(crate) limit: Limit,
    /// Bound of the in-memory store (and of the local fallback).
    pub(crate) max_keys: NonZeroUsize,
    /// What happens when Redis cannot decide.
    pub(crate) failure_mode: FailureSetting,
    /// How many instances share Redis (`RATE_LIMIT_INSTANCES`, default 1): with
    /// `FAILURE_MODE=local`, each admits `1/instances` of every quota while Redis is away, and
    /// every limit (and bucket burst) must be at least this, or the demo does not start.
    pub(crate) instances: NonZeroU32,
    /// Time budget of one Redis call.
    pub(crate) redis_timeout: Duration,
    /// The header naming the client; `None` (an empty `KEY_HEADER`) keys by IP only.
    pub(crate) key_header: Option<HeaderName>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub(crate) trusted_proxies: Vec<Cidr>,
    /// Per-route policies (file only).
    pub(crate) routes: Vec<RouteLimit>,
    /// Per-key tiers (file only).
    pub(crate) tiers: Vec<Tier>,
}

impl Config {
    /// Reads the process environment (and the file `RATELIMIT_CONFIG` names, if any).
    ///
    /// # Errors
    ///
    /// A variable or file value is invalid, not UTF-8, or the file cannot be read or parsed.
    pub(crate) fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| match std::env::var(name) {
            Ok(v) => Ok(Some(v)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(raw)) => Err(ConfigError::new(
                name,
                raw.to_string_lossy(),
                "not valid UTF-8",
            )),
        })
    }

    /// Reads `vars` as if they were the whole environment (for tests).
    #[cfg(test)]
    ///
    /// # Errors
    ///
    /// As for [`from_env`](Self::from_env).
    pub(crate) fn from_vars(vars: &[(&str, &str)]) -> Result<Self, ConfigError> {
        Self::from_lookup(|name| {
            Ok(vars
                .iter()
                .rev()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned()))
        })
    }

    /// Reads settings through `lookup` (an environment variable by name).
    ///
    /// # Errors
    ///
    /// As for [`from_env`](Self::from_env).
    pub(crate) fn from_lookup(
        lookup: impl Fn(&str) -> Result<Option<String>, ConfigError>,
    ) -> Result<Self, ConfigError> {
        let mut env = BTreeMap::new();
        for name in SETTINGS {
            if let Some(value) = lookup(name)? {
                env.insert(name, value);
            }
        }
        let file = match env.get("RATELIMIT_CONFIG") {
            Some(path) => Some(FileSettings::read(path)?),
            None => None,
        };
        Sources { env, file }.config()
    }
}

/// A value and the name to blame for it (`RATE_LIMIT`, or `rate_limit in demo.toml`).
struct Setting {
    name: String,
    value: String,
}

impl Setting {
    /// The error naming this setting and its value (any password in it masked).
    fn error(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::new(
            self.name.as_str(),
            redact(&self.value),
            redact(&reason.into()),
        )
    }

    /// The same error, blamed on this setting instead of the name a library used.
    fn rename(&self, err: &ConfigError) -> ConfigError {
        self.error(err.reason())
    }
}

struct Sources {
    env: BTreeMap<&'static str, String>,
    file: Option<FileSettings>,
}

impl Sources {
    fn get(&self, name: &'static str) -> Option<Setting> {
        if let Some(value) = self.env.get(name) {
            return Some(Setting {
                name: name.to_owned(),
                value: value.clone(),
            });
        }
        let file = self.file.as_ref()?;
        let key = name.to_ascii_lowercase();
        file.scalars.get(&key).map(|value| Setting {
            name: format!("{key} in {}", file.path),
            value: value.clone(),
        })
    }

    fn config(&self) -> Result<Config, ConfigError> {
        let port = match self.get("PORT") {
            Some(s) => s
                .value
                .trim()
                .parse::<u16>()
                .map_err(|_| s.error("expected a port number, 0 to 65535"))?,
            None => 8080,
        };
        let algorithm = match self.get("RATE_LIMIT_ALGORITHM") {
            Some(s) => s.value.parse::<Algorithm>().map_err(|e| s.rename(&e))?,
            None => Algorithm::TokenBucket,
        };
        let limit = match self.get("RATE_LIMIT") {
            Some(s) => positive_u32(&s)?,
            None => NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN),
        };
        let window = self.get("RATE_LIMIT_WINDOW_SEC");
        let window_secs = match &window {
            Some(s) => positive_u64(s)?,
            None => 60,
        };
        let mut quota = Quota::with_period(limit, Duration::from_secs(window_secs))
            .map_err(|e| window.as_ref().map_or_else(|| e.clone(), |s| s.rename(&e)))?;
        if let Some(s) = self.get("RATE_LIMIT_BURST") {
            quota = quota.burst(positive_u32(&s)?).map_err(|e| s.rename(&e))?;
        }
        let max_keys = match self.get("RATE_LIMIT_MAX_KEYS") {
            Some(s) => s
                .value
                .trim()
                .parse::<NonZeroUsize>()
                .map_err(|_| s.error("expected a positive integer"))?,
            None => NonZeroUsize::new(1_000_000).unwrap_or(NonZeroUsize::MIN),
        };
        let failure_mode = match self.get("FAILURE_MODE") {
            Some(s) => s.value.parse().map_err(|e| s.rename(&e))?,
            None => FailureSetting::Local,
        };
        let instances = match self.get("RATE_LIMIT_INSTANCES") {
            Some(s) => positive_u32(&s)?,
            None => NonZeroU32::MIN,
        };
        let redis_timeout = match self.get("REDIS_TIMEOUT_MS") {
            Some(s) => Duration::from_millis(positive_u64(&s)?),
            None => Duration::from_millis(50),
        };
        let key_header = match self.get("KEY_HEADER") {
            Some(s) if s.value.trim().is_empty() => None,
            Some(s) => Some(
                HeaderName::from_bytes(s.value.trim().as_bytes())
                    .map_err(|_| s.error("not a valid header name"))?,
            ),
            None => Some(HeaderName::from_static("x-client-id")),
        };
        let trusted_proxies = match self.get("TRUSTED_PROXIES") {
            Some(s) => list(&s.value)
                .map(|cidr| cidr.parse::<Cidr>().map_err(|e| s.rename(&e)))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let (routes, tiers) = match &self.file {
            Some(file) => {
                let mut taken = vec![String::from("default")];
                (
                    file.routes(window_secs, algorithm, &mut taken)?,
                    file.tiers(window_secs, algorithm, &mut taken)?,
                )
            }
            None => (Vec::new(), Vec::new()),
        };
        let backend = self.backend()?;
        let limit = Limit::new(quota, algorithm);
        if backend != Backend::Memory {
            self.check_on_redis(&limit, &routes, &tiers)?;
        }
        if failure_mode == FailureSetting::Local && backend != Backend::Memory {
            self.check_split(&limit, &routes, &tiers, instances)?;
        }
        Ok(Config {
            port,
            backend,
            limit,
            max_keys,
            failure_mode,
            instances,
            redis_timeout,
            key_header,
            trusted_proxies,
            routes,
            tiers,
        })
    }

    /// Redis decides a limit exactly or refuses it (`Store::validate`): every limit is asked
    /// here, at start-up, and a refusal names the setting to change.
    fn check_on_redis(
        &self,
        limit: &Limit,
        routes: &[RouteLimit],
        tiers: &[Tier],
    ) -> Result<(), ConfigError> {
        if let Err(e) = RedisStore::validate_limit(limit) {
            // The limit, then the window, then the algorithm: the first one set is blamed.
            let setting = [
                "RATE_LIMIT",
                "RATE_LIMIT_WINDOW_SEC",
                "RATE_LIMIT_ALGORITHM",
            ]
            .into_iter()
            .find_map(|name| self.get(name));
            return Err(match setting {
                Some(s) => s.error(e.reason()),
                None => e,
            });
        }
        let file = self.file.as_ref().map_or("", |f| f.path.as_str());
        let named = routes.iter().map(|r| ("routes", &r.limit));
        let file_limits = named.chain(tiers.iter().map(|t| ("tiers", &t.limit)));
        let mut counts = BTreeMap::new();
        for (what, limit) in file_limits {
            let i = counts.entry(what).or_insert(0);
            if let Err(e) = RedisStore::validate_limit(limit) {
                let setting = format!("{what}[{i}].limit in {file}");
                return Err(ConfigError::new(setting, limit.quota().limit(), e.reason()));
            }
            *i += 1;
        }
        Ok(())
    }

    /// With `FAILURE_MODE=local`, each instance decides alone on its share of every limit
    /// while Redis is away: a limit (or a bucket's burst) below `RATE_LIMIT_INSTANCES` would
    /// round its share up to 1, and the instances together would admit more than the limit.
    /// Such a split stops the demo at start-up, naming both settings.
    fn check_split(
        &self,
        default: &Limit,
        routes: &[RouteLimit],
        tiers: &[Tier],
        instances: NonZeroU32,
    ) -> Result<(), ConfigError> {
        let file = self.file.as_ref().map_or("", |f| f.path.as_str());
        let name = |var: &'static str| self.get(var).map_or_else(|| var.to_owned(), |s| s.name);
        let mut named = vec![(default, name("RATE_LIMIT"), name("RATE_LIMIT_BURST"))];
        for (i, r) in routes.iter().enumerate() {
            let at = |field| format!("routes[{i}].{field} in {file}");
            named.push((&r.limit, at("limit"), at("burst")));
        }
        for (i, t) in tiers.iter().enumerate() {
            let at = |field| format!("tiers[{i}].{field} in {file}");
            named.push((&t.limit, at("limit"), at("burst")));
        }
        for (limit, limit_name, burst_name) in named {
            let Err(err) = local_share(limit, instances) else {
                continue;
            };
            let quota = limit.quota();
            let (setting, value) = if quota.limit() < instances {
                (limit_name, quota.limit())
            } else {
                (burst_name, quota.burst_size())
            };
            return Err(ConfigError::new(
                "RATE_LIMIT_INSTANCES",
                instances,
                format!(
                    "with FAILURE_MODE=local each instance decides alone on its share of \
                     {setting} `{value}` while Redis is away, and {}; raise {setting} to at \
                     least {instances} or lower RATE_LIMIT_INSTANCES",
                    err.reason()
                ),
            ));
        }
        Ok(())
    }

    fn backend(&self) -> Result<Backend, ConfigError> {
        let url = match (self.get("REDIS_URL"), self.get("REDIS_ADDR")) {
            (Some(_), Some(s)) => {
                return Err(s.error("set either REDIS_URL or REDIS_ADDR, not both"));
            }
            (Some(s), None) => Some(redis_url(&s, s.value.trim())?),
            (None, Some(s)) => Some(redis_addr(&s)?),
            (None, None) => None,
        };
        let cluster = match self.get("REDIS_CLUSTER_NODES") {
            Some(s) => {
                let nodes = list(&s.value)
                    .map(|node| redis_url(&s, node))
                    .collect::<Result<Vec<_>, _>>()?;
                if nodes.is_empty() {
                    return Err(s.error("expected comma-separated redis://host:port URLs"));
                }
                Some((s, nodes))
            }
            None => None,
        };
        if let Some((s, sentinel)) = self.sentinel()? {
            if url.is_some() || cluster.is_some() {
                return Err(s.error(
                    "set either REDIS_SENTINELS or REDIS_URL/REDIS_ADDR/REDIS_CLUSTER_NODES, \
                     not both",
                ));
            }
            return Ok(Backend::Sentinel(sentinel));
        }
        match (url, cluster) {
            (Some(_), Some((s, _))) => {
                Err(s.error("set either REDIS_CLUSTER_NODES or REDIS_URL/REDIS_ADDR, not both"))
            }
            (Some(url), None) => Ok(Backend::Redis(url)),
            (None, Some((_, nodes))) => Ok(Backend::Cluster(nodes)),
            (None, None) => Ok(Backend::Memory),
        }
    }
}

impl Sources {
    /// `REDIS_SENTINELS` and `REDIS_SENTINEL_MASTER`, which go together, with the setting
    /// to blame for a conflict with another backend.
    fn sentinel(&self) -> Result<Option<(Setting, SentinelSettings)>, ConfigError> {
        let (s, m) = match (
            self.get("REDIS_SENTINELS"),
            self.get("REDIS_SENTINEL_MASTER"),
        ) {
            (None, None) => return Ok(None),
            (Some(s), None) => {
                return Err(s.error("set REDIS_SENTINEL_MASTER too: the service's name"));
            }
            (None, Some(m)) => {
                return Err(m.error("set REDIS_SENTINELS too: host:port,host:port"));
            }
            (Some(s), Some(m)) => (s, m),
        };
        let sentinels = list(&s.value)
            .map(|addr| sentinel_url(&s, addr))
            .collect::<Result<Vec<_>, _>>()?;
        if sentinels.is_empty() {
            return Err(s.error("expected comma-separated host:port addresses of sentinels"));
        }
        let (master, master_url) = master_name(&m)?;
        Ok(Some((
            s,
            SentinelSettings {
                sentinels,
                master,
                master_url,
            },
        )))
    }
}

/// A sentinel's URL: `host:port` becomes `redis://host:port`; a `redis://` URL (the
/// sentinel's own AUTH) is taken as the client parses it.
fn sentinel_url(s: &Setting, addr: &str) -> Result<String, ConfigError> {
    if addr.contains("://") {
        let url = redis_url(s, addr)?;
        let info = url
            .as_str()
            .into_connection_info()
            .map_err(|e| s.error(format!("not a Redis URL the client accepts: {e}")))?;
        if info.redis_settings().db() != 0 {
            return Err(s.error(
                "a sentinel has no database: give the master's in \
                 REDIS_SENTINEL_MASTER=redis://[user:password@]name/db",
            ));
        }
        return Ok(url);
    }
    host_port(addr)
        .map(|addr| format!("redis://{addr}"))
        .ok_or_else(|| s.error("expected host:port, e.g. 127.0.0.1:26379"))
}

/// The service name, from `name` or `redis://[user:password@]name[/db]` (the master's AUTH and
/// database, as `REDIS_URL` gives a single node's).
fn master_name(m: &Setting) -> Result<(String, Option<String>), ConfigError> {
    let value = m.value.trim();
    if !value.contains("://") {
        let bad = value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '/');
        if bad {
            return Err(m.error("expected the service's name, e.g. mymaster"));
        }
        return Ok((value.to_owned(), None));
    }
    let url = redis_url(m, value)?;
    // The name stands where a host would: after any `user:password@`, before any `/db`.
    let authority = url["redis://".len()..]
        .split('/')
        .next()
        .unwrap_or_default();
    let name = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if name.is_empty() || name.contains(':') {
        return Err(m.error(
            "expected the service's name, or redis://[user:password@]name[/db] for the \
             master's AUTH and database (no port: the sentinels give it)",
        ));
    }
    Ok((name.to_owned(), Some(url)))
}

/// `host:port` with a host and a port from 1 to 65535.
fn host_port(addr: &str) -> Option<&str> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Some(addr)
        }
        _ => None,
    }
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn positive_u32(s: &Setting) -> Result<NonZeroU32, ConfigError> {
    s.value
        .trim()
        .parse::<NonZeroU32>()
        .map_err(|_| s.error("expected a positive integer (at most 4294967295)"))
}

fn positive_u64(s: &Setting) -> Result<u64, ConfigError> {
    s.value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| s.error("expected a positive integer"))
}

/// `url`, if the Redis client can use it. Its password, if any, is remembered first, so that
/// no message quotes it.
fn redis_url(s: &Setting, url: &str) -> Result<String, ConfigError> {
    remember_secret(url);
    if url.starts_with("rediss://") {
        return Err(s.error("TLS (rediss://) is not enabled in the demo; use redis://"));
    }
    match url.strip_prefix("redis://") {
        Some(rest) if !rest.is_empty() => {}
        _ => return Err(s.error("expected a URL like redis://[:password@]127.0.0.1:6379[/db]")),
    }
    // The client's own parser: a database that is not a number, a bad port, ...
    url.into_connection_info()
        .map_err(|e| s.error(format!("not a Redis URL the client accepts: {e}")))?;
    Ok(url.to_owned())
}

fn redis_addr(s: &Setting) -> Result<String, ConfigError> {
    host_port(s.value.trim())
        .map(|addr| format!("redis://{addr}"))
        .ok_or_else(|| s.error("expected host:port, e.g. 127.0.0.1:6379"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn err(vars: &[(&str, &str)]) -> ConfigError {
        Config::from_vars(vars).unwrap_err()
    }

    /// `vars` are refused with an error that names `setting` and `value`, and says so first.
    fn assert_names(vars: &[(&str, &str)], setting: &str, value: &str) {
        let e = err(vars);
        assert_eq!((e.setting(), e.value()), (setting, value), "{vars:?}: {e}");
        assert!(
            e.to_string()
                .starts_with(&format!("invalid {setting} `{value}`: ")),
            "{e}"
        );
    }

    #[test]
    fn defaults_match_the_documented_table() {
        let c = Config::from_vars(&[]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.backend, Backend::Memory);
        assert_eq!(c.limit.quota().limit().get(), 100);
        assert_eq!(c.limit.quota().period(), Duration::from_secs(60));
        assert_eq!(c.limit.quota().burst_size().get(), 100);
        assert_eq!(c.limit.algorithm(), Algorithm::TokenBucket);
        assert_eq!(c.max_keys.get(), 1_000_000);
        assert_eq!(c.failure_mode, FailureSetting::Local);
        assert_eq!(c.instances.get(), 1);
        assert_eq!(c.redis_timeout, Duration::from_millis(50));
        assert_eq!(c.key_header.unwrap(), "x-client-id");
        assert!(c.trusted_proxies.is_empty());
    }

    #[test]
    fn reads_every_variable() {
        let c = Config::from_vars(&[
            ("PORT", "0"),
            ("REDIS_ADDR", "127.0.0.1:6380"),
            ("RATE_LIMIT", "7"),
            ("RATE_LIMIT_WINDOW_SEC", "2"),
            ("RATE_LIMIT_BURST", "9"),
            ("RATE_LIMIT_ALGORITHM", "GCRA"),
            ("RATE_LIMIT_MAX_KEYS", "10"),
            ("FAILURE_MODE", "closed"),
            ("REDIS_TIMEOUT_MS", "25"),
            ("KEY_HEADER", "X-Api-Key"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1"),
        ])
        .unwrap();
        assert_eq!(c.port, 0);
        assert_eq!(c.backend, Backend::Redis("redis://127.0.0.1:6380".into()));
        assert_eq!(c.limit.quota().burst_size().get(), 9);
        assert_eq!(c.limit.algorithm(), Algorithm::Gcra);
        assert_eq!(c.failure_mode, FailureSetting::Closed);
        assert_eq!(c.key_header.unwrap(), "x-api-key");
        assert_eq!(c.trusted_proxies.len(), 2);
        let c = Config::from_vars(&[(
            "REDIS_CLUSTER_NODES",
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
        )])
        .unwrap();
        assert!(matches!(c.backend, Backend::Cluster(ref n) if n.len() == 2));
    }

    #[test]
    fn sentinels_and_a_master_name_select_sentinel() {
        let c = Config::from_vars(&[
            (
                "REDIS_SENTINELS",
                "127.0.0.1:26379, redis://:s3nt-pw@127.0.0.1:26380",
            ),
            ("REDIS_SENTINEL_MASTER", "mymaster"),
        ])
        .unwrap();
        let expected = SentinelSettings {
            sentinels: vec![
                "redis://127.0.0.1:26379".into(),
                "redis://:s3nt-pw@127.0.0.1:26380".into(),
            ],
            master: "mymaster".into(),
            master_url: None,
        };
        assert_eq!(c.backend, Backend::Sentinel(expected));
        assert!(!c.backend.describe().contains("s3nt-pw"));
        // The master's AUTH and database, as for a single node.
        let c = Config::from_vars(&[
            ("REDIS_SENTINELS", "127.0.0.1:26379"),
            ("REDIS_SENTINEL_MASTER", "redis://app:m4ster-pw@mymaster/2"),
        ])
        .unwrap();
        let Backend::Sentinel(s) = &c.backend else {
            panic!("{:?}", c.backend)
        };
        assert_eq!(s.master, "mymaster");
        assert_eq!(
            s.master_url.as_deref(),
            Some("redis://app:m4ster-pw@mymaster/2")
        );
        assert_eq!(
            c.backend.describe(),
            "redis://app:***@mymaster/2 via sentinels redis://127.0.0.1:26379"
        );
        // From the file, the sentinels as an array.
        let (_g, path) = file(
            "redis_sentinels = [\"127.0.0.1:26379\", \"127.0.0.1:26380\"]\n\
             redis_sentinel_master = \"mymaster\"\n",
        );
        let c = Config::from_vars(&[("RATELIMIT_CONFIG", &path)]).unwrap();
        assert!(matches!(c.backend, Backend::Sentinel(ref s) if s.sentinels.len() == 2));
    }

    #[test]
    fn bad_sentinel_settings_name_the_setting_and_value() {
        let master = ("REDIS_SENTINEL_MASTER", "mymaster");
        let sentinels = ("REDIS_SENTINELS", "127.0.0.1:26379");
        // A bad value of one setting, the other one good: the error names the bad one.
        let bad_sentinels = |v| (vec![("REDIS_SENTINELS", v), master], "REDIS_SENTINELS", v);
        let bad_master = |v| {
            let name = "REDIS_SENTINEL_MASTER";
            (vec![sentinels, (name, v)], name, v)
        };
        for (vars, setting, value) in [
            (vec![sentinels], "REDIS_SENTINELS", "127.0.0.1:26379"),
            (vec![master], "REDIS_SENTINEL_MASTER", "mymaster"),
            bad_sentinels("nohost"),
            bad_sentinels(" , "),
            bad_sentinels("127.0.0.1:0"),
            bad_sentinels("redis://127.0.0.1:26379/3"),
            bad_master(""),
            bad_master("two words"),
            bad_master("redis://mymaster:6379"),
            (
                vec![sentinels, master, ("REDIS_URL", "redis://127.0.0.1:6379")],
                "REDIS_SENTINELS",
                "127.0.0.1:26379",
            ),
            (
                vec![
                    sentinels,
                    master,
                    ("REDIS_CLUSTER_NODES", "redis://127.0.0.1:7000"),
                ],
                "REDIS_SENTINELS",
                "127.0.0.1:26379",
            ),
        ] {
            assert_names(&vars, setting, value);
        }
        // Passwords are masked in the errors.
        for (var, value) in [
            ("REDIS_SENTINELS", "redis://:pa55word@h:1/3"),
            ("REDIS_SENTINEL_MASTER", "redis://:pa55word@mymaster:6379"),
        ] {
            let vars = [sentinels, master, (var, value)];
            let e = err(&vars);
            assert_eq!(e.setting(), var, "{e}");
            assert!(!e.to_string().contains("pa55word"), "{e}");
        }
    }

    #[test]
    fn bad_values_name_the_variable_and_value() {
        for (var, value) in [
            ("PORT", "70000"),
            ("RATE_LIMIT", "abc"),
            ("RATE_LIMIT", "0"),
            ("RATE_LIMIT_WINDOW_SEC", "-1"),
            ("RATE_LIMIT_BURST", "0"),
            ("RATE_LIMIT_ALGORITHM", "leaky"),
            ("RATE_LIMIT_MAX_KEYS", "0"),
            ("RATE_LIMIT_INSTANCES", "none"),
            ("FAILURE_MODE", "maybe"),
            ("REDIS_TIMEOUT_MS", "fast"),
            ("KEY_HEADER", "bad header"),
            ("TRUSTED_PROXIES", "10.0.0.0/33"),
            ("REDIS_URL", "http://x"),
            ("REDIS_ADDR", "nohost"),
            ("REDIS_CLUSTER_NODES", ","),
            ("RATELIMIT_CONFIG", "/nonexistent/demo.toml"),
        ] {
            let e = err(&[(var, value)]);
            assert_eq!(e.setting(), var, "{e}");
            assert_eq!(e.value(), value, "{e}");
            assert!(e.to_string().contains(var), "{e}");
        }
    }

    #[test]
    fn burst_that_overflows_names_burst() {
        let e = err(&[
            ("RATE_LIMIT", "1"),
            ("RATE_LIMIT_WINDOW_SEC", "3600"),
            ("RATE_LIMIT_BURST", "4294967295"),
        ]);
        assert_eq!(e.setting(), "RATE_LIMIT_BURST");
    }

    #[test]
    fn a_local_fallback_that_would_over_admit_stops_the_demo() {
        let redis = ("REDIS_URL", "redis://127.0.0.1:6379");
        let hourly = [("RATE_LIMIT", "1"), ("RATE_LIMIT_WINDOW_SEC", "3600")];
        let ten = ("RATE_LIMIT_INSTANCES", "10");
        // Ten instances deciding alone on a share of 1 per hour would admit 10 per hour.
        let e = err(&[redis, hourly[0], hourly[1], ten]);
        assert_eq!(e.setting(), "RATE_LIMIT_INSTANCES", "{e}");
        assert_eq!(e.value(), "10");
        assert!(e.to_string().contains("RATE_LIMIT `1`"), "{e}");
        // A burst below the instance count is refused the same way, naming the burst.
        let e = err(&[redis, ("RATE_LIMIT", "100"), ("RATE_LIMIT_BURST", "5"), ten]);
        assert!(e.to_string().contains("RATE_LIMIT_BURST `5`"), "{e}");
        // So is a route's limit from the file.
        let (_guard, path) = file("[[routes]]\npath = \"/acquire\"\nlimit = 3\n");
        let e = err(&[redis, ("RATELIMIT_CONFIG", &path), ten]);
        assert!(e.to_string().contains("routes[0].limit"), "{e}");
        // Without a local fallback, or with enough to share, it starts.
        for ok in [
            vec![redis, hourly[0], hourly[1], ten, ("FAILURE_MODE", "open")],
            vec![hourly[0], hourly[1], ten],
            vec![redis, ("RATE_LIMIT", "10"), hourly[1], ten],
        ] {
            assert!(Config::from_vars(&ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn redis_url_and_cluster_conflict() {
        let e = err(&[
            ("REDIS_URL", "redis://a:1"),
            ("REDIS_CLUSTER_NODES", "redis://b:2"),
        ]);
        assert_eq!(e.setting(), "REDIS_CLUSTER_NODES");
    }

    #[test]
    fn empty_key_header_keys_by_ip() {
        let c = Config::from_vars(&[("KEY_HEADER", "")]).unwrap();
        assert_eq!(c.key_header, None);
    }

    pub(super) fn file(text: &str) -> (tempfile_path::Guard, String) {
        let guard = tempfile_path::Guard::new(text);
        let path = guard.0.display().to_string();
        (guard, path)
    }

    /// A file removed on drop, without a dependency for it.
    pub(super) mod tempfile_path {
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU32, Ordering};

        pub(in crate::config) struct Guard(pub(in crate::config) PathBuf);

        impl Guard {
            pub(in crate::config) fn new(text: &str) -> Self {
                static N: AtomicU32 = AtomicU32::new(0);
                let n = N.fetch_add(1, Ordering::Relaxed);
                let path = std::env::temp_dir()
                    .join(format!("demo-config-{}-{n}.toml", std::process::id()));
                std::fs::write(&path, text).unwrap();
                Self(path)
            }
        }

        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn file_settings_routes_and_tiers_with_env_on_top() {
        let (_g, path) = file(
            r#"
rate_limit = 10
rate_limit_window_sec = 30
rate_limit_algorithm = "fixed_window"
trusted_proxies = ["10.0.0.0/8", "172.16.0.0/12"]

[[routes]]
path = "/acquire"
limit = 50
window_sec = 1
algorithm = "gcra"

[[tiers]]
name = "premium"
keys = ["alice"]
limit = 1000
"#,
        );
        let c = Config::from_vars(&[("RATELIMIT_CONFIG", &path), ("RATE_LIMIT", "20")]).unwrap();
        assert_eq!(c.limit.quota().limit().get(), 20, "the environment wins");
        assert_eq!(c.limit.quota().period(), Duration::from_secs(30));
        assert_eq!(c.limit.algorithm(), Algorithm::FixedWindow);
        assert_eq!(c.trusted_proxies.len(), 2);
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].name, "acquire");
        assert_eq!(c.routes[0].limit.algorithm(), Algorithm::Gcra);
        assert_eq!(c.routes[0].limit.quota().period(), Duration::from_secs(1));
        assert_eq!(c.tiers[0].keys, ["alice"]);
        assert_eq!(c.tiers[0].limit.quota().period(), Duration::from_secs(30));
        assert_eq!(c.tiers[0].limit.algorithm(), Algorithm::FixedWindow);
    }

    #[test]
    fn limits_redis_cannot_decide_exactly_stop_the_start_on_redis_only() {
        let wide = [
            ("RATE_LIMIT", "200000"),
            ("RATE_LIMIT_WINDOW_SEC", "86400"),
            ("RATE_LIMIT_ALGORITHM", "sliding_window"),
        ];
        // In memory, 200,000 per day is exact.
        assert!(Config::from_vars(&wide).is_ok());
        for backend in [
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("REDIS_CLUSTER_NODES", "redis://127.0.0.1:7000"),
        ] {
            let e = err(&[wide[0], wide[1], wide[2], backend]);
            assert_eq!((e.setting(), e.value()), ("RATE_LIMIT", "200000"), "{e}");
            assert!(e.reason().contains("2^53"), "{e}");
        }
        // Buckets are exact on Redis at any rate.
        let fast = [
            ("RATE_LIMIT", "4000000000"),
            ("RATE_LIMIT_WINDOW_SEC", "1"),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
        ];
        assert!(Config::from_vars(&fast).is_ok());
        // A tier from the file is named by its place in the file.
        let (_g, path) = file(
            "[[tiers]]\nname = \"x\"\nkeys = [\"a\"]\nlimit = 200000\nwindow_sec = 86400\n\
             algorithm = \"sliding_window\"\n",
        );
        let e = err(&[
            ("RATELIMIT_CONFIG", &path),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
        ]);
        assert_eq!(e.setting(), format!("tiers[0].limit in {path}"), "{e}");
        assert_eq!(e.value(), "200000");
    }

    #[test]
    fn every_kind_of_bad_environment_setting_names_the_variable_and_value() {
        for (vars, setting, value) in [
            (vec![("RATE_LIMIT", "")], "RATE_LIMIT", ""),
            (vec![("RATE_LIMIT", "1.5")], "RATE_LIMIT", "1.5"),
            (
                vec![("RATE_LIMIT_INSTANCES", "0")],
                "RATE_LIMIT_INSTANCES",
                "0",
            ),
            (vec![("REDIS_TIMEOUT_MS", "0")], "REDIS_TIMEOUT_MS", "0"),
            (vec![("PORT", "-1")], "PORT", "-1"),
            (
                vec![("REDIS_URL", "redis://h:1/x")],
                "REDIS_URL",
                "redis://h:1/x",
            ),
            (
                vec![("REDIS_URL", "redis://h:99999")],
                "REDIS_URL",
                "redis://h:99999",
            ),
            (
                vec![("REDIS_URL", "redis://h:1"), ("REDIS_ADDR", "h:1")],
                "REDIS_ADDR",
                "h:1",
            ),
            (vec![("REDIS_ADDR", "h:0")], "REDIS_ADDR", "h:0"),
            (
                vec![("REDIS_CLUSTER_NODES", "redis://h:1,nope")],
                "REDIS_CLUSTER_NODES",
                "redis://h:1,nope",
            ),
            (
                vec![("TRUSTED_PROXIES", "10.0.0.0/8,x")],
                "TRUSTED_PROXIES",
                "10.0.0.0/8,x",
            ),
            (vec![("KEY_HEADER", "a:b")], "KEY_HEADER", "a:b"),
        ] {
            assert_names(&vars, setting, value);
        }
    }

    #[test]
    fn a_password_in_a_bad_redis_setting_is_masked() {
        for (var, value) in [
            ("REDIS_URL", "rediss://:pa55word@h:1"),
            ("REDIS_URL", "redis://u:pa55word@h:1/x"),
            (
                "REDIS_CLUSTER_NODES",
                "redis://:pa55word@h:1,http://:pa55word@h:2",
            ),
        ] {
            let e = err(&[(var, value)]);
            assert_eq!(e.setting(), var, "{e}");
            assert!(!e.to_string().contains("pa55word"), "{e}");
            assert!(e.value().contains(":***@h:"), "{e}");
        }
    }

    #[test]
    fn a_backend_is_described_without_its_password() {
        let c = Config::from_vars(&[("REDIS_URL", "redis://u:s3cr3t-pw@h:1/2")]).unwrap();
        assert_eq!(c.backend.describe(), "redis://u:***@h:1/2");
    }
}
