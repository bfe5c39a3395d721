//! [`PeerIp`], the peer address lookup, and [`Cidr`] ranges of trusted proxies.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use http::request::Parts;
use rate_limit_core::ConfigError;

use super::KeyExtractor;

/// The IP address of the connection's peer.
///
/// The address is read from the request extensions, where the server puts it:
///
/// - with the `axum` feature, axum's `ConnectInfo<SocketAddr>` (serve with
///   `into_make_service_with_connect_info::<SocketAddr>()`);
/// - a plain [`SocketAddr`] or [`IpAddr`] extension, which a hyper server inserts itself:
///   `req.extensions_mut().insert(peer_addr)` in its `service_fn`.
///
/// Without either there is no key; under [`MissingKey::Reject`](crate::MissingKey::Reject) (the
/// default) the layer answers 400 and logs once, at WARN, which of the two the server is
/// missing. The fix, in axum: serve with
/// `axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())` and turn on
/// this crate's `axum` feature; in hyper: insert the address the listener returned into each
/// request's extensions.
///
/// IPv6 peers are keyed by their /64 network by default, since one client usually holds a whole
/// /64; IPv4-mapped IPv6 addresses count as IPv4.
///
/// ```
/// use std::net::SocketAddr;
/// use tower_ratelimit::key::{KeyExtractor, PeerIp};
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(SocketAddr::from(([0x2001, 0xdb8, 1, 2, 3, 4, 5, 6], 443)));
/// let (parts, ()) = req.into_parts();
/// assert_eq!(PeerIp::new().extract(&parts).as_deref(), Some("2001:db8:1:2::/64"));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct PeerIp {
    v6_prefix: u8,
}

impl PeerIp {
    /// IPv4 peers by address, IPv6 peers by /64.
    pub fn new() -> Self {
        Self { v6_prefix: 64 }
    }

    /// Keys IPv6 peers by their first `bits` bits (at most 128).
    #[must_use]
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.v6_prefix = bits.min(128);
        self
    }
}

impl Default for PeerIp {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyExtractor for PeerIp {
    fn extract(&self, parts: &Parts) -> Option<String> {
        peer_ip(parts).map(|ip| ip_key(ip, self.v6_prefix))
    }

    fn reads_peer_addr(&self) -> bool {
        true
    }
}

/// How to give the layer the peer address, for the warning logged when a request has none.
#[cfg(feature = "axum")]
pub(crate) const NO_PEER_ADDRESS: &str = "rate limit key missing: no peer address in the \
    request, so every request is rejected; with axum, serve with \
    `into_make_service_with_connect_info::<SocketAddr>()`; with hyper, insert the peer's \
    `SocketAddr` into the request extensions";

/// How to give the layer the peer address, for the warning logged when a request has none.
#[cfg(not(feature = "axum"))]
pub(crate) const NO_PEER_ADDRESS: &str = "rate limit key missing: no peer address in the \
    request, so every request is rejected; with axum, enable tower-ratelimit's `axum` feature \
    (axum's `ConnectInfo` is read only with it) and serve with \
    `into_make_service_with_connect_info::<SocketAddr>()`; with hyper, insert the peer's \
    `SocketAddr` into the request extensions";

/// The peer address the server recorded in the request extensions.
pub(crate) fn peer_ip(parts: &Parts) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0.ip().to_canonical());
    }
    if let Some(addr) = parts.extensions.get::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    parts.extensions.get::<IpAddr>().map(IpAddr::to_canonical)
}

/// An address as a key: IPv4 as it is, IPv6 masked to `v6_prefix` bits.
pub(crate) fn ip_key(ip: IpAddr, v6_prefix: u8) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) if v6_prefix >= 128 => v6.to_string(),
        IpAddr::V6(v6) => {
            let masked = Ipv6Addr::from_bits(v6.to_bits() & mask128(v6_prefix));
            format!("{masked}/{v6_prefix}")
        }
    }
}

fn mask128(bits: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(bits.min(128)))
        .unwrap_or(0)
}

fn mask32(bits: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(bits.min(32)))
        .unwrap_or(0)
}

/// A network range such as `10.0.0.0/8` or `2001:db8::/32`; a bare address is a single host.
///
/// ```
/// use tower_ratelimit::key::Cidr;
///
/// let net: Cidr = "10.0.0.0/8".parse()?;
/// assert!(net.contains("10.1.2.3".parse().unwrap()));
/// assert!(!net.contains("11.0.0.1".parse().unwrap()));
/// assert!("10.0.0.0/33".parse::<Cidr>().is_err());
/// # Ok::<(), rate_limit_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The range of `addr` with its first `prefix` bits fixed.
    ///
    /// # Errors
    ///
    /// `prefix` is longer than the address (32 bits for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, ConfigError> {
        let addr = addr.to_canonical();
        let (max, masked) = match addr {
            IpAddr::V4(v4) => (
                32,
                IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() & mask32(prefix))),
            ),
            IpAddr::V6(v6) => (
                128,
                IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & mask128(prefix))),
            ),
        };
        if prefix > max {
            return Err(ConfigError::new(
                "trusted proxy",
                format_args!("{addr}/{prefix}"),
                format!("prefix must be at most {max}"),
            ));
        }
        Ok(Self {
            addr: masked,
            prefix,
        })
    }

    /// Whether `ip` is inside the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                ip.to_bits() & mask32(self.prefix) == net.to_bits()
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                ip.to_bits() & mask128(self.prefix) == net.to_bits()
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::new("trusted proxy", s, "expected an address or address/prefix");
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None if addr.to_canonical().is_ipv4() => 32,
            None => 128,
        };
        Self::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts_with<T: Clone + Send + Sync + 'static>(ext: T) -> Parts {
        let mut req = http::Request::new(());
        req.extensions_mut().insert(ext);
        req.into_parts().0
    }

    #[test]
    fn ipv4_peer_is_keyed_by_address() {
        let p = parts_with(SocketAddr::from(([192, 0, 2, 7], 1234)));
        assert_eq!(PeerIp::new().extract(&p).as_deref(), Some("192.0.2.7"));
    }

    #[test]
    fn ipv6_peers_in_one_64_share_a_key() {
        let a = parts_with(IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, 1]));
        let b = parts_with(IpAddr::from([0x2001, 0xdb8, 0, 1, 0xffff, 0, 0, 9]));
        let c = parts_with(IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]));
        let k = PeerIp::new();
        assert_eq!(k.extract(&a), k.extract(&b));
        assert_ne!(k.extract(&a), k.extract(&c));
        assert_eq!(
            k.ipv6_prefix(128).extract(&a).as_deref(),
            Some("2001:db8:0:1::1")
        );
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let p = parts_with(IpAddr::from([0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0207]));
        assert_eq!(PeerIp::new().extract(&p).as_deref(), Some("192.0.2.7"));
    }

    #[test]
    fn no_peer_is_no_key() {
        let (p, ()) = http::Request::new(()).into_parts();
        assert_eq!(PeerIp::new().extract(&p), None);
    }

    #[test]
    fn cidr_parses_and_matches() {
        let n: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(n.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!n.contains("2001:db9::1".parse().unwrap()));
        assert!(!n.contains("10.0.0.1".parse().unwrap()));
        let host: Cidr = "10.0.0.1".parse().unwrap();
        assert!(host.contains("10.0.0.1".parse().unwrap()));
        assert!(!host.contains("10.0.0.2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert_eq!(
            "10.9.9.9/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!("nonsense".parse::<Cidr>().is_err());
        assert!("::/129".parse::<Cidr>().is_err());
    }
}
