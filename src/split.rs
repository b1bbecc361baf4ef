//! Canary splits: which upstream of a weighted split takes a request.
//!
//! Without a sticky key the choice is random by weight. With one, the choice
//! is weighted rendezvous hashing: each upstream scores the key as
//! `weight / -ln(hash(key, upstream))` and the highest score wins. Raising
//! one upstream's weight raises only its own scores, so keys can only move
//! *to* the upstream that gained — a user already on the new service is
//! never bounced back as its share grows — and with unchanged weights a key
//! always lands on the same upstream, on every replica (the hash is stable).

use http::header::{self, HeaderMap, HeaderName};

/// Where the sticky key of a request comes from.
#[derive(Debug, Clone)]
pub enum StickyKey {
    Header(HeaderName),
    Cookie(Box<str>),
}

impl StickyKey {
    /// The key's value in this request, if it has one.
    pub fn extract<'h>(&self, headers: &'h HeaderMap) -> Option<&'h [u8]> {
        match self {
            StickyKey::Header(name) => headers.get(name).map(|v| v.as_bytes()).filter(|v| !v.is_empty()),
            StickyKey::Cookie(name) => headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name.as_ref() && !v.is_empty()).then_some(v.as_bytes())
                }),
        }
    }
}

/// One share of a split.
#[derive(Debug, Clone)]
pub struct Share {
    /// Index into the route's upstream list.
    pub upstream: usize,
    pub weight: u32,
    /// Stable per-upstream salt for rendezvous hashing (hash of its name).
    pub salt: u64,
}

/// A weighted split, with an optional sticky key.
#[derive(Debug, Clone)]
pub struct Split {
    pub shares: Vec<Share>,
    pub total: u64,
    pub sticky: Option<StickyKey>,
}

impl Split {
    pub fn new(shares: Vec<(usize, u32, &str)>, sticky: Option<StickyKey>) -> Split {
        let shares: Vec<Share> = shares
            .into_iter()
            .map(|(upstream, weight, name)| Share { upstream, weight, salt: stable_hash(name.as_bytes(), 0x5eed) })
            .collect();
        let total = shares.iter().map(|s| s.weight as u64).sum();
        Split { shares, total, sticky }
    }

    /// The share index for a request.
    pub fn choose(&self, headers: &HeaderMap) -> usize {
        match self.sticky.as_ref().and_then(|k| k.extract(headers)) {
            Some(key) => self.choose_for_key(key),
            None => self.choose_random(),
        }
    }

    fn choose_random(&self) -> usize {
        if self.total == 0 {
            return 0;
        }
        let mut point = fastrand::u64(..self.total);
        for (i, share) in self.shares.iter().enumerate() {
            if point < share.weight as u64 {
                return i;
            }
            point -= share.weight as u64;
        }
        self.shares.len() - 1
    }

    /// Weighted rendezvous hashing of `key`.
    pub fn choose_for_key(&self, key: &[u8]) -> usize {
        self.choose_by(|share| stable_hash(key, share.salt))
    }

    /// Weighted rendezvous hashing over a key's hash for each share (what
    /// [`Self::choose_for_key`] computes from the key): a preview, which
    /// keeps those hashes and not the key, picks as the proxy did.
    pub fn choose_by(&self, hash: impl Fn(&Share) -> u64) -> usize {
        let mut best = (0, f64::NEG_INFINITY);
        for (i, share) in self.shares.iter().enumerate() {
            if share.weight == 0 {
                continue;
            }
            let h = hash(share);
            // A uniform number in (0, 1) from the top 53 bits.
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = share.weight as f64 / -u.ln();
            if score > best.1 {
                best = (i, score);
            }
        }
        best.0
    }
}

/// FNV-1a with a seed, finished with the splitmix64 mixer: stable across
/// processes and versions, so every replica agrees on sticky choices.
pub fn stable_hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(weights: &[u32]) -> Split {
        let names = ["new", "legacy", "third"];
        Split::new(weights.iter().enumerate().map(|(i, w)| (i, *w, names[i])).collect(), None)
    }

    #[test]
    fn random_shares_follow_weights() {
        let s = split(&[10, 90]);
        let n = 20_000;
        let new = (0..n).filter(|_| s.choose(&HeaderMap::new()) == 0).count();
        let share = new as f64 / n as f64;
        assert!((share - 0.10).abs() < 0.02, "{share}");
    }

    #[test]
    fn keyed_shares_follow_weights() {
        let s = split(&[30, 70]);
        let n = 20_000;
        let new = (0..n).filter(|i| s.choose_for_key(format!("user-{i}").as_bytes()) == 0).count();
        let share = new as f64 / n as f64;
        assert!((share - 0.30).abs() < 0.02, "{share}");
    }

    #[test]
    fn raising_a_weight_only_moves_keys_toward_it() {
        let steps = [[0, 100], [1, 99], [10, 90], [50, 50], [100, 0]];
        let keys: Vec<String> = (0..5000).map(|i| format!("k{i}")).collect();
        let mut previous: Option<Vec<usize>> = None;
        for weights in steps {
            let s = split(&weights);
            let now: Vec<usize> = keys.iter().map(|k| s.choose_for_key(k.as_bytes())).collect();
            if let Some(before) = &previous {
                for (b, n) in before.iter().zip(&now) {
                    assert!(b == n || *n == 0, "a key moved from {b} to {n}, away from the gaining upstream");
                }
            }
            previous = Some(now);
        }
        assert!(previous.unwrap().iter().all(|&c| c != 1), "weight 0 takes no keys");
    }

    #[test]
    fn keys_on_a_gaining_upstream_stay_in_a_three_way_split() {
        let keys: Vec<String> = (0..5000).map(|i| format!("k{i}")).collect();
        let before = split(&[10, 80, 10]);
        let after = split(&[30, 60, 10]);
        for k in &keys {
            if before.choose_for_key(k.as_bytes()) == 0 {
                assert_eq!(after.choose_for_key(k.as_bytes()), 0);
            }
        }
    }

    #[test]
    fn cookie_keys() {
        let key = StickyKey::Cookie("session".into());
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; session=abc; b=2".parse().unwrap());
        assert_eq!(key.extract(&h), Some(&b"abc"[..]));
    }
}
