//! Admission control of the HTTP side: per-subject rate limits (GCRA in Redis, shared by every
//! instance, with an in-process fallback) and load shedding (a global concurrency limit).
//!
//! - [`RateLimiter`]: one decision per request, keyed `{ns}:rl:{class}:{subject}`: an EVALSHA
//!   of [`gcra::SCRIPT`] on Redis's clock, or, for a busy subject, a cell of a lease taken from
//!   the same bucket earlier ([`lease`]). When Redis is unreachable (error, timeout, or the
//!   `redis` breaker open) the stricter [`local::LocalLimiter`] decides instead: the service
//!   neither fails open nor answers 500.
//! - [`http::enforce`]: the axum middleware: 429 `rate_limited` with `Retry-After`, and the
//!   `RateLimit-Policy` / `RateLimit` headers ([`headers`]) on every limited route's response.
//! - [`shed::limit_concurrency`]: tower's concurrency limit and load shedding around the
//!   `/v1` routes, 503 `overloaded` with `Retry-After: 1` when full.

pub mod config;
pub mod gcra;
pub mod headers;
pub mod http;
pub mod lease;
pub mod local;
pub mod shed;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use config::{ClassLimit, InvalidRateLimit, RateLimitConfig};
pub use gcra::Outcome;
pub use http::enforce;
pub use shed::limit_concurrency;

use crate::metrics::Metrics;
use crate::store::AsyncRedis;

/// The route classes with their own budgets. Health, readiness and metrics have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    /// `/v1/users/*`, `/v1/items/*`, `/v1/whoami`: recommendations, scores, vectors.
    Recs,
    /// The same routes called by a service client (a token whose `sub` is `client:<id>`): a
    /// recommendation service is typically one client asking for many users, so it has a
    /// budget of its own instead of one user's.
    ServiceRecs,
    /// `/v1/events`: event ingestion.
    Events,
    /// `/v1/auth/*`: token issuance and revocation.
    Auth,
    /// `/v1/admin/*`: flags and operations.
    Admin,
}

impl RouteClass {
    /// Every class.
    pub const ALL: [RouteClass; 5] =
        [Self::Recs, Self::ServiceRecs, Self::Events, Self::Auth, Self::Admin];

    /// The class of a request path, `None` for unlimited routes.
    pub fn of_path(path: &str) -> Option<Self> {
        let rest = path.strip_prefix("/v1/")?;
        let segment = rest.split('/').next().unwrap_or("");
        match segment {
            "users" | "items" | "whoami" => Some(Self::Recs),
            "events" => Some(Self::Events),
            "auth" => Some(Self::Auth),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// The class of a request by a subject that is (`service`) or is not a service client:
    /// [`RouteClass::Recs`] becomes [`RouteClass::ServiceRecs`] for a service client.
    pub fn for_subject(self, service: bool) -> Self {
        match self {
            Self::Recs if service => Self::ServiceRecs,
            other => other,
        }
    }

    /// Name in keys, headers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recs => "recs",
            Self::ServiceRecs => "service_recs",
            Self::Events => "events",
            Self::Auth => "auth",
            Self::Admin => "admin",
        }
    }

    fn rate_field(self) -> &'static str {
        match self {
            Self::Recs => "rate_limit.recs.rate_per_second",
            Self::ServiceRecs => "rate_limit.service_recs.rate_per_second",
            Self::Events => "rate_limit.events.rate_per_second",
            Self::Auth => "rate_limit.auth.rate_per_second",
            Self::Admin => "rate_limit.admin.rate_per_second",
        }
    }

    fn burst_field(self) -> &'static str {
        match self {
            Self::Recs => "rate_limit.recs.burst",
            Self::ServiceRecs => "rate_limit.service_recs.burst",
            Self::Events => "rate_limit.events.burst",
            Self::Auth => "rate_limit.auth.burst",
            Self::Admin => "rate_limit.admin.burst",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Recs => 0,
            Self::ServiceRecs => 1,
            Self::Events => 2,
            Self::Auth => 3,
            Self::Admin => 4,
        }
    }
}

/// The lease behind `slot` (a poisoned lock still holds a consistent lease: every update is a
/// few assignments).
fn lock(slot: &std::sync::Mutex<lease::Lease>) -> std::sync::MutexGuard<'_, lease::Lease> {
    slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Which limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The shared budget in Redis.
    Redis,
    /// The in-process fallback.
    Local,
}

impl Backend {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Local => "local",
        }
    }
}

/// One rate-limit decision with the budget it was made under.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The route class.
    pub class: RouteClass,
    /// Allowed or not, remaining, retry and reset times.
    pub outcome: Outcome,
    /// The budget enforced (the scaled one when `backend` is local).
    pub limit: ClassLimit,
    /// Who decided.
    pub backend: Backend,
}

/// The rate limiter of the HTTP side. Cloning shares it.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    config: RateLimitConfig,
    redis: AsyncRedis,
    script: redis::Script,
    namespace: String,
    local: [local::LocalLimiter; 5],
    /// Leases by bucket key (`lease`), as many subjects as the fallback keeps.
    leases: quick_cache::sync::Cache<String, Arc<std::sync::Mutex<lease::Lease>>>,
    metrics: Metrics,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter for `config` over `redis` (its namespace prefixes the keys).
    pub fn new(config: &RateLimitConfig, redis: AsyncRedis, metrics: Metrics) -> Self {
        let local = RouteClass::ALL.map(|class| {
            let scaled = config.limit(class).scaled(config.fallback_factor);
            local::LocalLimiter::new(scaled, config.fallback_max_subjects)
        });
        Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                namespace: redis.keys().prefix().to_owned(),
                redis,
                script: redis::Script::new(gcra::SCRIPT),
                local,
                leases: quick_cache::sync::Cache::new(config.fallback_max_subjects),
                metrics,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RateLimitConfig {
        &self.inner.config
    }

    /// The Redis key of `subject`'s bucket for `class`.
    pub fn key(&self, class: RouteClass, subject: &str) -> String {
        format!("{}:rl:{}:{subject}", self.inner.namespace, class.as_str())
    }

    /// Counts one request of `subject` in `class`: in Redis (from a lease of cells taken
    /// earlier, for a busy subject: [`lease`]), or in process while Redis is unreachable.
    /// Never fails.
    pub async fn check(&self, class: RouteClass, subject: &str) -> Decision {
        let inner = &self.inner;
        let limit = inner.config.limit(class);
        let key = self.key(class, subject);
        let lease_time = Duration::from_millis(inner.config.lease_ms);
        let max_cells = lease::max_cells(limit, lease_time);
        let decision = if max_cells == 0 {
            match self.fetch(limit, &key, 1, gcra::GiveBack::NONE).await {
                Some(grant) => self.shared(class, grant.outcome),
                None => self.local(class, subject),
            }
        } else {
            self.leased(class, subject, key, max_cells, lease_time).await
        };
        let verdict = if decision.outcome.allowed { "allowed" } else { "limited" };
        inner
            .metrics
            .ratelimit_decisions
            .with_label_values(&[class.as_str(), decision.backend.as_str(), verdict])
            .inc();
        decision
    }

    /// A decision for a subject with leases ([`lease`]): a cell of its lease, a refusal still
    /// holding, a fetch (the request waits), or the in-process limiter after a failure; starts
    /// a top-up in the background when the lease runs low.
    async fn leased(
        &self,
        class: RouteClass,
        subject: &str,
        key: String,
        max_cells: u32,
        lease_time: Duration,
    ) -> Decision {
        let limit = self.inner.config.limit(class);
        let slot = self
            .inner
            .leases
            .get_or_insert_with(&key, || {
                Ok::<_, std::convert::Infallible>(Arc::new(std::sync::Mutex::new(
                    lease::Lease::default(),
                )))
            })
            .unwrap_or_else(|never| match never {});
        let (plan, top_up) = lock(&slot).plan(Instant::now(), max_cells, lease_time);
        // A fetch for the lease runs as a task of its own, so that it settles the lease even
        // when the request waiting on it is dropped (a client gone).
        let fetch_for_lease = |fetch: lease::Fetch, waiting: bool| {
            let (limiter, slot, key, limit) =
                (self.clone(), Arc::clone(&slot), key.clone(), limit.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let answer = limiter.fetch(&limit, &key, fetch.wanted, fetch.given_back).await;
                lock(&slot).settle(started, answer, lease_time, waiting)
            })
        };
        if let Some(fetch) = top_up {
            drop(fetch_for_lease(fetch, false));
        }
        match plan {
            lease::Plan::Answer(outcome) => self.shared(class, outcome),
            lease::Plan::Local => self.local(class, subject),
            lease::Plan::Ask { fetch, lease: true } => {
                match fetch_for_lease(fetch, true).await.ok().flatten() {
                    Some(outcome) => self.shared(class, outcome),
                    None => self.local(class, subject),
                }
            }
            lease::Plan::Ask { fetch, lease: false } => {
                let answer = self.fetch(limit, &key, fetch.wanted, fetch.given_back).await;
                let outcome = answer.map(|grant| grant.outcome);
                lock(&slot).note(Instant::now(), outcome.as_ref(), lease_time);
                match outcome {
                    Some(outcome) => self.shared(class, outcome),
                    None => self.local(class, subject),
                }
            }
        }
    }

    /// One step of the shared bucket `key`: `wanted` cells asked for, `given_back` returned.
    /// `None` when Redis did not answer (logged).
    async fn fetch(
        &self,
        limit: &ClassLimit,
        key: &str,
        wanted: u32,
        given_back: gcra::GiveBack,
    ) -> Option<gcra::Grant> {
        let inner = &self.inner;
        let interval = gcra::interval_us(limit.rate_per_second).to_string();
        let burst = limit.burst.to_string();
        let wanted = wanted.to_string();
        let (cells, charge_end) =
            (given_back.cells.to_string(), given_back.charge_end_us.to_string());
        let reply = inner
            .redis
            .script::<(i64, i64, i64, i64, i64)>(
                "rate_limit",
                &inner.script,
                &[key],
                &[&interval, &burst, &wanted, &cells, &charge_end],
            )
            .await;
        match reply {
            Ok(reply) => Some(gcra::Grant::from_reply(reply)),
            Err(error) => {
                tracing::debug!(key, error = %error, "rate limit falls back to the in-process limiter");
                None
            }
        }
    }

    /// A decision of the shared budget.
    fn shared(&self, class: RouteClass, outcome: Outcome) -> Decision {
        Decision {
            class,
            outcome,
            limit: self.inner.config.limit(class).clone(),
            backend: Backend::Redis,
        }
    }

    /// A decision of the in-process fallback.
    fn local(&self, class: RouteClass, subject: &str) -> Decision {
        let local = &self.inner.local[class.index()];
        Decision {
            class,
            outcome: local.check(subject),
            limit: local.limit().clone(),
            backend: Backend::Local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_classes() {
        let cases = [
            ("/v1/users/u1/recommendations", Some(RouteClass::Recs)),
            ("/v1/users/u1", Some(RouteClass::Recs)),
            ("/v1/items/i1/similar", Some(RouteClass::Recs)),
            ("/v1/whoami", Some(RouteClass::Recs)),
            ("/v1/events", Some(RouteClass::Events)),
            ("/v1/auth/token", Some(RouteClass::Auth)),
            ("/v1/admin/flags", Some(RouteClass::Admin)),
            ("/healthz", None),
            ("/readyz", None),
            ("/metrics", None),
            ("/v1/usersx", None),
            ("/v2/users/u1", None),
        ];
        for (path, class) in cases {
            assert_eq!(RouteClass::of_path(path), class, "{path}");
        }
        assert_eq!(RouteClass::Recs.for_subject(true), RouteClass::ServiceRecs);
        assert_eq!(RouteClass::Recs.for_subject(false), RouteClass::Recs);
        assert_eq!(RouteClass::Events.for_subject(true), RouteClass::Events);
    }
}
