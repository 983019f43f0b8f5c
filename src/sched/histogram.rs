//! A fixed-bucket histogram of queue wait times (push to start of processing), one per tenant.
//!
//! Owns the bucket layout of the future `fairvox_sched_wait_seconds{tenant}` metric. Recording is a short linear
//! scan over a constant array: no allocation, no clock, no lock of its own (it lives inside the queue's state).

use std::time::Duration;

/// Upper bounds (inclusive) of the finite buckets, from 100 µs to 640 ms; one more bucket takes everything above.
/// Chosen around the 20 ms frame and the 40 ms default `max_wait`.
pub const BUCKET_BOUNDS: [Duration; 13] = [
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2_500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(20),
    Duration::from_millis(40),
    Duration::from_millis(80),
    Duration::from_millis(160),
    Duration::from_millis(320),
    Duration::from_millis(640),
];

const BUCKETS: usize = BUCKET_BOUNDS.len() + 1;

/// Counts of waits per bucket, plus their sum and maximum. `Copy`, so a stats snapshot is a plain copy.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct WaitHistogram {
    counts: [u64; BUCKETS],
    sum_ns: u64,
    max_ns: u64,
}

impl WaitHistogram {
    /// Records one wait.
    pub fn record(&mut self, wait: Duration) {
        let i = BUCKET_BOUNDS.iter().position(|b| wait <= *b).unwrap_or(BUCKETS - 1);
        self.counts[i] = self.counts[i].saturating_add(1);
        let ns = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Number of waits recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, c| a.saturating_add(*c))
    }

    /// Sum of all waits recorded (saturates at about 584 years).
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns)
    }

    /// The longest wait recorded.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns)
    }

    /// Mean wait, or `None` when nothing was recorded.
    pub fn mean(&self) -> Option<Duration> {
        let n = self.count();
        (n > 0).then(|| Duration::from_nanos(self.sum_ns / n))
    }

    /// Prometheus-style cumulative buckets: `(upper bound, waits ≤ bound)`, the last one with bound `None` (+Inf).
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<Duration>, u64)> + '_ {
        let bounds = BUCKET_BOUNDS.iter().copied().map(Some).chain(std::iter::once(None));
        bounds.zip(self.counts.iter().scan(0u64, |acc, c| {
            *acc = acc.saturating_add(*c);
            Some(*acc)
        }))
    }

    /// An upper bound on the `q`-quantile (`0.0..=1.0`): the bound of the bucket that holds it, or the maximum
    /// when it falls in the last, open bucket (the maximum is also used when it is tighter). `None` when empty.
    pub fn quantile_upper_bound(&self, q: f64) -> Option<Duration> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let max = self.max();
        for (bound, cum) in self.cumulative() {
            if cum >= rank {
                return Some(bound.map_or(max, |b| b.min(max)));
            }
        }
        Some(max)
    }

    /// Adds another histogram's counts to this one (e.g. to total several tenants).
    pub fn merge(&mut self, other: &WaitHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_sum_max_and_quantiles() {
        let mut h = WaitHistogram::default();
        assert_eq!(h.quantile_upper_bound(0.5), None);
        assert_eq!(h.mean(), None);
        for _ in 0..98 {
            h.record(Duration::from_micros(300)); // (250 µs, 500 µs]
        }
        h.record(Duration::from_millis(30)); // (20 ms, 40 ms]
        h.record(Duration::from_secs(2)); // +Inf
        assert_eq!(h.count(), 100);
        assert_eq!(h.max(), Duration::from_secs(2));
        assert_eq!(h.sum(), Duration::from_micros(300 * 98) + Duration::from_millis(30) + Duration::from_secs(2));
        assert_eq!(h.quantile_upper_bound(0.5), Some(Duration::from_micros(500)));
        assert_eq!(h.quantile_upper_bound(0.98), Some(Duration::from_micros(500)));
        assert_eq!(h.quantile_upper_bound(0.99), Some(Duration::from_millis(40)));
        assert_eq!(h.quantile_upper_bound(1.0), Some(Duration::from_secs(2)));
        let cum: Vec<_> = h.cumulative().collect();
        assert_eq!(cum.len(), BUCKETS);
        assert_eq!(cum.last(), Some(&(None, 100)));
        assert_eq!(cum[2], (Some(Duration::from_micros(500)), 98));
        // Bounds are inclusive; zero goes to the first bucket.
        let mut e = WaitHistogram::default();
        e.record(Duration::ZERO);
        e.record(Duration::from_millis(40));
        assert_eq!(e.cumulative().next(), Some((Some(Duration::from_micros(100)), 1)));
        assert_eq!(e.quantile_upper_bound(1.0), Some(Duration::from_millis(40)));
        h.merge(&e);
        assert_eq!(h.count(), 102);
    }
}
