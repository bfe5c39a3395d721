//! The property every fuzz target checks, shared by the libFuzzer and the stable builds.

use std::net::IpAddr;

use http::request::Parts;
use http::{HeaderName, HeaderValue, Request};
use tower_ratelimit::key::{
    ApiKey, Cidr, ForwardedIp, Header, KeyExtractor, MAX_KEY_LEN, PeerIp, compact_bytes,
};

const HEADERS: [&str; 5] = [
    "x-forwarded-for",
    "forwarded",
    "x-client",
    "authorization",
    "x-api-key",
];

/// Builds a request head from `data` and runs every extractor on it.
///
/// Layout: byte 0 picks whether there is a peer and its family, bytes 1..17 are the peer
/// address, the rest is split at `\n` into header values (cycling through `HEADERS`, so a header
/// can repeat). Panics if an invariant breaks.
pub fn keys(data: &[u8]) {
    let (head, rest) = data.split_at(data.len().min(17));
    let peer = peer(head);
    let mut req = Request::new(());
    for (i, value) in rest.split(|&b| b == b'\n').enumerate() {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            let name = HeaderName::from_static(HEADERS[i % HEADERS.len()]);
            req.headers_mut().append(name, value);
        }
    }
    if let Some(peer) = peer {
        req.extensions_mut().insert(peer);
    }
    let (parts, ()) = req.into_parts();
    check_extractors(&parts, peer);

    // Compaction of raw bytes and CIDR parsing of arbitrary text.
    let key = compact_bytes(rest);
    assert_compact(&key);
    if let Ok(cidr) = String::from_utf8_lossy(rest).parse::<Cidr>() {
        let again: Cidr = cidr.to_string().parse().expect("a printed CIDR parses");
        assert_eq!(again, cidr);
    }
}

fn peer(head: &[u8]) -> Option<IpAddr> {
    let (&selector, bytes) = head.split_first()?;
    match selector % 3 {
        0 => None,
        1 => bytes
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(IpAddr::from),
        _ => bytes
            .get(..16)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(IpAddr::from),
    }
}

fn check_extractors(parts: &Parts, peer: Option<IpAddr>) {
    let trust_all = ForwardedIp::new()
        .trust("0.0.0.0/0".parse().expect("valid"))
        .trust("::/0".parse().expect("valid"));
    let trust_some = ForwardedIp::new()
        .trust("10.0.0.0/8".parse().expect("valid"))
        .trust("fc00::/7".parse().expect("valid"));
    let extractors: [&dyn KeyExtractor; 8] = [
        &Header::new("x-client"),
        &ApiKey::new(),
        &PeerIp::new(),
        &ForwardedIp::new(),
        &trust_all,
        &trust_all.clone().forwarded(),
        &trust_some,
        &trust_some.clone().forwarded(),
    ];
    for e in extractors {
        if let Some(key) = e.extract(parts) {
            assert_compact(&key);
        }
    }
    // No trusted proxy: the peer, whatever the headers claim.
    let canonical = peer.map(|p| p.to_canonical());
    assert_eq!(ForwardedIp::new().client_ip(parts), canonical);
    // No peer: never an address.
    if peer.is_none() {
        assert_eq!(trust_all.client_ip(parts), None);
    }
    // An untrusted peer is the client even when some ranges are trusted.
    if let Some(p) = canonical {
        let trusted = match p {
            IpAddr::V4(v4) => v4.octets()[0] == 10,
            IpAddr::V6(v6) => v6.octets()[0] & 0xfe == 0xfc,
        };
        if !trusted {
            assert_eq!(trust_some.client_ip(parts), Some(p));
        }
    }
}

fn assert_compact(key: &str) {
    assert!(!key.is_empty() && key.len() <= MAX_KEY_LEN, "{} bytes", key.len());
    assert!(key.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{key:?}");
}
