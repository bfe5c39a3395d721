//! Who a request is charged to, and which policy it is charged against.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use http::HeaderName;
use http::request::Parts;
use rate_limit_core::{ConfigError, Limit};
use tower_ratelimit::Policy;
use tower_ratelimit::key::{ForwardedIp, KeyExtractor, PeerIp, compact_bytes};

use super::config::Config;

/// The demo's key: the key header's value when the request has one (`id:<value>`), otherwise
/// the client IP (`ip:<address>`), read from `X-Forwarded-For` only behind trusted proxies.
///
/// The prefixes keep the two apart, so a client cannot spend another address's budget by
/// sending that address as its id.
#[derive(Debug, Clone)]
pub(crate) struct ClientKey {
    header: Option<HeaderName>,
    ip: IpKey,
}

#[derive(Debug, Clone)]
enum IpKey {
    Peer(PeerIp),
    Forwarded(ForwardedIp),
}

impl ClientKey {
    /// The key the configuration asks for.
    pub(crate) fn from_config(config: &Config) -> Self {
        let ip = if config.trusted_proxies.is_empty() {
            IpKey::Peer(PeerIp::new())
        } else {
            let mut fwd = ForwardedIp::new();
            for cidr in &config.trusted_proxies {
                fwd = fwd.trust(*cidr);
            }
            IpKey::Forwarded(fwd)
        };
        Self {
            header: config.key_header.clone(),
            ip,
        }
    }

    /// Whether clients can name themselves with a key header (`KEY_HEADER` is not empty).
    pub(crate) fn has_header(&self) -> bool {
        self.header.is_some()
    }

    /// The key of a client the demo keys by its address `ip`, as [`extract`](Self::extract)
    /// makes it: the layer's own IP key (IPv4 as it is, IPv6 by its /64; both `PeerIp` and
    /// `ForwardedIp` key that way), prefixed `ip:`.
    pub(crate) fn for_ip(ip: IpAddr) -> String {
        let mut req = http::Request::new(());
        req.extensions_mut().insert(SocketAddr::new(ip, 0));
        let (parts, ()) = req.into_parts();
        let key = PeerIp::new()
            .extract(&parts)
            .unwrap_or_else(|| ip.to_string());
        compact_bytes(format!("ip:{key}").as_bytes())
    }

    /// The key of a client that names itself `id` (the key header's value, or `?key=`), in the
    /// compact form the layer hands to the policy hook.
    pub(crate) fn for_id(id: &[u8]) -> String {
        let key = format!("id:{}", compact_bytes(id));
        compact_bytes(key.as_bytes())
    }
}

impl KeyExtractor for ClientKey {
    fn extract(&self, parts: &Parts) -> Option<String> {
        if let Some(value) = self
            .header
            .as_ref()
            .and_then(|name| parts.headers.get(name))
            .filter(|v| !v.is_empty())
        {
            return Some(Self::for_id(value.as_bytes()));
        }
        let ip = match &self.ip {
            IpKey::Peer(peer) => peer.extract(parts),
            IpKey::Forwarded(fwd) => fwd.extract(parts),
        }?;
        Some(compact_bytes(format!("ip:{ip}").as_bytes()))
    }
}

/// Every policy of the demo: the default, per-route ones, and tiers by client key.
///
/// A client in a tier gets the tier's policy on every route; otherwise a route with its own
/// policy uses it; otherwise the default applies. Each policy is a separate budget.
#[derive(Debug, Clone)]
pub(crate) struct Policies {
    default_limit: Limit,
    default: Policy,
    routes: HashMap<String, Policy>,
    tiers: HashMap<String, Policy>,
}

impl Policies {
    /// The policies the configuration describes.
    ///
    /// # Errors
    ///
    /// A route or tier name is not a valid policy name.
    pub(crate) fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let default = Policy::new("default", [config.limit])?;
        let mut routes = HashMap::new();
        for route in &config.routes {
            let policy = Policy::new(&route.name, [route.limit])
                .map_err(|e| ConfigError::new("routes.name", &route.name, e.reason()))?;
            routes.insert(route.path.clone(), policy);
        }
        let mut tiers = HashMap::new();
        for tier in &config.tiers {
            let policy = Policy::new(&tier.name, [tier.limit])
                .map_err(|e| ConfigError::new("tiers.name", &tier.name, e.reason()))?;
            for key in &tier.keys {
                tiers.insert(ClientKey::for_id(key.as_bytes()), policy.clone());
            }
        }
        Ok(Self {
            default_limit: config.limit,
            default,
            routes,
            tiers,
        })
    }

    /// The default limit (`RATE_LIMIT` per `RATE_LIMIT_WINDOW_SEC`).
    pub(crate) fn default_limit(&self) -> &Limit {
        &self.default_limit
    }

    /// The policy for a request to `path` from the client whose (compact) key is `key`.
    pub(crate) fn pick(&self, path: &str, key: &str) -> &Policy {
        self.tiers
            .get(key)
            .or_else(|| self.routes.get(path))
            .unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(header: Option<&str>, peer: Option<[u8; 4]>) -> Parts {
        let mut req = http::Request::get("/ratelimit");
        if let Some(v) = header {
            req = req.header("x-client-id", v);
        }
        let mut req = req.body(()).unwrap();
        if let Some(ip) = peer {
            req.extensions_mut().insert(SocketAddr::from((ip, 9)));
        }
        req.into_parts().0
    }

    #[test]
    fn header_first_then_peer_ip() {
        let key = ClientKey::from_config(&Config::from_vars(&[]).unwrap());
        assert_eq!(
            key.extract(&parts(Some("alice"), Some([1, 2, 3, 4]))),
            Some("id:alice".into())
        );
        assert_eq!(
            key.extract(&parts(None, Some([1, 2, 3, 4]))),
            Some("ip:1.2.3.4".into())
        );
        assert_eq!(key.extract(&parts(Some(""), None)), None);
    }

    #[test]
    fn an_ip_is_keyed_as_a_request_from_it_is() {
        let key = ClientKey::from_config(&Config::from_vars(&[]).unwrap());
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let from = |ip: IpAddr| {
            let mut req = http::Request::get("/ratelimit").body(()).unwrap();
            req.extensions_mut().insert(SocketAddr::new(ip, 9));
            key.extract(&req.into_parts().0).unwrap()
        };
        for ip in ["1.2.3.4", "2001:db8:1:2::5", "::ffff:10.0.0.1"] {
            assert_eq!(ClientKey::for_ip(v6(ip)), from(v6(ip)), "{ip}");
        }
        // One /64, one client.
        assert_eq!(
            ClientKey::for_ip(v6("2001:db8:1:2::5")),
            ClientKey::for_ip(v6("2001:db8:1:2:ffff::1"))
        );
        assert_ne!(
            ClientKey::for_ip(v6("2001:db8:1:2::5")),
            ClientKey::for_ip(v6("2001:db8:1:3::5"))
        );
    }

    #[test]
    fn long_ids_are_compacted_like_the_layer_does() {
        let long = "x".repeat(200);
        let k = ClientKey::for_id(long.as_bytes());
        assert!(k.starts_with("id:#"), "{k}");
        assert_eq!(compact_bytes(k.as_bytes()), k);
    }

    #[test]
    fn tier_beats_route_beats_default() {
        let dir = std::env::temp_dir().join(format!("demo-policies-{}.toml", std::process::id()));
        std::fs::write(
            &dir,
            "[[routes]]\npath = \"/acquire\"\nlimit = 5\n[[tiers]]\nname = \"gold\"\nkeys = [\"alice\"]\nlimit = 500\n",
        )
        .unwrap();
        let config = Config::from_vars(&[("RATELIMIT_CONFIG", &dir.display().to_string())]);
        let _ = std::fs::remove_file(&dir);
        let p = Policies::from_config(&config.unwrap()).unwrap();
        assert_eq!(p.pick("/acquire", "id:alice").name(), "gold");
        assert_eq!(p.pick("/acquire", "id:bob").name(), "acquire");
        assert_eq!(p.pick("/ratelimit", "id:bob").name(), "default");
        assert_eq!(p.pick("/x", "k").store_key("k"), "default:k");
    }
}
