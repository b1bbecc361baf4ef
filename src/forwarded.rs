//! Who the downstream client is when the proxy stands behind load balancers
//! or an ingress: `trusted_proxies` names the address ranges whose
//! `X-Forwarded-For` entries are believed. Like nginx's realip module with
//! `real_ip_recursive on`, the client's address is the rightmost
//! `X-Forwarded-For` entry that is not itself a trusted proxy, read only when
//! the TCP peer is trusted; otherwise it is the peer.
//!
//! Only reading happens here: what the upstream is sent in `X-Forwarded-For`
//! (the chain with the peer appended) is [`crate::headers::add_forwarded`]'s.

use std::net::{IpAddr, SocketAddr};

use http::header::HeaderMap;
use ipnet::IpNet;

use crate::headers::X_FORWARDED_FOR;

/// At most this many `X-Forwarded-For` entries are examined: a chain of
/// trusted hops longer than any real deployment stops there, at the last
/// trusted hop, so a long header costs a bounded amount of work.
const MAX_HOPS: usize = 32;

/// The address ranges whose `X-Forwarded-For` entries are believed (the
/// top-level `trusted_proxies` of `routes.yaml`). Empty: nothing is
/// believed, and the client is the TCP peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Box<[IpNet]>);

impl TrustedProxies {
    /// Parses the configured ranges; the error names the first bad entry
    /// (its text, and why).
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, (String, String)> {
        entries.iter().map(|e| parse_range(e).map_err(|m| (e.clone(), m))).collect::<Result<_, _>>().map(TrustedProxies)
    }

    /// Whether no range is trusted (then the client is always the peer).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|range| range.contains(&ip))
    }

    /// The downstream client's address for a request that came from `peer`
    /// with these headers. `X-Forwarded-For` is read (all its field lines,
    /// in order) only when `peer` is trusted; walking it from the right,
    /// trusted hops are passed over and the first untrusted address is the
    /// client. A chain of trusted hops only yields its leftmost. An entry
    /// that is no address (`unknown`, garbage, an obfuscated name) stops the
    /// walk: the client is then the last good hop, the trusted proxy that
    /// wrote the bad entry (or the peer), never an address further left,
    /// which whoever sent the bad entry could have chosen.
    ///
    /// Reads without allocating. IPv4-mapped IPv6 addresses (a dual-stack
    /// listener's view of IPv4 peers) count as the IPv4 address.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if self.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        let mut hops = 0;
        for line in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
            // A field line that is not visible ASCII is one bad entry.
            let Ok(text) = line.to_str() else { return client };
            for entry in text.rsplit(',') {
                let Some(hop) = parse_entry(entry.trim_matches([' ', '\t'])) else { return client };
                client = hop;
                hops += 1;
                if !self.trusts(hop) || hops == MAX_HOPS {
                    return client;
                }
            }
        }
        client
    }
}

/// One entry: an address, or an address with a port as some balancers
/// write it (`192.0.2.1:4711`, `[2001:db8::1]:4711`), or a bracketed IPv6
/// address; anything else is `None`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    let bracketed = entry.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<std::net::Ipv6Addr>().ok().map(|ip| IpAddr::V6(ip).to_canonical())
}

/// A range as written: `10.0.0.0/8`, `fd00::/8`, or a single address. A
/// range with bits set past its prefix (`10.0.0.1/8`) is refused: it is
/// likely a typo, and which hosts it means would be a guess.
fn parse_range(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let range: IpNet = text
        .parse()
        .map_err(|_| format!("trusted_proxies: {text:?} is not an address or a CIDR range like \"10.0.0.0/8\""))?;
    if range.trunc() != range {
        return Err(format!(
            "trusted_proxies: {text:?} has bits set past its /{} prefix (did you mean \"{}\"?)",
            range.prefix_len(),
            range.trunc()
        ));
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use http::header::HeaderValue;

    use super::*;

    fn trusted(ranges: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&ranges.iter().map(|r| r.to_string()).collect::<Vec<_>>()).expect("valid ranges")
    }

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(&X_FORWARDED_FOR, HeaderValue::from_str(line).unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    const LB: &str = "10.0.0.5";

    fn client(ranges: &[&str], peer: &str, lines: &[&str]) -> IpAddr {
        trusted(ranges).client_ip(ip(peer), &xff(lines))
    }

    #[test]
    fn without_trusted_proxies_the_client_is_the_peer_whatever_the_header_says() {
        assert_eq!(client(&[], LB, &["203.0.113.7"]), ip(LB));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_the_header_says() {
        assert_eq!(client(&["10.0.0.0/8"], "198.51.100.1", &["203.0.113.7"]), ip("198.51.100.1"));
    }

    #[test]
    fn behind_a_trusted_proxy_the_client_is_the_rightmost_untrusted_entry() {
        let ranges = ["10.0.0.0/8"];
        assert_eq!(client(&ranges, LB, &["203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(client(&ranges, LB, &["203.0.113.7, 10.1.2.3"]), ip("203.0.113.7"), "a second trusted hop");
        assert_eq!(client(&ranges, LB, &["1.1.1.1, 203.0.113.7"]), ip("203.0.113.7"), "a spoofed left entry");
        assert_eq!(client(&ranges, LB, &["1.1.1.1", "203.0.113.7,10.1.2.3"]), ip("203.0.113.7"), "field lines");
    }

    #[test]
    fn a_chain_of_trusted_hops_yields_its_leftmost_and_no_header_the_peer() {
        let ranges = ["10.0.0.0/8"];
        assert_eq!(client(&ranges, LB, &["10.9.9.9, 10.1.2.3"]), ip("10.9.9.9"));
        assert_eq!(client(&ranges, LB, &[]), ip(LB));
    }

    #[test]
    fn a_malformed_entry_stops_the_walk_at_the_last_good_hop() {
        let ranges = ["10.0.0.0/8"];
        assert_eq!(client(&ranges, LB, &["203.0.113.7, unknown"]), ip(LB), "the peer wrote garbage");
        assert_eq!(client(&ranges, LB, &["203.0.113.7, unknown, 10.1.2.3"]), ip("10.1.2.3"), "a trusted hop did");
        assert_eq!(client(&ranges, LB, &["203.0.113.7, , 10.1.2.3"]), ip("10.1.2.3"), "an empty entry");
        assert_eq!(client(&ranges, LB, &["203.0.113.7", ""]), ip(LB), "an empty line");
        let mut headers = xff(&["203.0.113.7"]);
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_bytes(b"10.1.2.3, \xff").unwrap());
        assert_eq!(trusted(&ranges).client_ip(ip(LB), &headers), ip(LB), "a line that is not ASCII");
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_understood() {
        let ranges = ["10.0.0.0/8", "fd00::/8"];
        assert_eq!(client(&ranges, LB, &["203.0.113.7:4711"]), ip("203.0.113.7"));
        assert_eq!(client(&ranges, LB, &["[2001:db8::1]:443"]), ip("2001:db8::1"));
        assert_eq!(client(&ranges, LB, &["[2001:db8::1]"]), ip("2001:db8::1"));
        assert_eq!(client(&ranges, "::ffff:10.0.0.5", &["203.0.113.7"]), ip("203.0.113.7"), "a mapped peer");
        assert_eq!(client(&ranges, "fd00::1", &["::ffff:203.0.113.7"]), ip("203.0.113.7"));
    }

    #[test]
    fn a_long_chain_of_trusted_hops_is_walked_only_so_far() {
        let chain = (0..1000).map(|i| format!("10.0.{}.{}", i / 250, i % 250)).collect::<Vec<_>>().join(", ");
        let found = client(&["10.0.0.0/8"], LB, &[&format!("203.0.113.7, {chain}")]);
        assert_eq!(found, ip(&format!("10.0.{}.{}", (1000 - MAX_HOPS) / 250, (1000 - MAX_HOPS) % 250)));
    }

    #[test]
    fn the_peer_appended_by_the_proxy_changes_nothing() {
        // The mirror may resolve after `add_forwarded` appended the peer.
        let ranges = ["10.0.0.0/8"];
        for (peer, chain) in [(LB, "1.1.1.1, 203.0.113.7"), (LB, "10.1.1.1"), ("198.51.100.1", "203.0.113.7")] {
            let before = client(&ranges, peer, &[chain]);
            let mut headers = xff(&[chain]);
            crate::headers::add_forwarded(&mut headers, &HeaderValue::from_str(peer).unwrap(), "http", None);
            assert_eq!(trusted(&ranges).client_ip(ip(peer), &headers), before, "{peer} {chain}");
        }
        let alone = client(&ranges, LB, &[]);
        let mut headers = HeaderMap::new();
        crate::headers::add_forwarded(&mut headers, &HeaderValue::from_static(LB), "http", None);
        assert_eq!(trusted(&ranges).client_ip(ip(LB), &headers), alone);
    }

    #[test]
    fn ranges_are_cidrs_or_addresses_and_host_bits_are_refused() {
        assert_eq!(trusted(&["10.0.0.5"]).client_ip(ip(LB), &xff(&["203.0.113.7"])), ip("203.0.113.7"));
        assert!(TrustedProxies::parse(&["10.0.0.0/8".into(), "::1".into(), "fd00::/8".into()]).is_ok());
        let refused = |text: &str| TrustedProxies::parse(&[text.to_string()]).expect_err(text);
        assert_eq!(refused("10.0.0.0/33").0, "10.0.0.0/33");
        assert!(refused("ten/8").1.contains("not an address or a CIDR range"));
        assert!(refused("10.0.0.1/8").1.contains("did you mean \"10.0.0.0/8\""), "{:?}", refused("10.0.0.1/8"));
    }
}
