//! Plans: the limits a tenant's calls are admitted under, the built-in defaults that exist with no config, and the
//! TOML-facing overrides ([`RawPlan`], [`build_plans`]) that config validates through this module.
//!
//! A plan owns, for one tenant: its share of media work (`weight`, read by the fair scheduler), how many calls it
//! may hold at once, how fast new calls may arrive (a token bucket: `calls_per_second` refill, `burst` depth), how
//! many minutes it may use per month, how much of its audio may queue before frames are shed, and what a minute
//! costs on the invoice (`price_per_minute_cents`).
//!
//! # Built-in plans
//!
//! These exist with no config at all; a config file may override any field of them, or add plans of its own.
//!
//! | plan         | weight | max_concurrent_calls | calls_per_second | burst | monthly_minutes | max_frame_queue_ms | price_per_minute_cents |
//! |--------------|-------:|---------------------:|-----------------:|------:|----------------:|-------------------:|-----------------------:|
//! | `free`       |      1 |                    2 |                1 |     2 |             100 |                 40 |                      0 |
//! | `pro`        |      4 |                   50 |                5 |    10 |          10 000 |                 40 |                      0 |
//! | `enterprise` |     16 |                  500 |               50 |   100 |       unlimited |                 40 |                      0 |
//!
//! Prices default to 0: fairvox does not choose the operator's prices. Set them per plan in config.
//!
//! # Fields and their ranges
//!
//! | key                    | type                          | range                          | meaning |
//! |------------------------|-------------------------------|--------------------------------|---------|
//! | `weight`               | integer                       | 1..=1000                       | share of media work relative to other tenants |
//! | `max_concurrent_calls` | integer                       | 1..=1 000 000                  | calls held at once; the next INVITE gets 486 |
//! | `calls_per_second`     | number (integer or float)     | 0.001..=10 000                 | token refill rate: one new call per `1 / calls_per_second` s |
//! | `burst`                | integer                       | 1..=100 000                    | bucket depth: calls that may arrive back to back |
//! | `monthly_minutes`      | integer or `"unlimited"`      | 0..=1 000 000 000              | minutes per month; 0 admits no call (every INVITE gets 403) |
//! | `max_frame_queue_ms`   | integer                       | 5..=1000, default 40           | audio queued per call before the oldest frames are shed |
//! | `price_per_minute_cents` | integer                     | 0..=1 000 000, default 0       | invoice price of a billable minute, in cents of the operator's currency |
//!
//! `calls_per_second` is an `f64` so that slow plans can be written directly (`0.5` = one call every 2 s); it is
//! turned into a whole number of nanoseconds between tokens ([`Plan::replenish_interval`]).
//!
//! # Config shape
//!
//! ```toml
//! [plans.pro]             # override one field of a built-in; the others keep their built-in value
//! max_concurrent_calls = 80
//!
//! [plans.gold]            # a new plan must set every field but max_frame_queue_ms and price_per_minute_cents
//! weight = 8
//! max_concurrent_calls = 200
//! calls_per_second = 20
//! burst = 40
//! monthly_minutes = "unlimited"
//! ```
//!
//! Config deserialises each `[plans.NAME]` table into a [`RawPlan`] and calls [`build_plans`]; a [`PlanError`] names
//! the key (`plans.gold.burst`) and the reason, which config prefixes with the file name.
//!
//! # The node cap
//!
//! Plans limit one tenant. The box itself is protected by the node-wide cap, the existing `limits.max_calls`
//! setting (default: the number of RTP port pairs), handed to [`crate::sched::admission::Admission::new`] and checked
//! before any plan limit, so no mix of plans can overload the node.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Unexpected, Visitor};

/// Default for `max_frame_queue_ms`: two 20 ms frames.
pub const DEFAULT_MAX_FRAME_QUEUE_MS: u32 = 40;

/// Inclusive bounds of each field, as documented in the module table.
pub const WEIGHT_RANGE: (u32, u32) = (1, 1000);
pub const MAX_CONCURRENT_CALLS_RANGE: (u32, u32) = (1, 1_000_000);
pub const CALLS_PER_SECOND_RANGE: (f64, f64) = (0.001, 10_000.0);
pub const BURST_RANGE: (u32, u32) = (1, 100_000);
pub const MONTHLY_MINUTES_MAX: u64 = 1_000_000_000;
pub const MAX_FRAME_QUEUE_MS_RANGE: (u32, u32) = (5, 1000);
pub const PRICE_PER_MINUTE_CENTS_MAX: u32 = 1_000_000;

/// Names of the built-in plans, in the order [`PlanSet::builtin`] lists them.
pub const BUILTIN_PLANS: [&str; 3] = ["free", "pro", "enterprise"];

/// A validated plan. Only this module builds one, so every value lies in its documented range.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    name: Arc<str>,
    weight: u32,
    max_concurrent_calls: u32,
    calls_per_second: f64,
    burst: u32,
    monthly_minutes: Option<u64>,
    max_frame_queue_ms: u32,
    price_per_minute_cents: u32,
}

impl Plan {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Share of media work, 1..=1000.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    pub fn max_concurrent_calls(&self) -> u32 {
        self.max_concurrent_calls
    }

    pub fn calls_per_second(&self) -> f64 {
        self.calls_per_second
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Minutes per month; `None` is unlimited.
    pub fn monthly_minutes(&self) -> Option<u64> {
        self.monthly_minutes
    }

    /// `monthly_minutes` in seconds, the unit usage is billed in; `None` is unlimited.
    pub fn monthly_seconds(&self) -> Option<u64> {
        self.monthly_minutes.map(|m| m.saturating_mul(60))
    }

    pub fn max_frame_queue_ms(&self) -> u32 {
        self.max_frame_queue_ms
    }

    /// What one billable minute costs on an invoice, in cents (0..=1 000 000; default 0).
    pub fn price_per_minute_cents(&self) -> u32 {
        self.price_per_minute_cents
    }

    /// Time between two rate tokens: `1 / calls_per_second`, in whole nanoseconds (at least 1).
    pub fn replenish_interval(&self) -> Duration {
        // calls_per_second lies in 0.001..=10_000, so this is 100 µs..=1000 s: no overflow, no zero.
        let nanos = (1e9 / self.calls_per_second).round();
        Duration::from_nanos((nanos as u64).max(1))
    }

    fn builtin(name: &str) -> Option<Plan> {
        let (weight, max_concurrent_calls, calls_per_second, burst, monthly_minutes) = match name {
            "free" => (1, 2, 1.0, 2, Some(100)),
            "pro" => (4, 50, 5.0, 10, Some(10_000)),
            "enterprise" => (16, 500, 50.0, 100, None),
            _ => return None,
        };
        Some(Plan {
            name: Arc::from(name),
            weight,
            max_concurrent_calls,
            calls_per_second,
            burst,
            monthly_minutes,
            max_frame_queue_ms: DEFAULT_MAX_FRAME_QUEUE_MS,
            price_per_minute_cents: 0,
        })
    }
}

/// The plans a server knows: the built-ins, as overridden by config, plus the plans config adds.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanSet {
    plans: Vec<Plan>,
}

impl Default for PlanSet {
    fn default() -> Self {
        PlanSet::builtin()
    }
}

impl PlanSet {
    /// The built-in plans only (what a server with no `[plans]` config runs with).
    pub fn builtin() -> PlanSet {
        PlanSet { plans: BUILTIN_PLANS.iter().filter_map(|n| Plan::builtin(n)).collect() }
    }

    pub fn get(&self, name: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| &*p.name == name)
    }

    /// Built-ins first, then added plans in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Plan> {
        self.plans.iter()
    }

    /// Plan names, for an error such as "no plan named x (one of free, pro, enterprise)".
    pub fn names(&self) -> Vec<&str> {
        self.plans.iter().map(|p| p.name()).collect()
    }
}

/// A plan as written in config: every field optional, so an override of a built-in can change a single value.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    pub weight: Option<u32>,
    pub max_concurrent_calls: Option<u32>,
    pub calls_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub monthly_minutes: Option<RawMinutes>,
    pub max_frame_queue_ms: Option<u32>,
    pub price_per_minute_cents: Option<u32>,
}

/// `monthly_minutes` in config: a whole number of minutes, or the string `"unlimited"`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RawMinutes {
    Limited(u64),
    Unlimited,
}

impl<'de> Deserialize<'de> for RawMinutes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MinutesVisitor;

        impl Visitor<'_> for MinutesVisitor {
            type Value = RawMinutes;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number of minutes or \"unlimited\"")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawMinutes, E> {
                Ok(RawMinutes::Limited(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawMinutes, E> {
                u64::try_from(v).map(RawMinutes::Limited).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawMinutes, E> {
                if v == "unlimited" {
                    Ok(RawMinutes::Unlimited)
                } else {
                    Err(E::invalid_value(Unexpected::Str(v), &self))
                }
            }
        }

        deserializer.deserialize_any(MinutesVisitor)
    }
}

/// An invalid plan in config: `key` is the full path (`plans.pro.weight`), `reason` says what is wrong. Config
/// reports it as `file: key: reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
#[non_exhaustive]
pub struct PlanError {
    pub key: String,
    pub reason: String,
}

impl PlanError {
    fn new(key: String, reason: impl Into<String>) -> PlanError {
        PlanError { key, reason: reason.into() }
    }
}

/// Builds the plan set from config's `[plans.NAME]` tables, in file order.
///
/// A name that is a built-in overrides the fields it sets and keeps the others. Any other name adds a plan, which
/// must set every field except `max_frame_queue_ms` (default 40) and `price_per_minute_cents` (default 0): in particular `monthly_minutes` is required, so a
/// forgotten budget is an error rather than an unlimited plan. Names follow the tenant id rule: 1-64 characters of
/// `a-z`, `0-9`, `-`, `_`. A name may appear once.
pub fn build_plans(raw: &[(String, RawPlan)]) -> Result<PlanSet, PlanError> {
    let mut set = PlanSet::builtin();
    let mut seen: Vec<&str> = Vec::with_capacity(raw.len());
    for (name, r) in raw {
        let key = format!("plans.{name}");
        if !valid_name(name) {
            return Err(PlanError::new(key, format!("{name:?} must be 1-64 characters of a-z, 0-9, '-' or '_'")));
        }
        if seen.contains(&name.as_str()) {
            return Err(PlanError::new(key, format!("plan {name:?} is declared twice")));
        }
        seen.push(name);
        match set.plans.iter_mut().find(|p| &*p.name == name.as_str()) {
            Some(existing) => *existing = merge(existing, r, &key)?,
            None => set.plans.push(new_plan(name, r, &key)?),
        }
    }
    Ok(set)
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn new_plan(name: &str, r: &RawPlan, key: &str) -> Result<Plan, PlanError> {
    fn required<T: Copy>(v: Option<T>, key: &str, field: &str) -> Result<T, PlanError> {
        v.ok_or_else(|| {
            PlanError::new(
                format!("{key}.{field}"),
                format!("required for a new plan (the built-in plans are {})", BUILTIN_PLANS.join(", ")),
            )
        })
    }
    let base = Plan {
        name: Arc::from(name),
        weight: required(r.weight, key, "weight")?,
        max_concurrent_calls: required(r.max_concurrent_calls, key, "max_concurrent_calls")?,
        calls_per_second: required(r.calls_per_second, key, "calls_per_second")?,
        burst: required(r.burst, key, "burst")?,
        monthly_minutes: match required(r.monthly_minutes, key, "monthly_minutes")? {
            RawMinutes::Limited(m) => Some(m),
            RawMinutes::Unlimited => None,
        },
        max_frame_queue_ms: DEFAULT_MAX_FRAME_QUEUE_MS,
        price_per_minute_cents: 0,
    };
    merge(&base, r, key)
}

/// `base` with the fields `r` sets replaced, validated.
fn merge(base: &Plan, r: &RawPlan, key: &str) -> Result<Plan, PlanError> {
    let plan = Plan {
        name: base.name.clone(),
        weight: r.weight.unwrap_or(base.weight),
        max_concurrent_calls: r.max_concurrent_calls.unwrap_or(base.max_concurrent_calls),
        calls_per_second: r.calls_per_second.unwrap_or(base.calls_per_second),
        burst: r.burst.unwrap_or(base.burst),
        monthly_minutes: match r.monthly_minutes {
            None => base.monthly_minutes,
            Some(RawMinutes::Limited(m)) => Some(m),
            Some(RawMinutes::Unlimited) => None,
        },
        max_frame_queue_ms: r.max_frame_queue_ms.unwrap_or(base.max_frame_queue_ms),
        price_per_minute_cents: r.price_per_minute_cents.unwrap_or(base.price_per_minute_cents),
    };
    validate(&plan, key)?;
    Ok(plan)
}

fn validate(p: &Plan, key: &str) -> Result<(), PlanError> {
    fn in_range(v: u32, (lo, hi): (u32, u32), key: &str, field: &str) -> Result<(), PlanError> {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(PlanError::new(format!("{key}.{field}"), format!("{v} is outside {lo}..={hi}")))
        }
    }
    in_range(p.weight, WEIGHT_RANGE, key, "weight")?;
    in_range(p.max_concurrent_calls, MAX_CONCURRENT_CALLS_RANGE, key, "max_concurrent_calls")?;
    let (lo, hi) = CALLS_PER_SECOND_RANGE;
    // The negated form also rejects NaN.
    if !(p.calls_per_second >= lo && p.calls_per_second <= hi) {
        return Err(PlanError::new(
            format!("{key}.calls_per_second"),
            format!("{} is outside {lo}..={hi} (calls per second must be positive)", p.calls_per_second),
        ));
    }
    in_range(p.burst, BURST_RANGE, key, "burst")?;
    if let Some(m) = p.monthly_minutes
        && m > MONTHLY_MINUTES_MAX
    {
        return Err(PlanError::new(
            format!("{key}.monthly_minutes"),
            format!("{m} is above {MONTHLY_MINUTES_MAX}; write \"unlimited\" for no limit"),
        ));
    }
    in_range(p.max_frame_queue_ms, MAX_FRAME_QUEUE_MS_RANGE, key, "max_frame_queue_ms")?;
    in_range(p.price_per_minute_cents, (0, PRICE_PER_MINUTE_CENTS_MAX), key, "price_per_minute_cents")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawPlan {
        toml::from_str(text).unwrap()
    }

    fn build(entries: &[(&str, &str)]) -> Result<PlanSet, PlanError> {
        let owned: Vec<(String, RawPlan)> = entries.iter().map(|(n, t)| ((*n).to_owned(), raw(t))).collect();
        build_plans(&owned)
    }

    /// The module doc table, value for value.
    #[test]
    fn builtins_exist_with_the_documented_values() {
        let set = PlanSet::builtin();
        assert_eq!(set.names(), vec!["free", "pro", "enterprise"]);
        let expect = [
            ("free", 1, 2, 1.0, 2, Some(100)),
            ("pro", 4, 50, 5.0, 10, Some(10_000)),
            ("enterprise", 16, 500, 50.0, 100, None),
        ];
        for (name, weight, conc, cps, burst, minutes) in expect {
            let p = set.get(name).unwrap();
            assert_eq!(p.name(), name);
            assert_eq!(p.weight(), weight, "{name}");
            assert_eq!(p.max_concurrent_calls(), conc, "{name}");
            assert_eq!(p.calls_per_second(), cps, "{name}");
            assert_eq!(p.burst(), burst, "{name}");
            assert_eq!(p.monthly_minutes(), minutes, "{name}");
            assert_eq!(p.max_frame_queue_ms(), 40, "{name}");
            assert_eq!(p.price_per_minute_cents(), 0, "{name}");
            // The built-ins pass the same validation as config plans.
            validate(p, name).unwrap();
        }
        assert_eq!(set.get("pro").unwrap().monthly_seconds(), Some(600_000));
        assert_eq!(set.get("enterprise").unwrap().monthly_seconds(), None);
        assert!(set.get("gold").is_none());
        assert_eq!(build_plans(&[]).unwrap(), PlanSet::builtin());
        assert_eq!(PlanSet::default(), PlanSet::builtin());
    }

    #[test]
    fn replenish_interval_is_one_over_cps() {
        let set = PlanSet::builtin();
        assert_eq!(set.get("free").unwrap().replenish_interval(), Duration::from_secs(1));
        assert_eq!(set.get("pro").unwrap().replenish_interval(), Duration::from_millis(200));
        assert_eq!(set.get("enterprise").unwrap().replenish_interval(), Duration::from_millis(20));
        let slow =
            build(&[("slow", "weight=1\nmax_concurrent_calls=1\ncalls_per_second=0.4\nburst=1\nmonthly_minutes=1")])
                .unwrap();
        assert_eq!(slow.get("slow").unwrap().replenish_interval(), Duration::from_millis(2500));
    }

    #[test]
    fn an_override_changes_only_what_it_names() {
        let set = build(&[("pro", "max_concurrent_calls = 80"), ("free", "monthly_minutes = \"unlimited\"")]).unwrap();
        let builtin = PlanSet::builtin();
        let (pro, pro0) = (set.get("pro").unwrap(), builtin.get("pro").unwrap());
        assert_eq!(pro.max_concurrent_calls(), 80);
        assert_eq!(Plan { max_concurrent_calls: pro0.max_concurrent_calls, ..pro.clone() }, *pro0);
        let (free, free0) = (set.get("free").unwrap(), builtin.get("free").unwrap());
        assert_eq!(free.monthly_minutes(), None);
        assert_eq!(Plan { monthly_minutes: free0.monthly_minutes, ..free.clone() }, *free0);
        assert_eq!(set.get("enterprise"), builtin.get("enterprise"));
        // An override can also give an unlimited built-in a limit, and take cps as an integer or a float.
        let set = build(&[("enterprise", "monthly_minutes = 5\ncalls_per_second = 2.5")]).unwrap();
        assert_eq!(set.get("enterprise").unwrap().monthly_minutes(), Some(5));
        assert_eq!(set.get("enterprise").unwrap().calls_per_second(), 2.5);
    }

    #[test]
    fn a_new_plan_is_added_and_must_be_complete() {
        let full = "weight = 8\nmax_concurrent_calls = 200\ncalls_per_second = 20\nburst = 40\nmonthly_minutes = \"unlimited\"";
        let set = build(&[("gold", full)]).unwrap();
        assert_eq!(set.names(), vec!["free", "pro", "enterprise", "gold"]);
        let gold = set.get("gold").unwrap();
        assert_eq!(
            (gold.weight(), gold.max_concurrent_calls(), gold.calls_per_second(), gold.burst()),
            (8, 200, 20.0, 40)
        );
        assert_eq!((gold.monthly_minutes(), gold.max_frame_queue_ms(), gold.price_per_minute_cents()), (None, 40, 0));
        let priced = build(&[("gold", &format!("{full}\nprice_per_minute_cents = 2"))]).unwrap();
        assert_eq!(priced.get("gold").unwrap().price_per_minute_cents(), 2);
        let e = build(&[("pro", "price_per_minute_cents = 1_000_001")]).unwrap_err();
        assert_eq!(e.key, "plans.pro.price_per_minute_cents");

        let e = build(&[("gold", "weight = 8")]).unwrap_err();
        assert_eq!(e.key, "plans.gold.max_concurrent_calls");
        assert!(e.reason.starts_with("required for a new plan"), "{e}");
        let no_budget = "weight = 8\nmax_concurrent_calls = 2\ncalls_per_second = 2\nburst = 4";
        assert_eq!(build(&[("gold", no_budget)]).unwrap_err().key, "plans.gold.monthly_minutes");
    }

    #[test]
    fn invalid_values_name_the_key_path() {
        let cases = [
            ("pro", "weight = 0", "plans.pro.weight"),
            ("pro", "weight = 1001", "plans.pro.weight"),
            ("free", "max_concurrent_calls = 0", "plans.free.max_concurrent_calls"),
            ("free", "calls_per_second = 0", "plans.free.calls_per_second"),
            ("free", "calls_per_second = -1.0", "plans.free.calls_per_second"),
            ("free", "calls_per_second = nan", "plans.free.calls_per_second"),
            ("free", "calls_per_second = inf", "plans.free.calls_per_second"),
            ("free", "calls_per_second = 1e-300", "plans.free.calls_per_second"),
            ("enterprise", "burst = 0", "plans.enterprise.burst"),
            ("pro", "monthly_minutes = 1_000_000_001", "plans.pro.monthly_minutes"),
            ("pro", "max_frame_queue_ms = 4", "plans.pro.max_frame_queue_ms"),
            ("pro", "max_frame_queue_ms = 1001", "plans.pro.max_frame_queue_ms"),
        ];
        for (name, text, key) in cases {
            let e = build(&[(name, text)]).unwrap_err();
            assert_eq!(e.key, key, "{text}");
            assert_eq!(e.to_string(), format!("{key}: {}", e.reason));
        }
        let e = build(&[("pro", "weight = 0")]).unwrap_err();
        assert_eq!(e.to_string(), "plans.pro.weight: 0 is outside 1..=1000");
        // Bounds are inclusive.
        build(&[("pro", "weight = 1000\nmax_frame_queue_ms = 5\ncalls_per_second = 0.001\nmonthly_minutes = 0")])
            .unwrap();

        let e = build(&[("Gold", "weight = 1")]).unwrap_err();
        assert_eq!(e.key, "plans.Gold");
        let e = build(&[("pro", "weight = 2"), ("pro", "burst = 3")]).unwrap_err();
        assert_eq!(e.to_string(), "plans.pro: plan \"pro\" is declared twice");
    }

    #[test]
    fn raw_plan_rejects_unknown_fields_and_bad_minutes() {
        assert!(toml::from_str::<RawPlan>("wieght = 2").is_err());
        assert!(toml::from_str::<RawPlan>("monthly_minutes = \"lots\"").is_err());
        assert!(toml::from_str::<RawPlan>("monthly_minutes = -5").is_err());
        assert!(toml::from_str::<RawPlan>("weight = -1").is_err());
        assert_eq!(raw("monthly_minutes = 7").monthly_minutes, Some(RawMinutes::Limited(7)));
        assert_eq!(raw("monthly_minutes = \"unlimited\"").monthly_minutes, Some(RawMinutes::Unlimited));
        assert_eq!(raw(""), RawPlan::default());
    }

    /// How config will read the `[plans]` table: a map of name to RawPlan, handed over in file order.
    #[test]
    fn a_plans_table_parses_from_toml() {
        #[derive(Deserialize)]
        struct File {
            plans: toml::Table,
        }
        let file: File =
            toml::from_str("[plans.pro]\nburst = 20\n[plans.tiny]\nweight = 1\nmax_concurrent_calls = 1\ncalls_per_second = 0.5\nburst = 1\nmonthly_minutes = 10\n")
                .unwrap();
        let entries: Vec<(String, RawPlan)> =
            file.plans.into_iter().map(|(k, v)| (k, v.try_into::<RawPlan>().unwrap())).collect();
        let set = build_plans(&entries).unwrap();
        assert_eq!(set.get("pro").unwrap().burst(), 20);
        assert_eq!(set.get("tiny").unwrap().calls_per_second(), 0.5);
    }
}
