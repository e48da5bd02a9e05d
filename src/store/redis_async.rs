//! The async Redis handle of the HTTP side: one multiplexed connection (redis's
//! `ConnectionManager`, which reconnects by itself; with `store.cluster`, redis's cluster
//! connection, see `store/connection.rs`), every call bounded by the command timeout
//! and guarded by the `redis` circuit breaker, latency and failures in the metrics.
//!
//! The handle exists even when Redis is down at start: the connection is made on first use
//! and retried (through the breaker) until it succeeds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connection::{StoreClient, StoreConnection};
use redis::{FromRedisValue, RedisError};

use super::{Keys, StoreConfig};
use crate::metrics::Metrics;
use crate::resilience::{BreakerOpen, CircuitBreaker, Guarded};

/// Why an async Redis call did not produce a value.
#[derive(Debug, thiserror::Error)]
pub enum RedisUnavailable {
    /// The breaker is open: not tried.
    #[error(transparent)]
    Open(#[from] BreakerOpen),
    /// Another call is connecting to Redis (callers do not queue behind a connect).
    #[error("redis {op}: connecting")]
    Connecting { op: &'static str },
    /// No answer within the command timeout.
    #[error("redis {op} timed out after {ms} ms")]
    Timeout { op: &'static str, ms: u64 },
    /// Connection or command error.
    #[error("redis {op}: {source}")]
    Failed {
        op: &'static str,
        #[source]
        source: RedisError,
    },
}

/// Whether a Redis error says the server is unhealthy (counts against the breaker) rather
/// than that the command was wrong (a script error, a wrong type).
pub fn is_outage(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
}

struct Inner {
    client: StoreClient,
    manager: tokio::sync::RwLock<Option<StoreConnection>>,
    breaker: Arc<CircuitBreaker>,
    keys: Keys,
    metrics: Metrics,
    connect_timeout: Duration,
    /// The command timeout of the connection (`store.command_timeout_ms`).
    command_timeout: Duration,
    evidence: super::evidence::Evidence,
}

/// Cloneable handle; clones share the connection and the breaker. Each handle has its own
/// budget per call ([`AsyncRedis::with_timeout`]): the HTTP side answers within tens of
/// milliseconds while the same connection keeps the command timeout for background work.
#[derive(Clone)]
pub struct AsyncRedis {
    inner: Arc<Inner>,
    timeout: Duration,
}

impl std::fmt::Debug for AsyncRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncRedis").field("keys", &self.inner.keys).finish_non_exhaustive()
    }
}

enum CallError {
    Timeout,
    Connecting,
    Redis(RedisError),
}

impl AsyncRedis {
    /// A handle for `config`; connects lazily.
    ///
    /// # Errors
    /// An unparsable Redis URL.
    pub fn new(
        config: &StoreConfig,
        breaker: Arc<CircuitBreaker>,
        metrics: Metrics,
    ) -> Result<Self, RedisError> {
        let timeout = Duration::from_millis(config.command_timeout_ms);
        Ok(Self {
            timeout,
            inner: Arc::new(Inner {
                client: StoreClient::new(config)?,
                manager: tokio::sync::RwLock::new(None),
                breaker,
                keys: Keys::of(config, &config.namespace),
                metrics,
                connect_timeout: Duration::from_millis(config.connect_timeout_ms),
                command_timeout: timeout,
                evidence: super::evidence::Evidence::default(),
            }),
        })
    }

    /// The same connection and breaker with another budget per call: a call still unanswered
    /// after `timeout` fails with [`RedisUnavailable::Timeout`] and counts against the breaker
    /// (a Redis too slow for the request path is unavailable to it).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self { inner: Arc::clone(&self.inner), timeout }
    }

    /// The budget of each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The namespace's key names.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// When this handle's calls (and its clones') last succeeded and failed (a failure: refused
    /// by the breaker, timed out, errored, or found another call still connecting). Answers
    /// built on Redis are degraded while the newest is a failure, even with the breaker
    /// closed.
    pub fn evidence(&self) -> &super::evidence::Evidence {
        &self.inner.evidence
    }

    /// A new pub/sub connection (outside the breaker and the shared connection: a
    /// subscription holds its connection for itself), within the connect timeout.
    ///
    /// # Errors
    /// [`RedisUnavailable`] (`op` = `pubsub_connect`).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, RedisUnavailable> {
        let op = "pubsub_connect";
        let timeout = self.inner.connect_timeout;
        match tokio::time::timeout(timeout, self.inner.client.pubsub_client().get_async_pubsub())
            .await
        {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(source)) => Err(RedisUnavailable::Failed { op, source }),
            Err(_) => Err(RedisUnavailable::Timeout { op, ms: timeout.as_millis() as u64 }),
        }
    }

    /// The breaker guarding every call.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.inner.breaker
    }

    async fn connection(&self) -> Result<StoreConnection, CallError> {
        if let Some(manager) = self.inner.manager.read().await.as_ref() {
            return Ok(manager.clone());
        }
        // One connect attempt at a time; concurrent callers fail fast instead of queueing
        // behind it (a silent server would otherwise cost each of them a connect timeout).
        let Ok(mut slot) = self.inner.manager.try_write() else {
            return Err(CallError::Connecting);
        };
        if let Some(manager) = slot.as_ref() {
            return Ok(manager.clone());
        }
        let connect = self
            .inner
            .client
            .connect_managed(self.inner.connect_timeout, self.inner.command_timeout);
        let manager = tokio::time::timeout(self.inner.connect_timeout, connect)
            .await
            .map_err(|_| CallError::Timeout)?
            .map_err(CallError::Redis)?;
        *slot = Some(manager.clone());
        Ok(manager)
    }

    async fn guarded<T, F, Fut>(&self, op: &'static str, call: F) -> Result<T, RedisUnavailable>
    where
        F: Fn(StoreConnection) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let started = Instant::now();
        let timeout = self.timeout;
        let attempt = async {
            let deadline = tokio::time::Instant::now() + timeout;
            let mut retried = false;
            loop {
                let connection = self.connection().await?;
                match tokio::time::timeout_at(deadline, call(connection)).await {
                    Ok(Ok(value)) => return Ok(value),
                    // The manager's last connect attempt was refused (Redis was down, and is
                    // perhaps back): the command was never sent, and the failure started a
                    // new connect. Once more within the budget, on that connection. Without
                    // it the first call after a restart always failed, and the request
                    // making it was answered stale.
                    Ok(Err(error)) if !retried && error.is_connection_refusal() => retried = true,
                    Ok(Err(error)) => return Err(CallError::Redis(error)),
                    Err(_) => return Err(CallError::Timeout),
                }
            }
        };
        let breaker = &self.inner.breaker;
        let result = match breaker.acquire() {
            Err(open) => Err(Guarded::Open(open)),
            Ok(permit) => {
                let result = attempt.await;
                match &result {
                    // Not an observation of the server: another call is connecting.
                    Err(CallError::Connecting) => breaker.release(permit),
                    // Behind this process's own flush transaction, not an outage.
                    Err(CallError::Timeout) => breaker.record_timeout(permit),
                    Err(CallError::Redis(error)) => breaker.record(permit, !is_outage(error)),
                    Ok(_) => breaker.record(permit, true),
                }
                result.map_err(Guarded::Inner)
            }
        };
        self.inner.evidence.record(result.is_ok());
        let metrics = &self.inner.metrics;
        metrics.redis_duration.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
        result.map_err(|error| {
            metrics.redis_errors.with_label_values(&[op]).inc();
            match error {
                Guarded::Open(open) => RedisUnavailable::Open(open),
                Guarded::Inner(CallError::Timeout) => {
                    RedisUnavailable::Timeout { op, ms: timeout.as_millis() as u64 }
                }
                Guarded::Inner(CallError::Connecting) => RedisUnavailable::Connecting { op },
                Guarded::Inner(CallError::Redis(source)) => RedisUnavailable::Failed { op, source },
            }
        })
    }

    /// Runs one command.
    ///
    /// # Errors
    /// [`RedisUnavailable`].
    pub async fn query<T: FromRedisValue + Send>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisUnavailable> {
        self.guarded(op, |mut connection| async move { cmd.query_async(&mut connection).await })
            .await
    }

    /// Runs a pipeline (atomic when built with `.atomic()`).
    ///
    /// # Errors
    /// [`RedisUnavailable`].
    pub async fn pipeline<T: FromRedisValue + Send>(
        &self,
        op: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisUnavailable> {
        self.guarded(op, |mut connection| async move { pipe.query_async(&mut connection).await })
            .await
    }

    /// Runs a Lua script (EVALSHA, loading it on first use) with `keys` and `args`.
    ///
    /// # Errors
    /// [`RedisUnavailable`].
    pub async fn script<T: FromRedisValue + Send>(
        &self,
        op: &'static str,
        script: &redis::Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, RedisUnavailable> {
        self.guarded(op, |mut connection| async move {
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(*key);
            }
            for arg in args {
                invocation.arg(*arg);
            }
            invocation.invoke_async(&mut connection).await
        })
        .await
    }
}
