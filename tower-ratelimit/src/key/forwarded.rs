//! [`ForwardedIp`]: the client address behind trusted reverse proxies.

use std::net::{IpAddr, SocketAddr};

use http::HeaderName;
use http::header::FORWARDED;
use http::request::Parts;

use super::KeyExtractor;
use super::ip::{Cidr, ip_key, peer_ip};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    XForwardedFor,
    Forwarded,
    XRealIp,
}

/// The client address as reported by trusted reverse proxies, in `X-Forwarded-For`, the
/// RFC 7239 `Forwarded` header, or the single address of `X-Real-IP`.
///
/// Only trusted proxies are believed: those whose address is in a [trusted](Self::trust) range,
/// and the [last `n` hops](Self::trust_hops) of the chain when you know how many proxies stand
/// in front of the application but not their addresses (a cloud load balancer). The extractor
/// starts at the peer of the connection and walks the forwarding chain from the right, past every
/// trusted hop; the first hop that is not trusted is the client. Without trusted proxies (or when
/// the peer itself is not trusted) the peer address is the key, so a client that sends its own
/// `X-Forwarded-For` cannot get a fresh budget. A hop that cannot be read (`unknown`, an
/// obfuscated name, garbage) stops the walk at the last trusted hop.
///
/// Pick the header your proxy writes: a client can send the other one too, and it would not be
/// checked. The peer address is read as by [`PeerIp`](super::PeerIp); with no peer address there
/// is no key.
///
/// ```
/// use std::net::SocketAddr;
/// use tower_ratelimit::key::{ForwardedIp, KeyExtractor};
///
/// let key = ForwardedIp::new().trust("10.0.0.0/8".parse()?);
/// let mut req = http::Request::get("/")
///     .header("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.2")
///     .body(())
///     .unwrap();
/// req.extensions_mut().insert(SocketAddr::from(([10, 0, 0, 1], 80)));
/// let (parts, ()) = req.into_parts();
/// // 10.0.0.1 (peer) and 10.0.0.2 are trusted proxies; 1.1.1.1 is whatever the client claimed.
/// assert_eq!(key.extract(&parts).as_deref(), Some("203.0.113.9"));
/// # Ok::<(), rate_limit_core::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ForwardedIp {
    trusted: Vec<Cidr>,
    /// The number of hops, counting the peer, that are proxies whatever their address.
    hops: usize,
    source: Source,
    v6_prefix: u8,
}

impl ForwardedIp {
    /// Reads `X-Forwarded-For`; trusts no proxy until told to.
    pub fn new() -> Self {
        Self {
            trusted: Vec::new(),
            hops: 0,
            source: Source::XForwardedFor,
            v6_prefix: 64,
        }
    }

    /// Reads the RFC 7239 `Forwarded` header (its `for=` parameters) instead.
    #[must_use]
    pub fn forwarded(mut self) -> Self {
        self.source = Source::Forwarded;
        self
    }

    /// Reads `X-Real-IP` instead: the one client address a proxy such as nginx writes
    /// (`proxy_set_header X-Real-IP $remote_addr`). It is believed only when the peer is a
    /// trusted proxy; otherwise, or when it cannot be read, the peer is the client.
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use tower_ratelimit::key::{ForwardedIp, KeyExtractor};
    ///
    /// let key = ForwardedIp::new().real_ip().trust("10.0.0.0/8".parse()?);
    /// let mut req = http::Request::get("/").header("x-real-ip", "203.0.113.9").body(()).unwrap();
    /// req.extensions_mut().insert(SocketAddr::from(([10, 0, 0, 1], 80)));
    /// let (parts, ()) = req.into_parts();
    /// assert_eq!(key.extract(&parts).as_deref(), Some("203.0.113.9"));
    /// # Ok::<(), tower_ratelimit::ConfigError>(())
    /// ```
    #[must_use]
    pub fn real_ip(mut self) -> Self {
        self.source = Source::XRealIp;
        self
    }

    /// Trusts the proxies in `range`.
    #[must_use]
    pub fn trust(mut self, range: Cidr) -> Self {
        self.trusted.push(range);
        self
    }

    /// Trusts the last `n` hops, whatever their addresses: the peer of the connection and the
    /// `n - 1` rightmost entries of the chain are proxies, so the client is the `n`-th entry
    /// from the right (`1`: the peer is your only proxy and the rightmost entry is the client).
    /// Hops in a [trusted range](Self::trust) are passed as well. With `X-Real-IP`, any `n` of
    /// at least 1 trusts the peer.
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use tower_ratelimit::key::{ForwardedIp, KeyExtractor};
    ///
    /// // A load balancer, then an ingress proxy, then the application.
    /// let key = ForwardedIp::new().trust_hops(2);
    /// let mut req = http::Request::get("/")
    ///     .header("x-forwarded-for", "6.6.6.6, 203.0.113.9, 172.16.0.4")
    ///     .body(())
    ///     .unwrap();
    /// req.extensions_mut().insert(SocketAddr::from(([172, 16, 0, 5], 80)));
    /// let (parts, ()) = req.into_parts();
    /// assert_eq!(key.extract(&parts).as_deref(), Some("203.0.113.9"));
    /// ```
    #[must_use]
    pub fn trust_hops(mut self, n: usize) -> Self {
        self.hops = n;
        self
    }

    /// Keys IPv6 clients by their first `bits` bits (default 64, at most 128).
    #[must_use]
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.v6_prefix = bits.min(128);
        self
    }

    /// The client address for this request, or `None` when the peer address is unknown.
    pub fn client_ip(&self, parts: &Parts) -> Option<IpAddr> {
        let peer = peer_ip(parts)?;
        if !self.is_trusted(peer, 0) {
            return Some(peer);
        }
        let mut nearest = peer;
        let name = match self.source {
            Source::XForwardedFor => &X_FORWARDED_FOR,
            Source::Forwarded => &FORWARDED,
            Source::XRealIp => {
                let real = parts.headers.get(X_REAL_IP).map(|v| v.as_bytes());
                return Some(real.and_then(parse_node).unwrap_or(peer));
            }
        };
        // Header lines in order, each split at commas; walked from the right.
        let hops = parts
            .headers
            .get_all(name)
            .iter()
            .rev()
            .flat_map(|v| v.as_bytes().rsplit(|&b| b == b','));
        for (position, hop) in (1..).zip(hops) {
            let ip = match self.source {
                Source::XForwardedFor | Source::XRealIp => parse_node(hop),
                Source::Forwarded => forwarded_for(hop),
            };
            match ip {
                Some(ip) if self.is_trusted(ip, position) => nearest = ip,
                Some(ip) => return Some(ip),
                None => return Some(nearest),
            }
        }
        Some(nearest)
    }

    /// Whether the hop at `position` from the right (the peer is 0) is a trusted proxy.
    fn is_trusted(&self, ip: IpAddr, position: usize) -> bool {
        position < self.hops || self.trusted.iter().any(|range| range.contains(ip))
    }
}

impl Default for ForwardedIp {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyExtractor for ForwardedIp {
    fn extract(&self, parts: &Parts) -> Option<String> {
        self.client_ip(parts).map(|ip| ip_key(ip, self.v6_prefix))
    }

    fn reads_peer_addr(&self) -> bool {
        true
    }
}

/// The `for=` node of one `Forwarded` element (`for=192.0.2.1;proto=https`).
fn forwarded_for(element: &[u8]) -> Option<IpAddr> {
    element.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let (name, value) = pair.split_at_checked(4)?;
        name.eq_ignore_ascii_case(b"for=")
            .then(|| parse_node(value))?
    })
}

/// A node: `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`, `[2001:db8::1]:80`, optionally quoted.
fn parse_node(node: &[u8]) -> Option<IpAddr> {
    let mut node = node.trim_ascii();
    if let [b'"', inner @ .., b'"'] = node {
        node = inner;
    }
    let text = std::str::from_utf8(node).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return inner.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    text.parse::<SocketAddr>()
        .ok()
        .map(|a| a.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(peer: [u8; 4], headers: &[(&str, &[u8])]) -> Parts {
        let mut req = http::Request::new(());
        for (name, value) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        req.extensions_mut().insert(SocketAddr::from((peer, 9)));
        req.into_parts().0
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn proxies() -> ForwardedIp {
        ForwardedIp::new().trust("10.0.0.0/8".parse().unwrap())
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        let p = parts([198, 51, 100, 1], &[("x-forwarded-for", b"1.2.3.4")]);
        assert_eq!(ForwardedIp::new().client_ip(&p), ip("198.51.100.1"));
    }

    #[test]
    fn untrusted_peer_is_the_client_even_with_trusted_ranges() {
        let p = parts([198, 51, 100, 1], &[("x-forwarded-for", b"1.2.3.4")]);
        assert_eq!(proxies().client_ip(&p), ip("198.51.100.1"));
    }

    #[test]
    fn takes_rightmost_untrusted_hop_across_header_lines() {
        let p = parts(
            [10, 0, 0, 1],
            &[
                ("x-forwarded-for", b"6.6.6.6, 5.5.5.5"),
                ("x-forwarded-for", b"203.0.113.4 , 10.1.1.1"),
            ],
        );
        assert_eq!(proxies().client_ip(&p), ip("203.0.113.4"));
    }

    #[test]
    fn all_trusted_chain_yields_leftmost_hop() {
        let p = parts([10, 0, 0, 1], &[("x-forwarded-for", b"10.9.9.9, 10.0.0.3")]);
        assert_eq!(proxies().client_ip(&p), ip("10.9.9.9"));
    }

    #[test]
    fn garbage_hop_stops_at_last_trusted_proxy() {
        let p = parts(
            [10, 0, 0, 1],
            &[("x-forwarded-for", b"1.1.1.1, bogus, 10.0.0.7")],
        );
        assert_eq!(proxies().client_ip(&p), ip("10.0.0.7"));
    }

    #[test]
    fn reads_rfc7239_for_parameters() {
        let p = parts(
            [10, 0, 0, 1],
            &[(
                "forwarded",
                b"for=9.9.9.9, for=\"[2001:db8:cafe::17]:4711\";proto=https, By=10.0.0.5;FOR=10.2.2.2",
            )],
        );
        let key = proxies().forwarded();
        assert_eq!(key.client_ip(&p), ip("2001:db8:cafe::17"));
        assert_eq!(key.extract(&p).as_deref(), Some("2001:db8:cafe::/64"));
    }

    #[test]
    fn forwarded_unknown_stops_the_walk() {
        let p = parts([10, 0, 0, 1], &[("forwarded", b"for=1.2.3.4, for=unknown")]);
        assert_eq!(proxies().forwarded().client_ip(&p), ip("10.0.0.1"));
    }

    #[test]
    fn trusting_the_last_hops_skips_that_many_whatever_their_address() {
        let xff: &[u8] = b"6.6.6.6, 203.0.113.9, 198.51.100.20";
        let p = parts([198, 51, 100, 10], &[("x-forwarded-for", xff)]);
        assert_eq!(
            ForwardedIp::new().trust_hops(0).client_ip(&p),
            ip("198.51.100.10")
        );
        assert_eq!(
            ForwardedIp::new().trust_hops(1).client_ip(&p),
            ip("198.51.100.20")
        );
        assert_eq!(
            ForwardedIp::new().trust_hops(2).client_ip(&p),
            ip("203.0.113.9")
        );
        // A chain shorter than the hops trusted: its leftmost entry.
        assert_eq!(
            ForwardedIp::new().trust_hops(9).client_ip(&p),
            ip("6.6.6.6")
        );
        // Hops and ranges together: one hop, then a proxy known by its range.
        let both = ForwardedIp::new()
            .trust_hops(1)
            .trust("198.51.100.0/24".parse().unwrap());
        assert_eq!(both.client_ip(&p), ip("203.0.113.9"));
    }

    #[test]
    fn x_real_ip_is_believed_from_trusted_peers_only() {
        let headers: &[(&str, &[u8])] = &[
            ("x-real-ip", b"203.0.113.9"),
            ("x-forwarded-for", b"6.6.6.6"),
        ];
        let trusted = parts([10, 0, 0, 1], headers);
        let untrusted = parts([198, 51, 100, 1], headers);
        let key = proxies().real_ip();
        assert_eq!(key.client_ip(&trusted), ip("203.0.113.9"));
        assert_eq!(key.client_ip(&untrusted), ip("198.51.100.1"));
        assert_eq!(
            ForwardedIp::new()
                .real_ip()
                .trust_hops(1)
                .client_ip(&untrusted),
            ip("203.0.113.9")
        );
        // Missing or unreadable: the peer.
        let bad = parts([10, 0, 0, 1], &[("x-real-ip", b"nonsense")]);
        assert_eq!(key.client_ip(&bad), ip("10.0.0.1"));
        assert_eq!(key.client_ip(&parts([10, 0, 0, 1], &[])), ip("10.0.0.1"));
    }

    #[test]
    fn nodes_with_ports_parse() {
        assert_eq!(parse_node(b" 192.0.2.1:8080 "), ip("192.0.2.1"));
        assert_eq!(parse_node(b"[::1]"), ip("::1"));
        assert_eq!(parse_node(b"\"_hidden\""), None);
        assert_eq!(parse_node(b"\xff"), None);
        assert_eq!(forwarded_for(b"for"), None);
    }
}
