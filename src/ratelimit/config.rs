//! Configuration of the `rate_limit` section.

use serde::{Deserialize, Serialize};

use super::RouteClass;

/// The budget of one route class, per subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassLimit {
    /// Sustained rate, requests per second (finite, > 0).
    pub rate_per_second: f64,
    /// Requests a subject may send at once after being idle (>= 1).
    pub burst: u32,
}

impl ClassLimit {
    /// The stricter budget of the in-process fallback: rate and burst times `factor`, the burst
    /// rounded up (at least 1).
    pub fn scaled(&self, factor: f64) -> ClassLimit {
        let burst = (f64::from(self.burst) * factor).ceil().clamp(1.0, f64::from(u32::MAX));
        ClassLimit { rate_per_second: self.rate_per_second * factor, burst: burst as u32 }
    }
}

/// Rate limiting of the `/v1` routes: per subject (the token's `sub`, else the client address,
/// else one shared anonymous bucket) and per route class, in Redis (GCRA), with an in-process
/// fallback while Redis is unreachable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Limit at all (default true). Off, no limit and no RateLimit headers.
    pub enabled: bool,
    /// The in-process fallback's budget is the Redis one times this factor (default 0.5, in
    /// (0, 1]): while Redis is down each instance limits on its own, so N instances would
    /// otherwise let through N times the budget.
    pub fallback_factor: f64,
    /// Subjects the in-process fallback keeps per class before dropping idle ones
    /// (default 100000, >= 1).
    pub fallback_max_subjects: usize,
    /// How long a lease of budget cells lives, ms (default 250; 0 = no leases, one Redis call
    /// per request). A busy subject takes up to `rate x lease_ms` cells of its Redis bucket at
    /// once (at most half its burst) and this instance hands them out without a round trip;
    /// unused cells go back with the next fetch (`ratelimit::lease`). Subjects slower than
    /// two requests per lease time are decided by Redis on every request. At most 60000
    /// ([`MAX_LEASE_MS`]): a subject may spend a cell up to a lease time after the bucket
    /// charged it, and after a failed fetch it asks Redis again once a lease time.
    pub lease_ms: u64,
    /// Key unauthenticated requests on the last address of `X-Forwarded-For`, the one the
    /// trusted proxy in front of the service appended (default false: only set it behind such a
    /// proxy, or clients pick their own bucket).
    pub trust_forwarded_for: bool,
    /// `/v1/users/*` and `/v1/items/*` (default 50/s, burst 100).
    pub recs: ClassLimit,
    /// The same routes for a service client, `sub` = `client:<id>` (default 5000/s, burst
    /// 10000: one recommendation service asks for many users).
    pub service_recs: ClassLimit,
    /// `POST /v1/events` (default 200/s, burst 400).
    pub events: ClassLimit,
    /// `/v1/auth/*` (default 5/s, burst 10).
    pub auth: ClassLimit,
    /// `/v1/admin/*` (default 5/s, burst 10).
    pub admin: ClassLimit,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            fallback_factor: 0.5,
            fallback_max_subjects: 100_000,
            lease_ms: 250,
            trust_forwarded_for: false,
            recs: ClassLimit { rate_per_second: 50.0, burst: 100 },
            service_recs: ClassLimit { rate_per_second: 5000.0, burst: 10_000 },
            events: ClassLimit { rate_per_second: 200.0, burst: 400 },
            auth: ClassLimit { rate_per_second: 5.0, burst: 10 },
            admin: ClassLimit { rate_per_second: 5.0, burst: 10 },
        }
    }
}

/// A `rate_limit` field out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} = {value} is invalid: {rule}")]
pub struct InvalidRateLimit {
    /// Field path, e.g. `rate_limit.recs.burst`.
    pub field: &'static str,
    /// Its value.
    pub value: String,
    /// The constraint.
    pub rule: &'static str,
}

/// The longest lease, ms (`rate_limit.lease_ms`).
pub const MAX_LEASE_MS: u64 = 60_000;

/// The highest `rate_per_second`: the script stores the bucket in whole microseconds, so a
/// rate above a million a second (an interval below 1 µs) would lose part of every charge
/// to rounding, and above two million charge nothing.
pub const MAX_RATE_PER_SECOND: f64 = 1_000_000.0;

impl RateLimitConfig {
    /// The budget of `class`.
    pub fn limit(&self, class: RouteClass) -> &ClassLimit {
        match class {
            RouteClass::Recs => &self.recs,
            RouteClass::ServiceRecs => &self.service_recs,
            RouteClass::Events => &self.events,
            RouteClass::Auth => &self.auth,
            RouteClass::Admin => &self.admin,
        }
    }

    /// Checks every field.
    ///
    /// # Errors
    /// The first [`InvalidRateLimit`].
    pub fn validate(&self) -> Result<(), InvalidRateLimit> {
        let factor = self.fallback_factor;
        if !(factor > 0.0 && factor <= 1.0) {
            return Err(InvalidRateLimit {
                field: "rate_limit.fallback_factor",
                value: factor.to_string(),
                rule: "must be in (0, 1]",
            });
        }
        if self.fallback_max_subjects == 0 {
            return Err(InvalidRateLimit {
                field: "rate_limit.fallback_max_subjects",
                value: "0".to_owned(),
                rule: "must be >= 1",
            });
        }
        if self.lease_ms > MAX_LEASE_MS {
            return Err(InvalidRateLimit {
                field: "rate_limit.lease_ms",
                value: self.lease_ms.to_string(),
                rule: "must be <= 60000",
            });
        }
        for class in RouteClass::ALL {
            let limit = self.limit(class);
            let rate = limit.rate_per_second;
            if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE_PER_SECOND) {
                return Err(InvalidRateLimit {
                    field: class.rate_field(),
                    value: rate.to_string(),
                    rule: "must be > 0 and <= 1000000",
                });
            }
            if limit.burst == 0 {
                return Err(InvalidRateLimit {
                    field: class.burst_field(),
                    value: "0".to_owned(),
                    rule: "must be >= 1",
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_is_scaled_and_never_below_one() {
        let limit = ClassLimit { rate_per_second: 10.0, burst: 5 };
        assert_eq!(limit.scaled(0.5), ClassLimit { rate_per_second: 5.0, burst: 3 });
        assert_eq!(limit.scaled(0.01).burst, 1);
    }

    #[test]
    fn validate_names_the_field() {
        assert_eq!(RateLimitConfig::default().validate(), Ok(()));
        let factor = RateLimitConfig { fallback_factor: 1.5, ..RateLimitConfig::default() };
        assert_eq!(factor.validate().map_err(|e| e.field), Err("rate_limit.fallback_factor"));
        let rate = RateLimitConfig {
            auth: ClassLimit { rate_per_second: f64::NAN, burst: 1 },
            ..RateLimitConfig::default()
        };
        assert_eq!(rate.validate().map_err(|e| e.field), Err("rate_limit.auth.rate_per_second"));
        let config = RateLimitConfig {
            events: ClassLimit { rate_per_second: 1.0, burst: 0 },
            ..RateLimitConfig::default()
        };
        assert_eq!(config.validate().map_err(|e| e.field), Err("rate_limit.events.burst"));
        let fast = RateLimitConfig {
            service_recs: ClassLimit { rate_per_second: 2e6, burst: 10 },
            ..RateLimitConfig::default()
        };
        let field = fast.validate().map_err(|e| e.field);
        assert_eq!(field, Err("rate_limit.service_recs.rate_per_second"));
        let lease = RateLimitConfig { lease_ms: 3_600_000, ..RateLimitConfig::default() };
        assert_eq!(lease.validate().map_err(|e| e.field), Err("rate_limit.lease_ms"));
    }
}
