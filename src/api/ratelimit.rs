//! Request rate limits of the API, one per credential: each API key has its own token bucket
//! (`api.requests_per_second`, `api.burst`), the operator token one more generous bucket
//! (`api.operator_requests_per_second`, `api.operator_burst`). A request over its bucket is refused with `429` and
//! `Retry-After`.
//!
//! Owns: the buckets, their map by key prefix and its pruning, and the refusal counts in metrics. Must not: be
//! reached before authentication. A bucket exists only for a credential that authenticated, so a made-up or
//! revoked key is `401` and never spends (or learns about) anybody's budget, and the map holds at most one entry
//! per valid key.
//!
//! # Cost on the request path
//!
//! Each bucket is a `governor` direct limiter (GCRA: one atomic compare-and-swap per check, no lock). The map from
//! key prefix to bucket is read under a `parking_lot` read lock (shared by all readers: requests never wait for
//! each other, only for the rare insert of a key's first request or a prune). That is the one global structure on
//! the path, and its hold time is one hash lookup.
//!
//! # Pruning (what governor's keyed limiters do with `retain_recent`)
//!
//! A bucket untouched for longer than it takes to refill completely is in the same state as a new one, so it can
//! be dropped without anyone noticing. When a new key is inserted and at least [`PRUNE_EVERY`] has passed since the
//! last prune, such buckets are removed: the map stays proportional to the keys used recently.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use parking_lot::{Mutex, RwLock};

use crate::config::ApiSettings;
use crate::metrics::{Metrics, TenantMetrics};
use crate::sched::admission::retry_after_secs;

/// How often, at most, idle buckets are looked for.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

type Bucket<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A request refused for its credential's rate: retry after this many whole seconds (at least 1).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_secs: u32,
}

/// Who a request is counted against.
#[derive(Copy, Clone, Debug)]
pub enum Credential<'a> {
    Operator,
    /// An API key (its public prefix) of a tenant (its id).
    Key {
        prefix: &'a str,
        tenant: &'a str,
    },
}

/// One key's bucket, when it was last used (nanoseconds from the limits' epoch), and its tenant's metrics handle
/// (taken at its first refusal and kept).
struct KeyBucket<C: Clock> {
    bucket: Bucket<C>,
    last_used_nanos: AtomicU64,
    tenant: Arc<str>,
    metrics: OnceLock<TenantMetrics>,
}

/// The API's rate limits. `C` is the clock: the monotonic clock in the server, a fake one in tests.
pub struct RateLimits<C: Clock = DefaultClock> {
    key_quota: Quota,
    /// How long an empty key bucket takes to fill up again: a bucket idle this long can be dropped.
    key_refill: Duration,
    keys: RwLock<HashMap<String, Arc<KeyBucket<C>>>>,
    operator: Bucket<C>,
    clock: C,
    epoch: C::Instant,
    last_prune_nanos: Mutex<u64>,
    metrics: Arc<Metrics>,
}

impl RateLimits<DefaultClock> {
    pub fn new(settings: &ApiSettings, metrics: Arc<Metrics>) -> RateLimits<DefaultClock> {
        RateLimits::with_clock(settings, metrics, DefaultClock::default())
    }
}

/// A quota of `per_second` requests a second with room for `burst` at once (both at least 1: the config checks
/// this, and 0 is read as 1 here rather than panicking).
fn quota(per_second: u32, burst: u32) -> Quota {
    let nz = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(nz(per_second)).allow_burst(nz(burst))
}

impl<C: Clock + Clone> RateLimits<C> {
    pub fn with_clock(settings: &ApiSettings, metrics: Arc<Metrics>, clock: C) -> RateLimits<C> {
        let key_quota = quota(settings.requests_per_second, settings.burst);
        let key_refill = key_quota.burst_size_replenished_in();
        let operator = RateLimiter::direct_with_clock(
            quota(settings.operator_requests_per_second, settings.operator_burst),
            clock.clone(),
        );
        let epoch = clock.now();
        RateLimits {
            key_quota,
            key_refill,
            keys: RwLock::new(HashMap::new()),
            operator,
            clock,
            epoch,
            last_prune_nanos: Mutex::new(0),
            metrics,
        }
    }

    fn now_nanos(&self) -> u64 {
        self.clock.now().duration_since(self.epoch).as_u64()
    }

    /// Spends one request of `who`'s bucket, or says when to retry (and counts the refusal).
    pub fn check(&self, who: Credential<'_>) -> Result<(), Limited> {
        match who {
            Credential::Operator => self.operator.check().map_err(|not_until| {
                self.metrics.api_operator_rate_limited();
                Limited { retry_after_secs: retry_after_secs(not_until.wait_time_from(self.clock.now())) }
            }),
            Credential::Key { prefix, tenant } => {
                let entry = self.bucket(prefix, tenant);
                entry.last_used_nanos.store(self.now_nanos(), Ordering::Relaxed);
                entry.bucket.check().map_err(|not_until| {
                    entry.metrics.get_or_init(|| self.metrics.tenant_named(&entry.tenant)).api_rate_limited();
                    Limited { retry_after_secs: retry_after_secs(not_until.wait_time_from(self.clock.now())) }
                })
            }
        }
    }

    /// The bucket of key `prefix`, made on its first request.
    fn bucket(&self, prefix: &str, tenant: &str) -> Arc<KeyBucket<C>> {
        if let Some(entry) = self.keys.read().get(prefix) {
            return Arc::clone(entry);
        }
        let now = self.now_nanos();
        let mut keys = self.keys.write();
        self.prune_if_due(&mut keys, now);
        let entry = keys.entry(prefix.to_owned()).or_insert_with(|| {
            Arc::new(KeyBucket {
                bucket: RateLimiter::direct_with_clock(self.key_quota, self.clock.clone()),
                last_used_nanos: AtomicU64::new(now),
                tenant: tenant.into(),
                metrics: OnceLock::new(),
            })
        });
        Arc::clone(entry)
    }

    /// Drops the buckets idle long enough to be full again, at most once per [`PRUNE_EVERY`].
    fn prune_if_due(&self, keys: &mut HashMap<String, Arc<KeyBucket<C>>>, now: u64) {
        let mut last = self.last_prune_nanos.lock();
        if now.saturating_sub(*last) < PRUNE_EVERY.as_nanos() as u64 {
            return;
        }
        *last = now;
        let idle = self.key_refill.as_nanos() as u64;
        keys.retain(|_, e| now.saturating_sub(e.last_used_nanos.load(Ordering::Relaxed)) <= idle);
    }

    /// How many key buckets are held (for tests and the pruning rule).
    pub fn key_buckets(&self) -> usize {
        self.keys.read().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limits(per_second: u32, burst: u32) -> (RateLimits<FakeRelativeClock>, Arc<Metrics>, FakeRelativeClock) {
        let settings = ApiSettings {
            requests_per_second: per_second,
            burst,
            operator_requests_per_second: per_second * 10,
            operator_burst: burst * 10,
            ..ApiSettings::default()
        };
        let metrics = Arc::new(Metrics::default());
        let clock = FakeRelativeClock::default();
        (RateLimits::with_clock(&settings, Arc::clone(&metrics), clock.clone()), metrics, clock)
    }

    fn key<'a>(prefix: &'a str, tenant: &'a str) -> Credential<'a> {
        Credential::Key { prefix, tenant }
    }

    fn scrape_value(m: &Metrics, line_start: &str) -> Option<f64> {
        m.encode().lines().find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
    }

    #[test]
    fn a_key_gets_its_burst_then_waits_for_its_rate() {
        let (l, metrics, clock) = limits(2, 3);
        for _ in 0..3 {
            assert_eq!(l.check(key("fvk_aaaaaaaa", "acme")), Ok(()));
        }
        // Empty: the next token comes in 500 ms, which a Retry-After rounds up to 1 s.
        assert_eq!(l.check(key("fvk_aaaaaaaa", "acme")), Err(Limited { retry_after_secs: 1 }));
        assert_eq!(l.check(key("fvk_aaaaaaaa", "acme")), Err(Limited { retry_after_secs: 1 }));
        assert_eq!(scrape_value(&metrics, "fairvox_api_rate_limited_total{tenant=\"acme\"}"), Some(2.0));
        clock.advance(Duration::from_millis(500));
        assert_eq!(l.check(key("fvk_aaaaaaaa", "acme")), Ok(()), "one token back after 1/rate");
        assert!(l.check(key("fvk_aaaaaaaa", "acme")).is_err());
        clock.advance(Duration::from_secs(2));
        for _ in 0..3 {
            assert_eq!(l.check(key("fvk_aaaaaaaa", "acme")), Ok(()), "the whole burst back after a quiet spell");
        }
    }

    #[test]
    fn keys_do_not_share_a_bucket_and_the_operator_has_its_own() {
        let (l, metrics, _clock) = limits(1, 2);
        assert!(l.check(key("fvk_aaaaaaaa", "acme")).is_ok());
        assert!(l.check(key("fvk_aaaaaaaa", "acme")).is_ok());
        assert!(l.check(key("fvk_aaaaaaaa", "acme")).is_err());
        // Another key of the same tenant, a key of another tenant, and the operator are untouched.
        assert!(l.check(key("fvk_bbbbbbbb", "acme")).is_ok());
        assert!(l.check(key("fvk_cccccccc", "globex")).is_ok());
        for _ in 0..20 {
            assert!(l.check(Credential::Operator).is_ok());
        }
        assert_eq!(l.check(Credential::Operator).map_err(|e| e.retry_after_secs), Err(1));
        assert_eq!(scrape_value(&metrics, "fairvox_api_operator_rate_limited_total"), Some(1.0));
        assert_eq!(scrape_value(&metrics, "fairvox_api_rate_limited_total{tenant=\"acme\"}"), Some(1.0));
        assert_eq!(scrape_value(&metrics, "fairvox_api_rate_limited_total{tenant=\"globex\"}"), None);
    }

    #[test]
    fn retry_after_is_whole_seconds_from_the_bucket() {
        // One request every 4 s: an empty bucket says 4.
        let settings = ApiSettings { requests_per_second: 1, burst: 1, ..ApiSettings::default() };
        let clock = FakeRelativeClock::default();
        let mut l = RateLimits::with_clock(&settings, Arc::new(Metrics::default()), clock.clone());
        l.key_quota = Quota::with_period(Duration::from_secs(4)).unwrap_or(l.key_quota);
        assert!(l.check(key("fvk_aaaaaaaa", "acme")).is_ok());
        assert_eq!(l.check(key("fvk_aaaaaaaa", "acme")), Err(Limited { retry_after_secs: 4 }));
        clock.advance(Duration::from_millis(2500));
        assert_eq!(l.check(key("fvk_aaaaaaaa", "acme")), Err(Limited { retry_after_secs: 2 }), "1.5 s rounds up");
        clock.advance(Duration::from_millis(1500));
        assert!(l.check(key("fvk_aaaaaaaa", "acme")).is_ok());
    }

    #[test]
    fn idle_full_buckets_are_pruned_and_busy_ones_kept() {
        let (l, _metrics, clock) = limits(10, 10); // refills from empty in 1 s
        assert!(l.check(key("fvk_idle0000", "acme")).is_ok());
        clock.advance(PRUNE_EVERY);
        for _ in 0..10 {
            assert!(l.check(key("fvk_busy0000", "acme")).is_ok());
        }
        assert_eq!(l.key_buckets(), 1, "the idle key's bucket was dropped when the busy key's was made");
        // The busy key's bucket was kept: it is still empty.
        assert!(l.check(key("fvk_busy0000", "acme")).is_err());
        // No prune before PRUNE_EVERY has passed again.
        clock.advance(Duration::from_secs(2));
        assert!(l.check(key("fvk_other000", "acme")).is_ok());
        assert_eq!(l.key_buckets(), 2);
    }
}
