//! A blocking Redis connection whose every call has a deadline that holds against a server
//! that accepts and never answers (a `SIGSTOP`ped redis-server, a dead peer behind a live
//! load balancer).
//!
//! redis's synchronous `Connection` only sets socket read and write timeouts, which bound each
//! `read(2)`, not a call: a `MULTI`/`EXEC` of n commands reads n + 2 replies, and after a
//! timed-out read it goes on reading the remaining ones, one socket timeout each, so one flush
//! against a frozen server blocked for the whole freeze (issue 9, item 4). Here each call runs
//! on a multiplexed async connection inside a private current-thread tokio runtime, under
//! `tokio::time::timeout` (connect: `store.connect_timeout_ms`; call: `store.command_timeout_ms`),
//! with redis's own response timeout set as well. After a timeout or an IO error the connection
//! is dropped and the next call connects afresh, so no reply of an abandoned call can ever be
//! taken for the answer to a later one.

use std::future::Future;
use std::time::Duration;

use super::connection::{StoreClient, StoreConnection};

use super::{is_outage, StoreConfig, StoreError};

/// One Redis connection for a blocking caller (the ingest thread), every call under a deadline.
pub(super) struct BlockingConnection {
    client: StoreClient,
    /// `Some` until drop (see [`Drop`]).
    runtime: Option<tokio::runtime::Runtime>,
    connection: Option<StoreConnection>,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl BlockingConnection {
    /// A connection to `config.url`; connects on first use.
    ///
    /// # Errors
    /// [`StoreError::Redis`] for an unparsable URL, [`StoreError::Runtime`] when the private
    /// runtime cannot be built.
    pub(super) fn new(config: &StoreConfig) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StoreError::Runtime)?;
        Ok(Self {
            client: StoreClient::new(config)?,
            runtime: Some(runtime),
            connection: None,
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            command_timeout: Duration::from_millis(config.command_timeout_ms),
        })
    }

    /// Runs `call` on the connection (connecting first if needed) and waits at most the connect
    /// timeout for the connection plus the command timeout for the call.
    ///
    /// # Errors
    /// [`StoreError::Timeout`] when the deadline passes, [`StoreError::Redis`] for connection
    /// and command errors. After a timeout or an IO-level error the connection is dropped.
    pub(super) fn call<T, F, Fut>(
        &mut self,
        operation: &'static str,
        call: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(StoreConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let Some(runtime) = self.runtime.as_ref() else {
            return Err(StoreError::Runtime(std::io::Error::other("the store is shutting down")));
        };
        let (connect_timeout, command_timeout) = (self.connect_timeout, self.command_timeout);
        let existing = self.connection.clone();
        let client = &self.client;
        let (connection, result) = runtime.block_on(async move {
            let connection = match existing {
                Some(connection) => connection,
                None => {
                    let connect = client.connect(connect_timeout, command_timeout);
                    match tokio::time::timeout(connect_timeout, connect).await {
                        Ok(Ok(connection)) => connection,
                        Ok(Err(error)) => return (None, Err(StoreError::Redis(error))),
                        Err(_) => {
                            let ms = connect_timeout.as_millis() as u64;
                            return (None, Err(StoreError::Timeout { operation: "connect", ms }));
                        }
                    }
                }
            };
            let result = match tokio::time::timeout(command_timeout, call(connection.clone())).await
            {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(error)) => Err(StoreError::Redis(error)),
                Err(_) => {
                    Err(StoreError::Timeout { operation, ms: command_timeout.as_millis() as u64 })
                }
            };
            (Some(connection), result)
        });
        let keep = match &result {
            Ok(_) => true,
            Err(error) => !error.is_outage(),
        };
        self.connection = if keep { connection } else { None };
        result
    }
}

impl BlockingConnection {
    /// Drops the connection (the next call connects afresh). Its buffers keep the capacity of
    /// the largest command sent on it, so a caller drops it after a large transaction: one
    /// flush of a whole catalogue's items kept 40 MiB at 20,000 items (BENCHMARKS.md, "Memory
    /// per entity").
    pub(super) fn release(&mut self) {
        self.connection = None;
    }
}

impl StoreError {
    /// Whether the error says Redis is unhealthy (IO error, timeout, refused or dropped
    /// connection): it counts against the `redis` breaker. Command errors, corrupt values and
    /// a lost namespace do not.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Redis(error) => is_outage(error),
            Self::Timeout { .. } => true,
            _ => false,
        }
    }
}

impl Drop for BlockingConnection {
    fn drop(&mut self) {
        // Dropping a runtime blocks on its tasks, which is not allowed inside an async context
        // (an engine dropped by the async `run` after a failed restore).
        self.connection = None;
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
