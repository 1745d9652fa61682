//! Endpoint selection: smooth weighted round robin (nginx's algorithm), least request (power
//! of two choices), weighted random, and consistent hashing on a ring or a Maglev table.
//!
//! The hashing policies place endpoints by address, not by position, with a fixed hash
//! (xxHash64, as Envoy): every worker, and the next process after an upgrade, sends a key to
//! the same endpoint, and adding one of N endpoints moves about 1/N of the keys.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;

use rustng_runtime_config::LbPolicy;
use xxhash_rust::xxh64::xxh64;

/// Maglev's lookup table size (Envoy's default; prime, as the algorithm needs).
const MAGLEV_TABLE_SIZE: usize = 65537;

/// Picks endpoint indices. One per cluster per worker: no sharing, no atomics.
#[derive(Debug)]
pub(crate) struct Balancer {
    policy: LbPolicy,
    weights: Vec<i64>,
    total: i64,
    /// All weights equal: a counter does what smooth WRR would, in O(1).
    uniform: bool,
    next: Cell<usize>,
    /// Smooth WRR running scores, one per endpoint.
    current: RefCell<Vec<i64>>,
    /// `RING_HASH`: (point, endpoint) sorted by point.
    ring: Vec<(u64, u32)>,
    /// `MAGLEV`: endpoint per table slot.
    maglev: Vec<u32>,
}

impl Balancer {
    /// A balancer over `endpoints` (address, weight), in order; `ring_size` bounds the hash
    /// ring's points.
    pub(crate) fn new(
        policy: LbPolicy,
        endpoints: &[(SocketAddr, u32)],
        ring_size: (u64, u64),
    ) -> Self {
        let weights: Vec<i64> = endpoints.iter().map(|(_, w)| i64::from(*w)).collect();
        let ring = if policy == LbPolicy::RingHash {
            build_ring(endpoints, ring_size)
        } else {
            Vec::new()
        };
        let maglev = if policy == LbPolicy::Maglev {
            build_maglev(endpoints)
        } else {
            Vec::new()
        };
        let total = weights.iter().sum();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        // Start each worker at a different endpoint so N workers do not hit endpoint 0 together.
        let start = if weights.is_empty() {
            0
        } else {
            fastrand::usize(..weights.len())
        };
        Balancer {
            policy,
            current: RefCell::new(vec![0; weights.len()]),
            weights,
            total,
            uniform,
            next: Cell::new(start),
            ring,
            maglev,
        }
    }

    /// Picks an endpoint for which `skip` is false (tried already, drained, unhealthy), or
    /// `None` when none is left. `hash` is the request's hash key (hashing policies; random
    /// without one); `active` says how many requests an endpoint has in flight on this
    /// worker (least request).
    pub(crate) fn pick(
        &self,
        hash: Option<u64>,
        active: impl Fn(usize) -> u32,
        skip: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = self.weights.len();
        if n == 0 {
            return None;
        }
        let first = match self.policy {
            LbPolicy::RoundRobin if self.uniform => {
                let i = self.next.get() % n;
                self.next.set(i + 1);
                i
            }
            LbPolicy::RoundRobin => self.smooth_weighted(),
            LbPolicy::Random => self.weighted_random(),
            LbPolicy::LeastRequest => self.least_request(&active, &skip),
            LbPolicy::RingHash => {
                return self.ring_pick(hash.unwrap_or_else(|| fastrand::u64(..)), &skip);
            }
            LbPolicy::Maglev => {
                return self.maglev_pick(hash.unwrap_or_else(|| fastrand::u64(..)), &skip);
            }
        };
        // Skipping is for retries: walk on from the first choice so each endpoint is tried once.
        (0..n).map(|k| (first + k) % n).find(|&i| !skip(i))
    }

    /// Power of two choices: the less busy of two weighted random picks (skipped ones aside
    /// when the second draw can avoid them).
    fn least_request(
        &self,
        active: &impl Fn(usize) -> u32,
        skip: &impl Fn(usize) -> bool,
    ) -> usize {
        let a = self.weighted_random();
        let mut b = self.weighted_random();
        if b == a && self.weights.len() > 1 {
            b = (a + 1 + fastrand::usize(..self.weights.len() - 1)) % self.weights.len();
        }
        match (skip(a), skip(b)) {
            (true, false) => b,
            (false, true) => a,
            _ => {
                // Load relative to weight: a * w_b vs b * w_a avoids division.
                let load_a = i64::from(active(a)) * self.weights[b];
                let load_b = i64::from(active(b)) * self.weights[a];
                if load_b < load_a { b } else { a }
            }
        }
    }

    fn ring_pick(&self, hash: u64, skip: &impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.ring.partition_point(|(point, _)| *point < hash);
        let len = self.ring.len();
        (0..len)
            .map(|k| self.ring[(start + k) % len].1 as usize)
            .find(|&i| !skip(i))
    }

    fn maglev_pick(&self, hash: u64, skip: &impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.maglev.len() as u64;
        let slot = (hash % len) as usize;
        let chosen = self.maglev[slot] as usize;
        if !skip(chosen) {
            return Some(chosen);
        }
        // Out of rotation: the next slots of the table, which spread its keys over the rest.
        (1..self.maglev.len())
            .map(|k| self.maglev[(slot + k) % self.maglev.len()] as usize)
            .find(|&i| !skip(i))
    }

    fn smooth_weighted(&self) -> usize {
        let mut current = self.current.borrow_mut();
        let mut best = 0;
        for i in 0..current.len() {
            current[i] += self.weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= self.total;
        best
    }

    fn weighted_random(&self) -> usize {
        let mut r = fastrand::i64(0..self.total.max(1));
        for (i, w) in self.weights.iter().enumerate() {
            if r < *w {
                return i;
            }
            r -= w;
        }
        self.weights.len() - 1
    }
}

/// Hashes a request's hash key (the `rustng.route.hash_key` a router set).
pub(crate) fn hash_key(key: &[u8]) -> u64 {
    xxh64(key, 0)
}

/// Points per unit of endpoint weight on the hash ring. Fixed, so an endpoint keeps its
/// points when others come and go and only their keys move; raised for small clusters whose
/// ring would be smaller than `minimum_ring_size`.
const RING_POINTS_PER_WEIGHT: u64 = 256;

/// A ring hash as Envoy's: each endpoint's points at hashes of `"<address>_<n>"`, as many
/// as its weight calls for.
fn build_ring(endpoints: &[(SocketAddr, u32)], (min, max): (u64, u64)) -> Vec<(u64, u32)> {
    let total: u64 = endpoints.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return Vec::new();
    }
    let per_weight = RING_POINTS_PER_WEIGHT
        .max(min.div_ceil(total))
        .min((max / total).max(1));
    let mut ring = Vec::with_capacity((per_weight * total) as usize);
    let mut key = String::new();
    for (index, (address, weight)) in endpoints.iter().enumerate() {
        for n in 0..per_weight * u64::from(*weight) {
            key.clear();
            use std::fmt::Write;
            let _ = write!(key, "{address}_{n}");
            ring.push((xxh64(key.as_bytes(), 0), index as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// Maglev (Eisenbud et al., NSDI 2016), weighted: each endpoint walks its own permutation of
/// the table and claims free slots, as often as its weight allows, until the table is full.
fn build_maglev(endpoints: &[(SocketAddr, u32)]) -> Vec<u32> {
    if endpoints.is_empty() {
        return Vec::new();
    }
    let m = MAGLEV_TABLE_SIZE as u64;
    let permutations: Vec<(u64, u64)> = endpoints
        .iter()
        .map(|(address, _)| {
            let name = address.to_string();
            let offset = xxh64(name.as_bytes(), 0) % m;
            let skip = xxh64(name.as_bytes(), 1) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_weight = endpoints.iter().map(|(_, w)| *w).max().unwrap_or(1).max(1) as f64;
    let mut next = vec![0u64; endpoints.len()];
    let mut claimed = vec![0f64; endpoints.len()];
    let mut table = vec![u32::MAX; MAGLEV_TABLE_SIZE];
    let mut filled = 0;
    let mut round = 0f64;
    while filled < MAGLEV_TABLE_SIZE {
        round += 1.0;
        for (index, (_, weight)) in endpoints.iter().enumerate() {
            // Claim while below this round's share of the heaviest endpoint's claims.
            if claimed[index] >= round * f64::from(*weight) / max_weight {
                continue;
            }
            claimed[index] += 1.0;
            let (offset, skip) = permutations[index];
            loop {
                let slot = ((offset + next[index] * skip) % m) as usize;
                next[index] += 1;
                if table[slot] == u32::MAX {
                    table[slot] = index as u32;
                    filled += 1;
                    break;
                }
            }
            if filled == MAGLEV_TABLE_SIZE {
                break;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(weights: &[u32]) -> Vec<(SocketAddr, u32)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| (SocketAddr::from(([10, 0, 0, i as u8 + 1], 80)), *w))
            .collect()
    }

    fn balancer(policy: LbPolicy, weights: &[u32]) -> Balancer {
        Balancer::new(policy, &endpoints(weights), (1024, 8 << 20))
    }

    fn any(b: &Balancer) -> usize {
        b.pick(None, |_| 0, |_| false).expect("endpoint")
    }

    fn counts(b: &Balancer, n: usize, rounds: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for _ in 0..rounds {
            c[any(b)] += 1;
        }
        c
    }

    #[test]
    fn round_robin_is_even() {
        let b = balancer(LbPolicy::RoundRobin, &[1, 1, 1]);
        assert_eq!(counts(&b, 3, 300), vec![100, 100, 100]);
    }

    #[test]
    fn smooth_weighted_round_robin_honours_weights_and_interleaves() {
        let b = balancer(LbPolicy::RoundRobin, &[5, 1, 1]);
        let seq: Vec<usize> = (0..7).map(|_| any(&b)).collect();
        // nginx's example: a a b a c a a
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&b, 3, 700), vec![500, 100, 100]);
    }

    #[test]
    fn random_roughly_honours_weights() {
        let b = balancer(LbPolicy::Random, &[3, 1]);
        let c = counts(&b, 2, 4000);
        assert!((2700..3300).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn skip_moves_on_and_runs_out() {
        for policy in [
            LbPolicy::RoundRobin,
            LbPolicy::LeastRequest,
            LbPolicy::Random,
            LbPolicy::RingHash,
            LbPolicy::Maglev,
        ] {
            let b = balancer(policy, &[1, 1]);
            let first = any(&b);
            let other = b.pick(None, |_| 0, |i| i == first).expect("endpoint");
            assert_ne!(first, other, "{policy:?}");
            assert_eq!(b.pick(None, |_| 0, |_| true), None, "{policy:?}");
            assert_eq!(balancer(policy, &[]).pick(None, |_| 0, |_| false), None);
        }
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let b = balancer(LbPolicy::LeastRequest, &[1, 1, 1]);
        // Endpoint 2 is idle, the others busy: it wins every draw it is in (2 of 3 pairs
        // include it when the two draws differ).
        let c = {
            let mut c = [0usize; 3];
            for _ in 0..3000 {
                c[b.pick(None, |i| if i == 2 { 0 } else { 10 }, |_| false)
                    .expect("pick")] += 1;
            }
            c
        };
        assert!(c[2] > 1800, "{c:?}");
    }

    #[test]
    fn hashing_policies_keep_keys_and_move_about_one_nth_when_one_is_added() {
        for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
            let four = balancer(policy, &[1, 1, 1, 1]);
            let five = balancer(policy, &[1, 1, 1, 1, 1]);
            let keys: Vec<u64> = (0..10_000u32).map(|k| hash_key(&k.to_be_bytes())).collect();
            let mut spread = [0usize; 4];
            let mut moved = 0;
            let mut reshuffled = 0;
            for &key in &keys {
                let before = four.pick(Some(key), |_| 0, |_| false).expect("pick");
                assert_eq!(
                    four.pick(Some(key), |_| 0, |_| false),
                    Some(before),
                    "{policy:?}: the same key, the same endpoint"
                );
                spread[before] += 1;
                let after = five.pick(Some(key), |_| 0, |_| false).expect("pick");
                if after == 4 {
                    moved += 1;
                } else if after != before {
                    reshuffled += 1;
                }
            }
            // The ring moves keys to the new endpoint only; Maglev's table also shuffles a
            // few percent among the others (the price of its even spread; see the paper).
            let allowed = if policy == LbPolicy::RingHash {
                0
            } else {
                keys.len() / 20
            };
            assert!(
                reshuffled <= allowed,
                "{policy:?}: {reshuffled} moved between old endpoints"
            );
            // 1/5 of the keys should move to the new endpoint; allow for the hash's spread.
            assert!((1200..2800).contains(&moved), "{policy:?}: {moved} moved");
            assert!(spread.iter().all(|&n| n > 1500), "{policy:?}: {spread:?}");
        }
    }

    #[test]
    fn an_unhealthy_endpoints_keys_spread_and_come_back() {
        for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
            let b = balancer(policy, &[1, 1, 1]);
            let key = (0..u64::MAX)
                .map(|k| hash_key(&k.to_be_bytes()))
                .find(|&h| b.pick(Some(h), |_| 0, |_| false) == Some(0))
                .expect("a key on endpoint 0");
            let elsewhere = b.pick(Some(key), |_| 0, |i| i == 0).expect("pick");
            assert_ne!(elsewhere, 0);
            assert_eq!(b.pick(Some(key), |_| 0, |_| false), Some(0));
        }
    }

    #[test]
    fn weighted_maglev_and_ring_honour_weights() {
        for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
            let b = balancer(policy, &[3, 1]);
            let mut c = [0usize; 2];
            for k in 0..8000u32 {
                c[b.pick(Some(hash_key(&k.to_be_bytes())), |_| 0, |_| false)
                    .expect("pick")] += 1;
            }
            assert!((5400..6600).contains(&c[0]), "{policy:?}: {c:?}");
        }
    }
}
