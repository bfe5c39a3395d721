//! The TOML file `RATELIMIT_CONFIG` names: scalar settings, `[[routes]]` and `[[tiers]]`, each
//! value checked for its TOML type, each error naming one key (`tiers[1].keys in demo.toml`)
//! and one value.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use rate_limit_core::{Algorithm, ConfigError, Limit, Quota};
use tower_ratelimit::Policy;

use super::{LIMITED_ROUTES, RouteLimit, SETTINGS, Tier};

/// What the TOML file holds: scalar settings as text, and the route and tier tables.
pub(super) struct FileSettings {
    /// The file's path, as `RATELIMIT_CONFIG` gives it.
    pub(super) path: String,
    /// Scalar settings by lower-case name, as text.
    pub(super) scalars: BTreeMap<String, String>,
    routes: Vec<toml::Table>,
    tiers: Vec<toml::Table>,
}

/// The fields a `[[routes]]` entry takes.
const ROUTE_FIELDS: [&str; 6] = ["path", "name", "limit", "window_sec", "burst", "algorithm"];
/// The fields a `[[tiers]]` entry takes.
const TIER_FIELDS: [&str; 6] = ["name", "keys", "limit", "window_sec", "burst", "algorithm"];
/// Scalar settings that take a list (a TOML array of strings, or one comma-separated string).
const LIST_SETTINGS: [&str; 3] = ["TRUSTED_PROXIES", "REDIS_CLUSTER_NODES", "REDIS_SENTINELS"];
/// Scalar settings that take a number (a TOML integer, or a string holding one).
const NUMBER_SETTINGS: [&str; 7] = [
    "PORT",
    "RATE_LIMIT",
    "RATE_LIMIT_WINDOW_SEC",
    "RATE_LIMIT_BURST",
    "RATE_LIMIT_MAX_KEYS",
    "RATE_LIMIT_INSTANCES",
    "REDIS_TIMEOUT_MS",
];

/// A `[[routes]]` or `[[tiers]]` entry, each field of the right type.
#[derive(Debug, Default)]
struct FileLimit {
    path: Option<String>,
    name: Option<String>,
    keys: Vec<String>,
    limit: Option<u64>,
    window_sec: Option<u64>,
    burst: Option<u64>,
    algorithm: Option<String>,
}

/// A TOML value as an error quotes it: a string as its text, a table or a long array by what
/// it is (an error names one value, never a whole table).
fn shown(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Table(_) => String::from("(a table)"),
        toml::Value::Array(items) if items.iter().any(|v| v.is_table() || v.is_array()) => {
            String::from("(an array of tables)")
        }
        other => other.to_string(),
    }
}

/// "found a string", "found a table", ...: for wrong-type errors.
fn found(value: &toml::Value) -> String {
    let what = match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    };
    format!("found {what}")
}

impl FileSettings {
    pub(super) fn read(path: &str) -> Result<Self, ConfigError> {
        let blame = |reason: String| ConfigError::new("RATELIMIT_CONFIG", path, reason);
        let text = std::fs::read_to_string(path).map_err(|e| blame(e.to_string()))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            // The parser's own message quotes the offending line, which may hold a password:
            // the place and the message are enough.
            let at = e.span().map_or_else(String::new, |span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |n| n + 1) + 1;
                format!(" at line {line}, column {column}")
            });
            blame(format!("not valid TOML{at}: {}", e.message().trim()))
        })?;
        let mut file = Self {
            path: path.to_owned(),
            scalars: BTreeMap::new(),
            routes: Vec::new(),
            tiers: Vec::new(),
        };
        for (key, value) in table {
            let error = |reason: String| {
                ConfigError::new(format!("{key} in {path}"), shown(&value), reason)
            };
            let setting = SETTINGS.iter().find(|s| key == s.to_ascii_lowercase());
            match (key.as_str(), setting) {
                ("routes" | "tiers", _) => {
                    let tables = match &value {
                        toml::Value::Array(entries) => entries
                            .iter()
                            .map(|v| v.as_table().cloned())
                            .collect::<Option<Vec<_>>>(),
                        _ => None,
                    };
                    let Some(tables) = tables else {
                        return Err(error(format!(
                            "expected [[{key}]] tables, {}",
                            found(&value)
                        )));
                    };
                    if key == "routes" {
                        file.routes = tables;
                    } else {
                        file.tiers = tables;
                    }
                }
                (_, Some(&"RATELIMIT_CONFIG")) => {
                    return Err(error(String::from("a file cannot name another file")));
                }
                (_, Some(name)) => {
                    let text = file_scalar(name, &value).map_err(error)?;
                    file.scalars.insert(key, text);
                }
                (_, None) => {
                    let known = SETTINGS
                        .iter()
                        .filter(|s| **s != "RATELIMIT_CONFIG")
                        .map(|s| s.to_ascii_lowercase())
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(error(format!(
                        "unknown setting; expected one of {known}, [[routes]], [[tiers]]"
                    )));
                }
            }
        }
        Ok(file)
    }

    /// The entry's fields, each checked for its type; an unknown field is an error.
    fn entry(&self, what: &str, i: usize, table: &toml::Table) -> Result<FileLimit, ConfigError> {
        let fields: &[&str] = if what == "routes" {
            &ROUTE_FIELDS
        } else {
            &TIER_FIELDS
        };
        let mut entry = FileLimit::default();
        for (field, value) in table {
            let error = |reason: String| {
                ConfigError::new(
                    format!("{what}[{i}].{field} in {}", self.path),
                    shown(value),
                    reason,
                )
            };
            let string = || match value {
                toml::Value::String(s) => Ok(s.clone()),
                other => Err(error(format!("expected a string, {}", found(other)))),
            };
            let number = || match value {
                toml::Value::Integer(n) if *n > 0 => Ok(n.unsigned_abs()),
                toml::Value::Integer(_) => Err(error(String::from("expected a positive integer"))),
                other => Err(error(format!(
                    "expected a positive integer, {}",
                    found(other)
                ))),
            };
            match field.as_str() {
                f if !fields.contains(&f) => {
                    return Err(error(format!(
                        "unknown key; a {} entry takes {}",
                        what.trim_end_matches('s'),
                        fields.join(", ")
                    )));
                }
                "path" => entry.path = Some(string()?),
                "name" => entry.name = Some(string()?),
                "algorithm" => entry.algorithm = Some(string()?),
                "limit" => entry.limit = Some(number()?),
                "window_sec" => entry.window_sec = Some(number()?),
                "burst" => entry.burst = Some(number()?),
                _ => {
                    let keys = match value {
                        toml::Value::Array(items) => items
                            .iter()
                            .map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
                            .collect::<Option<Vec<_>>>(),
                        _ => None,
                    };
                    entry.keys = keys.ok_or_else(|| {
                        error(String::from("expected an array of non-empty strings"))
                    })?;
                }
            }
        }
        Ok(entry)
    }

    fn limit(
        &self,
        what: &str,
        i: usize,
        entry: &FileLimit,
        window_secs: u64,
        algorithm: Algorithm,
    ) -> Result<Limit, ConfigError> {
        let field = |name: &str, value: &dyn std::fmt::Display, reason: &str| {
            ConfigError::new(
                format!("{what}[{i}].{name} in {}", self.path),
                value,
                reason,
            )
        };
        let Some(limit) = entry.limit else {
            return Err(field("limit", &"", "missing: every entry needs a limit"));
        };
        let limit = u32::try_from(limit)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| {
                field(
                    "limit",
                    &limit,
                    "expected a positive integer (at most 4294967295)",
                )
            })?;
        let window = entry.window_sec.unwrap_or(window_secs);
        let mut quota = Quota::with_period(limit, Duration::from_secs(window))
            .map_err(|e| field("window_sec", &window, e.reason()))?;
        if let Some(burst) = entry.burst {
            let n = u32::try_from(burst)
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or_else(|| {
                    field(
                        "burst",
                        &burst,
                        "expected a positive integer (at most 4294967295)",
                    )
                })?;
            quota = quota
                .burst(n)
                .map_err(|e| field("burst", &burst, e.reason()))?;
        }
        let algorithm = match &entry.algorithm {
            Some(a) => a
                .parse::<Algorithm>()
                .map_err(|e| field("algorithm", a, e.reason()))?,
            None => algorithm,
        };
        Ok(Limit::new(quota, algorithm))
    }

    /// The policy name of an entry, checked as the layer checks it, and distinct from every
    /// name before it (two policies with one name would share their budgets in the store).
    fn policy_name(
        &self,
        what: &str,
        i: usize,
        name: String,
        limit: Limit,
        taken: &mut Vec<String>,
    ) -> Result<String, ConfigError> {
        let error = |reason: &str| {
            ConfigError::new(format!("{what}[{i}].name in {}", self.path), &name, reason)
        };
        Policy::new(&name, [limit]).map_err(|e| error(e.reason()))?;
        if taken.contains(&name) {
            return Err(error(
                "already the name of another policy (`default`, a route or a tier); \
                 each needs its own",
            ));
        }
        taken.push(name.clone());
        Ok(name)
    }

    pub(super) fn routes(
        &self,
        window_secs: u64,
        algorithm: Algorithm,
        taken: &mut Vec<String>,
    ) -> Result<Vec<RouteLimit>, ConfigError> {
        let mut routes: Vec<RouteLimit> = Vec::new();
        for (i, table) in self.routes.iter().enumerate() {
            let entry = self.entry("routes", i, table)?;
            let path_error = |value: &str, reason: &str| {
                ConfigError::new(format!("routes[{i}].path in {}", self.path), value, reason)
            };
            let Some(path) = entry.path.clone() else {
                return Err(path_error("", "missing: a route needs a path"));
            };
            if !LIMITED_ROUTES.contains(&path.as_str()) {
                return Err(path_error(&path, "expected /ratelimit or /acquire"));
            }
            if routes.iter().any(|r| r.path == path) {
                return Err(path_error(&path, "this path already has a policy"));
            }
            let limit = self.limit("routes", i, &entry, window_secs, algorithm)?;
            let name = entry
                .name
                .clone()
                .unwrap_or_else(|| path.trim_start_matches('/').to_owned());
            let name = self.policy_name("routes", i, name, limit, taken)?;
            routes.push(RouteLimit { path, name, limit });
        }
        Ok(routes)
    }

    pub(super) fn tiers(
        &self,
        window_secs: u64,
        algorithm: Algorithm,
        taken: &mut Vec<String>,
    ) -> Result<Vec<Tier>, ConfigError> {
        let mut tiers: Vec<Tier> = Vec::new();
        for (i, table) in self.tiers.iter().enumerate() {
            let entry = self.entry("tiers", i, table)?;
            let at = |field: &str| format!("tiers[{i}].{field} in {}", self.path);
            let Some(name) = entry.name.clone() else {
                return Err(ConfigError::new(
                    at("name"),
                    "",
                    "missing: a tier needs a name",
                ));
            };
            if entry.keys.is_empty() {
                return Err(ConfigError::new(
                    at("keys"),
                    "",
                    "missing: a tier needs at least one key",
                ));
            }
            // A client in two tiers would get whichever came last: say so instead.
            for (k, key) in entry.keys.iter().enumerate() {
                let earlier = tiers
                    .iter()
                    .enumerate()
                    .find(|(_, t)| t.keys.contains(key))
                    .map(|(j, t)| format!("tiers[{j}] (`{}`)", t.name));
                let twice = entry.keys[..k]
                    .contains(key)
                    .then(|| String::from("this tier"));
                if let Some(other) = earlier.or(twice) {
                    return Err(ConfigError::new(
                        at("keys"),
                        key,
                        format!("already listed in {other}; a key belongs to one tier"),
                    ));
                }
            }
            let limit = self.limit("tiers", i, &entry, window_secs, algorithm)?;
            let name = self.policy_name("tiers", i, name, limit, taken)?;
            tiers.push(Tier {
                name,
                keys: entry.keys,
                limit,
            });
        }
        Ok(tiers)
    }
}

/// A scalar setting from the file as text, as the environment would hold it; a value of the
/// wrong TOML type is the reason returned.
fn file_scalar(name: &str, value: &toml::Value) -> Result<String, String> {
    let list = LIST_SETTINGS.contains(&name);
    let number = NUMBER_SETTINGS.contains(&name);
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) if number => Ok(n.to_string()),
        toml::Value::Array(items) if list => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(|items| items.join(","))
            .ok_or_else(|| String::from("expected an array of strings")),
        other => {
            let expected = if list {
                "an array of strings"
            } else if number {
                "an integer"
            } else {
                "a string"
            };
            Err(format!("expected {expected}, {}", found(other)))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{err, file};

    #[test]
    fn bad_file_values_name_the_key_and_file() {
        let (_g, path) = file("rate_limit = 0\n");
        let e = err(&[("RATELIMIT_CONFIG", &path)]);
        assert_eq!(e.setting(), format!("rate_limit in {path}"));
        assert_eq!(e.value(), "0");

        let (_g, path) = file("rate_limt = 5\n");
        let e = err(&[("RATELIMIT_CONFIG", &path)]);
        assert_eq!(e.setting(), format!("rate_limt in {path}"), "{e}");

        let (_g, path) = file("[[routes]]\npath = \"/healthz\"\nlimit = 1\n");
        let e = err(&[("RATELIMIT_CONFIG", &path)]);
        assert!(e.setting().starts_with("routes[0].path"), "{e}");

        let (_g, path) = file("[[tiers]]\nname = \"x\"\nkeys = [\"a\"]\nlimit = 0\n");
        let e = err(&[("RATELIMIT_CONFIG", &path)]);
        assert!(e.setting().starts_with("tiers[0].limit"), "{e}");

        let (_g, path) = file("[[tiers]]\nname = \"x\"\nkeys = [\"a\"]\nlimit = 1\nsurprise = 1\n");
        let e = err(&[("RATELIMIT_CONFIG", &path)]);
        assert_eq!(e.setting(), format!("tiers[0].surprise in {path}"), "{e}");

        let (_g, path) = file("this is not toml");
        assert_eq!(
            err(&[("RATELIMIT_CONFIG", &path)]).setting(),
            "RATELIMIT_CONFIG"
        );
    }

    /// Every kind of bad setting: the error names the setting (with the file and the entry for
    /// the file) and the one bad value, never a whole table, in one format.
    #[test]
    fn every_kind_of_bad_file_setting_names_one_setting_and_one_value() {
        let tier = "[[tiers]]\nname = \"gold\"\nkeys = [\"alice\"]\nlimit = 10\n";
        let route = "[[routes]]\npath = \"/acquire\"\nlimit = 5\n";
        let cases: Vec<(String, &str, &str)> = vec![
            // Scalars of the wrong type, or unknown.
            ("rate_limit = \"ten\"\n".into(), "rate_limit", "ten"),
            ("rate_limit = 1.5\n".into(), "rate_limit", "1.5"),
            ("key_header = true\n".into(), "key_header", "true"),
            (
                "trusted_proxies = [1, 2]\n".into(),
                "trusted_proxies",
                "[1, 2]",
            ),
            (
                "failure_mode = [\"open\"]\n".into(),
                "failure_mode",
                "[\"open\"]",
            ),
            ("rate_limt = 5\n".into(), "rate_limt", "5"),
            ("RATE_LIMIT = 5\n".into(), "RATE_LIMIT", "5"),
            (
                "ratelimit_config = \"x.toml\"\n".into(),
                "ratelimit_config",
                "x.toml",
            ),
            ("routes = 3\n".into(), "routes", "3"),
            (
                "[routes]\npath = \"/acquire\"\n".into(),
                "routes",
                "(a table)",
            ),
            // [[routes]] entries: each field by itself.
            (format!("{route}surprise = 1\n"), "routes[0].surprise", "1"),
            (
                "[[routes]]\npath = \"/acquire\"\nlimit = \"ten\"\n".into(),
                "routes[0].limit",
                "ten",
            ),
            (
                "[[routes]]\npath = \"/acquire\"\nlimit = -1\n".into(),
                "routes[0].limit",
                "-1",
            ),
            (
                "[[routes]]\npath = \"/acquire\"\n".into(),
                "routes[0].limit",
                "",
            ),
            (
                "[[routes]]\npath = 1\nlimit = 1\n".into(),
                "routes[0].path",
                "1",
            ),
            (
                "[[routes]]\npath = \"/x\"\nlimit = 1\n".into(),
                "routes[0].path",
                "/x",
            ),
            ("[[routes]]\nlimit = 1\n".into(), "routes[0].path", ""),
            (format!("{route}{route}"), "routes[1].path", "/acquire"),
            (
                format!("{route}window_sec = 0\n"),
                "routes[0].window_sec",
                "0",
            ),
            (
                format!("{route}burst = 5000000000\n"),
                "routes[0].burst",
                "5000000000",
            ),
            (
                format!("{route}algorithm = \"leaky\"\n"),
                "routes[0].algorithm",
                "leaky",
            ),
            (
                format!("{route}name = \"two words\"\n"),
                "routes[0].name",
                "two words",
            ),
            (
                format!("{route}name = \"default\"\n"),
                "routes[0].name",
                "default",
            ),
            (
                format!("{route}keys = [\"a\"]\n"),
                "routes[0].keys",
                "[\"a\"]",
            ),
            // [[tiers]] entries.
            (
                format!("{tier}path = \"/acquire\"\n"),
                "tiers[0].path",
                "/acquire",
            ),
            (
                "[[tiers]]\nkeys = [\"a\"]\nlimit = 1\n".into(),
                "tiers[0].name",
                "",
            ),
            (
                "[[tiers]]\nname = \"t\"\nlimit = 1\n".into(),
                "tiers[0].keys",
                "",
            ),
            (
                "[[tiers]]\nname = \"t\"\nkeys = \"a\"\nlimit = 1\n".into(),
                "tiers[0].keys",
                "a",
            ),
            (
                "[[tiers]]\nname = \"t\"\nkeys = [1]\nlimit = 1\n".into(),
                "tiers[0].keys",
                "[1]",
            ),
            (
                format!(
                    "{tier}[[tiers]]\nname = \"silver\"\nkeys = [\"bob\", \"alice\"]\nlimit = 5\n"
                ),
                "tiers[1].keys",
                "alice",
            ),
            (
                "[[tiers]]\nname = \"t\"\nkeys = [\"a\", \"a\"]\nlimit = 1\n".into(),
                "tiers[0].keys",
                "a",
            ),
            (
                format!("{route}[[tiers]]\nname = \"acquire\"\nkeys = [\"a\"]\nlimit = 1\n"),
                "tiers[0].name",
                "acquire",
            ),
        ];
        for (text, setting, value) in cases {
            let (_g, path) = file(&text);
            let e = err(&[("RATELIMIT_CONFIG", &path)]);
            let setting = format!("{setting} in {path}");
            assert_eq!(
                (e.setting(), e.value()),
                (setting.as_str(), value),
                "{text}: {e}"
            );
            assert!(
                e.to_string()
                    .starts_with(&format!("invalid {setting} `{value}`: ")),
                "{e}"
            );
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
}
