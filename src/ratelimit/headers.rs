//! The response headers of a rate-limited route: `RateLimit-Policy` and `RateLimit` of
//! draft-ietf-httpapi-ratelimit-headers-10 (IETF HTTPAPI WG, 2025; the structured-field form
//! the drafts have used since -08, <https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/>),
//! and `Retry-After` (RFC 9110 section 10.2.3) on refusals.
//!
//! - `RateLimit-Policy: "recs";q=100;w=2`: the quota `q` (the burst) of policy `recs` and its
//!   window `w`, the whole seconds an empty bucket takes to refill (burst / rate, rounded up).
//! - `RateLimit: "recs";r=42;t=1`: `r` requests available now, `t` seconds until the bucket
//!   is full again (rounded up).
//!
//! The values describe the budget actually enforced: the in-process fallback's stricter one
//! while Redis is unreachable. No partition key (`pk`) is sent: it would echo the subject.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::config::ClassLimit;
use super::gcra::Outcome;
use super::RouteClass;

/// `RateLimit-Policy`.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whole seconds, rounded up.
pub fn ceil_seconds(duration: Duration) -> u64 {
    let seconds = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        seconds + 1
    } else {
        seconds
    }
}

/// The `RateLimit-Policy` value of `class` under `limit`.
pub fn policy_value(class: RouteClass, limit: &ClassLimit) -> String {
    let window = (f64::from(limit.burst) / limit.rate_per_second).ceil().max(1.0);
    format!("\"{}\";q={};w={}", class.as_str(), limit.burst, window as u64)
}

/// The `RateLimit` value of `class` after `outcome`.
pub fn limit_value(class: RouteClass, outcome: &Outcome) -> String {
    format!(
        "\"{}\";r={};t={}",
        class.as_str(),
        outcome.remaining,
        ceil_seconds(outcome.reset_after)
    )
}

/// The `Retry-After` value of a refusal: whole seconds, rounded up, at least 1 (a client told
/// 0 would retry at once and be refused again).
pub fn retry_after_value(outcome: &Outcome) -> u64 {
    ceil_seconds(outcome.retry_after).max(1)
}

/// Adds the RateLimit headers (and `Retry-After` when refused) to `headers`.
pub fn apply(headers: &mut HeaderMap, class: RouteClass, limit: &ClassLimit, outcome: &Outcome) {
    let values = [
        (&RATELIMIT_POLICY, policy_value(class, limit)),
        (&RATELIMIT, limit_value(class, outcome)),
    ];
    for (name, value) in values {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name.clone(), value);
        }
    }
    if !outcome.allowed {
        headers
            .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(retry_after_value(outcome)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(allowed: bool, remaining: u32, retry_ms: u64, reset_ms: u64) -> Outcome {
        Outcome {
            allowed,
            remaining,
            retry_after: Duration::from_millis(retry_ms),
            reset_after: Duration::from_millis(reset_ms),
        }
    }

    #[test]
    fn policy_window_is_the_refill_time_rounded_up() {
        let limit = ClassLimit { rate_per_second: 50.0, burst: 100 };
        assert_eq!(policy_value(RouteClass::Recs, &limit), "\"recs\";q=100;w=2");
        let fast = ClassLimit { rate_per_second: 1000.0, burst: 10 };
        assert_eq!(policy_value(RouteClass::Events, &fast), "\"events\";q=10;w=1");
        let slow = ClassLimit { rate_per_second: 0.3, burst: 1 };
        assert_eq!(policy_value(RouteClass::Admin, &slow), "\"admin\";q=1;w=4");
    }

    #[test]
    fn ratelimit_value_rounds_the_reset_up() {
        assert_eq!(limit_value(RouteClass::Auth, &outcome(true, 7, 0, 1)), "\"auth\";r=7;t=1");
        assert_eq!(limit_value(RouteClass::Auth, &outcome(true, 9, 0, 0)), "\"auth\";r=9;t=0");
        assert_eq!(limit_value(RouteClass::Recs, &outcome(false, 0, 20, 2000)), "\"recs\";r=0;t=2");
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        assert_eq!(retry_after_value(&outcome(false, 0, 1, 1)), 1);
        assert_eq!(retry_after_value(&outcome(false, 0, 1000, 1000)), 1);
        assert_eq!(retry_after_value(&outcome(false, 0, 1001, 1001)), 2);
        assert_eq!(retry_after_value(&outcome(false, 0, 0, 0)), 1);
    }

    #[test]
    fn apply_sets_retry_after_only_when_refused() {
        let limit = ClassLimit { rate_per_second: 1.0, burst: 2 };
        let mut allowed = HeaderMap::new();
        apply(&mut allowed, RouteClass::Recs, &limit, &outcome(true, 1, 0, 1000));
        assert_eq!(allowed["ratelimit-policy"], "\"recs\";q=2;w=2");
        assert_eq!(allowed["ratelimit"], "\"recs\";r=1;t=1");
        assert!(allowed.get("retry-after").is_none());
        let mut refused = HeaderMap::new();
        apply(&mut refused, RouteClass::Recs, &limit, &outcome(false, 0, 1500, 2000));
        assert_eq!(refused["retry-after"], "2");
    }
}
