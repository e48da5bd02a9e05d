//! One Redis connection type for a single server and for a Redis Cluster (`store.cluster`).
//!
//! With a cluster, every key of a namespace carries the hash tag `{ns}` (see [`super::Keys`]),
//! so all of them live in one hash slot: every transaction (`MULTI`/`EXEC`, `WATCH`) and every
//! script of the namespace stays on the master that owns that slot. The redis crate's async
//! cluster client (`redis::cluster_async`) routes each command, pipeline and script by its
//! first key, reads the slot map from the seed nodes, and follows `MOVED` (a slot that moved
//! for good: failover, finished reshard), `ASK` (a key already migrated during a reshard) and
//! `TRYAGAIN` (a multi-key command whose keys are split by a migration in progress) with its
//! own bounded retries. A transaction that still cannot run inside the call's deadline fails
//! as a whole (Redis checks the slot of each command when it is queued, so an aborted `EXEC`
//! applied nothing) and its caller retries it like any other transient failure.
//!
//! This is the layout BullMQ and Sidekiq document for Redis Cluster (a `{prefix}` hash tag per
//! queue): a cluster spreads namespaces, and the session, flag and rate-limit traffic of
//! several namespaces, over its masters; one namespace's learned state is served by one master
//! at a time (docs/design/scale-out.md).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::StoreConfig;

/// Whether `error` is a Redis Cluster redirect or a slot in motion that retrying after a
/// moment clears: `MOVED`, `ASK`, `TRYAGAIN` or `CLUSTERDOWN`, alone, or as every error of a
/// pipeline or of an aborted transaction. The cluster client follows a redirect of one
/// command by itself; a pipeline whose keys are split by a migration in progress, and a
/// transaction whose queued commands were redirected (Redis then runs none of them), come back
/// with these errors until the migration ends.
pub fn is_cluster_redirect(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    let redirect = |kind: Option<ServerErrorKind>| {
        matches!(
            kind,
            Some(
                ServerErrorKind::Moved
                    | ServerErrorKind::Ask
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
            )
        )
    };
    if !matches!(error.kind(), ErrorKind::Server(_)) {
        return false;
    }
    match error.clone().into_server_errors() {
        Some(errors) => {
            !errors.is_empty() && errors.iter().all(|(_, error)| redirect(error.kind()))
        }
        None => error.is_cluster_error(),
    }
}

/// How many times the cluster client follows a redirect or waits out `TRYAGAIN` within one
/// call (each call is also bounded by `store.command_timeout_ms`).
const CLUSTER_RETRIES: u32 = 6;
/// Longest wait between two such attempts, ms.
const CLUSTER_MAX_RETRY_WAIT_MS: u64 = 500;

/// Where the store's connections go: one server, or a cluster reached through seed nodes.
#[derive(Clone)]
pub(crate) enum StoreClient {
    /// `store.url`.
    Single(redis::Client),
    /// `store.url` split at commas: the seed nodes of a Redis Cluster.
    Cluster {
        /// The cluster client (slot map, redirects).
        cluster: Box<ClusterClient>,
        /// The first seed, for pub/sub (a cluster forwards `PUBLISH` to every node).
        seed: redis::Client,
    },
}

impl std::fmt::Debug for StoreClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(_) => f.write_str("StoreClient::Single"),
            Self::Cluster { .. } => f.write_str("StoreClient::Cluster"),
        }
    }
}

impl StoreClient {
    /// The client for `config` (connects lazily).
    ///
    /// # Errors
    /// An unparsable URL, or a cluster without seeds.
    pub(crate) fn new(config: &StoreConfig) -> RedisResult<Self> {
        if !config.cluster {
            return Ok(Self::Single(redis::Client::open(config.url.as_str())?));
        }
        let seeds = config.seeds();
        let Some(first) = seeds.first() else {
            return Err(
                (redis::ErrorKind::InvalidClientConfig, "store.url names no seed node").into()
            );
        };
        let seed = redis::Client::open(*first)?;
        let cluster = ClusterClient::builder(seeds.iter().copied())
            .connection_timeout(Duration::from_millis(config.connect_timeout_ms))
            .response_timeout(Duration::from_millis(config.command_timeout_ms))
            .retries(CLUSTER_RETRIES)
            .max_retry_wait(CLUSTER_MAX_RETRY_WAIT_MS)
            .build()?;
        Ok(Self::Cluster { cluster: Box::new(cluster), seed })
    }

    /// A multiplexed connection (single server) or a cluster connection, for the ingest
    /// thread's blocking store.
    pub(crate) async fn connect(
        &self,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> RedisResult<StoreConnection> {
        match self {
            Self::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(command_timeout));
                Ok(StoreConnection::Single(
                    client.get_multiplexed_async_connection_with_config(&config).await?,
                ))
            }
            Self::Cluster { cluster, .. } => {
                Ok(StoreConnection::Cluster(cluster.get_async_connection().await?))
            }
        }
    }

    /// A self-reconnecting connection for the HTTP side: redis's `ConnectionManager` for a
    /// single server (no retries of its own), the cluster connection (which reconnects to
    /// each node by itself) for a cluster.
    pub(crate) async fn connect_managed(
        &self,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> RedisResult<StoreConnection> {
        match self {
            Self::Single(client) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(command_timeout))
                    .set_number_of_retries(0);
                Ok(StoreConnection::Managed(
                    client.get_connection_manager_with_config(config).await?,
                ))
            }
            Self::Cluster { .. } => self.connect(connect_timeout, command_timeout).await,
        }
    }

    /// The client pub/sub connections are made from (the seed node for a cluster).
    pub(crate) fn pubsub_client(&self) -> &redis::Client {
        match self {
            Self::Single(client) | Self::Cluster { seed: client, .. } => client,
        }
    }
}

/// A connection to a single Redis or to a cluster; cheap to clone (clones share it).
#[derive(Clone)]
pub enum StoreConnection {
    /// One server, multiplexed.
    Single(MultiplexedConnection),
    /// One server, behind redis's reconnecting manager.
    Managed(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for StoreConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_cluster() {
            "StoreConnection::Cluster"
        } else {
            "StoreConnection::Single"
        })
    }
}

impl StoreConnection {
    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Runs `cmd` on the master holding `key`'s slot (with a single server, on it): for
    /// commands whose routing the cluster client cannot take from their arguments, such as
    /// `SCAN` over one namespace (whose keys all share one slot).
    ///
    /// # Errors
    /// The command's error.
    pub async fn query_on_slot_of<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: Cmd,
    ) -> RedisResult<T> {
        match self {
            Self::Cluster(cluster) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(key, SlotAddr::Master),
                ));
                let value = cluster.route_command(cmd, routing).await?;
                Ok(redis::from_redis_value(value)?)
            }
            _ => cmd.query_async(self).await,
        }
    }
}

impl StoreConnection {
    /// Every key matching `pattern` (of type `of_type` when given), by `SCAN` so that Redis
    /// is never blocked by a `KEYS`. With a cluster: on the master holding `slot_key`'s slot
    /// when given (every key of a namespace is there), otherwise on every master.
    ///
    /// # Errors
    /// The first failing command's error.
    pub async fn scan_keys(
        &mut self,
        pattern: &str,
        of_type: Option<&str>,
        slot_key: Option<&str>,
    ) -> RedisResult<Vec<String>> {
        let command = |cursor: u64| {
            let mut command = redis::cmd("SCAN");
            command.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
            if let Some(of_type) = of_type {
                command.arg("TYPE").arg(of_type);
            }
            command
        };
        let Self::Cluster(cluster) = self else {
            let mut keys = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, batch): (u64, Vec<String>) = command(cursor).query_async(self).await?;
                keys.extend(batch);
                cursor = next;
                if cursor == 0 {
                    return Ok(keys);
                }
            }
        };
        let nodes = match slot_key {
            Some(key) => {
                vec![SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master))]
            }
            None => masters(cluster)
                .await?
                .into_iter()
                .map(|(host, port)| SingleNodeRoutingInfo::ByAddress { host, port })
                .collect(),
        };
        let mut keys = Vec::new();
        for node in nodes {
            let mut cursor = 0u64;
            loop {
                let routing = RoutingInfo::SingleNode(node.clone());
                let value = cluster.route_command(command(cursor), routing).await?;
                let (next, batch): (u64, Vec<String>) = redis::from_redis_value(value)?;
                keys.extend(batch);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(keys)
    }
}

/// The address of every master of the cluster, from `CLUSTER SLOTS` (each slot range:
/// start, end, then the master's host, port and id, then its replicas).
async fn masters(cluster: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let reply = cluster
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
        )
        .await?;
    let mut masters = Vec::new();
    for range in slot_ranges(reply)? {
        if !masters.contains(&range.master) {
            masters.push(range.master);
        }
    }
    Ok(masters)
}

/// One range of a `CLUSTER SLOTS` reply: its first and last slot and its master's host and
/// port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotRange {
    pub(crate) slots: std::ops::RangeInclusive<u16>,
    pub(crate) master: (String, u16),
}

/// The ranges of a `CLUSTER SLOTS` reply (`[[first, last, [host, port, ...], replicas...],
/// ...]`, <https://redis.io/docs/latest/commands/cluster-slots/>); a range whose fields do not
/// parse is left out.
///
/// # Errors
/// The reply is not an array.
pub(crate) fn slot_ranges(reply: Value) -> RedisResult<Vec<SlotRange>> {
    let ranges: Vec<Vec<Value>> = redis::from_redis_value(reply)?;
    Ok(ranges
        .into_iter()
        .filter_map(|range| {
            let mut fields = range.into_iter();
            let first: u16 = redis::from_redis_value(fields.next()?).ok()?;
            let last: u16 = redis::from_redis_value(fields.next()?).ok()?;
            let node: Vec<Value> = redis::from_redis_value(fields.next()?).ok()?;
            let mut node = node.into_iter();
            let host: String = redis::from_redis_value(node.next()?).ok()?;
            let port: u16 = redis::from_redis_value(node.next()?).ok()?;
            Some(SlotRange { slots: first..=last, master: (host, port) })
        })
        .collect())
}

impl ConnectionLike for StoreConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Managed(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Managed(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Managed(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{is_cluster_redirect, slot_ranges, SlotRange};

    fn error(reply: &[u8]) -> redis::RedisError {
        redis::parse_redis_value(reply).unwrap().extract_error().unwrap_err()
    }

    #[test]
    fn cluster_redirects_are_told_apart_from_command_errors() {
        assert!(is_cluster_redirect(&error(b"-ASK 3620 127.0.0.1:7001\r\n")));
        assert!(is_cluster_redirect(&error(b"-MOVED 3620 127.0.0.1:7001\r\n")));
        assert!(is_cluster_redirect(&error(
            b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"
        )));
        assert!(is_cluster_redirect(&error(b"-CLUSTERDOWN The cluster is down\r\n")));
        assert!(!is_cluster_redirect(&error(
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
        )));
        assert!(!is_cluster_redirect(&error(b"-ERR syntax error\r\n")));
        assert!(!is_cluster_redirect(&redis::RedisError::from(std::io::Error::other("reset"))));
    }

    #[test]
    fn cluster_slots_replies_give_each_range_and_its_master() {
        use redis::Value;
        let bulk = |text: &str| Value::BulkString(text.as_bytes().to_vec());
        let node = |port: i64| Value::Array(vec![bulk("10.0.0.1"), Value::Int(port), bulk("id")]);
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(5460), node(7000), node(7003)]),
            Value::Array(vec![Value::Int(5461), Value::Int(10922)]),
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node(7002)]),
        ]);
        let ranges = slot_ranges(reply).unwrap();
        assert_eq!(
            ranges,
            [
                SlotRange { slots: 0..=5460, master: ("10.0.0.1".to_owned(), 7000) },
                SlotRange { slots: 10923..=16383, master: ("10.0.0.1".to_owned(), 7002) },
            ],
            "the range without a master is left out"
        );
        assert!(slot_ranges(Value::Int(1)).is_err());
    }
}
