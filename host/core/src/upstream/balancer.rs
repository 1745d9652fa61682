//! Endpoint selection: smooth weighted round robin (nginx's algorithm) and weighted random.

use std::cell::{Cell, RefCell};

use rustng_runtime_config::LbPolicy;

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
}

impl Balancer {
    pub(crate) fn new(policy: LbPolicy, weights: impl IntoIterator<Item = u32>) -> Self {
        let weights: Vec<i64> = weights.into_iter().map(i64::from).collect();
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
        }
    }

    /// Picks an endpoint for which `skip` is false, or `None` when none is left.
    pub(crate) fn pick(&self, skip: impl Fn(usize) -> bool) -> Option<usize> {
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
        };
        // Skipping is for retries: walk on from the first choice so each endpoint is tried once.
        (0..n).map(|k| (first + k) % n).find(|&i| !skip(i))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(b: &Balancer, n: usize, rounds: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for _ in 0..rounds {
            c[b.pick(|_| false).expect("endpoint")] += 1;
        }
        c
    }

    #[test]
    fn round_robin_is_even() {
        let b = Balancer::new(LbPolicy::RoundRobin, [1, 1, 1]);
        assert_eq!(counts(&b, 3, 300), vec![100, 100, 100]);
    }

    #[test]
    fn smooth_weighted_round_robin_honours_weights_and_interleaves() {
        let b = Balancer::new(LbPolicy::RoundRobin, [5, 1, 1]);
        let seq: Vec<usize> = (0..7)
            .map(|_| b.pick(|_| false).expect("endpoint"))
            .collect();
        // nginx's example: a a b a c a a
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&b, 3, 700), vec![500, 100, 100]);
    }

    #[test]
    fn random_roughly_honours_weights() {
        let b = Balancer::new(LbPolicy::Random, [3, 1]);
        let c = counts(&b, 2, 4000);
        assert!((2700..3300).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn skip_moves_on_and_runs_out() {
        let b = Balancer::new(LbPolicy::RoundRobin, [1, 1]);
        let first = b.pick(|_| false).expect("endpoint");
        let other = b.pick(|i| i == first).expect("endpoint");
        assert_ne!(first, other);
        assert_eq!(b.pick(|_| true), None);
        assert_eq!(
            Balancer::new(LbPolicy::RoundRobin, []).pick(|_| false),
            None
        );
    }
}
