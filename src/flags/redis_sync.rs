//! Blocking reads and writes of `{ns}:flags` for the command line.

use std::time::Duration;

use super::{Flag, FlagName, FlagsDoc, FlagsError};
use crate::store::{Keys, StoreConfig};

/// Why a CLI flags operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncFlagsError {
    /// Redis failed (an external dependency: retrying can help).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The stored or given document is not valid.
    #[error(transparent)]
    Invalid(#[from] FlagsError),
}

/// The stored document; `None` when nothing is stored (the defaults apply).
///
/// # Errors
/// [`SyncFlagsError`].
pub fn load_sync(
    connection: &mut impl redis::ConnectionLike,
    key: &str,
) -> Result<Option<FlagsDoc>, SyncFlagsError> {
    let stored: Option<String> = redis::cmd("GET").arg(key).query(connection)?;
    Ok(stored.as_deref().map(FlagsDoc::from_json).transpose()?)
}

/// Validates `doc` and stores it whole.
///
/// # Errors
/// [`SyncFlagsError`]; nothing is written when `doc` is not valid.
pub fn save_sync(
    connection: &mut impl redis::ConnectionLike,
    key: &str,
    doc: &FlagsDoc,
) -> Result<(), SyncFlagsError> {
    doc.validate()?;
    let () = redis::cmd("SET").arg(key).arg(doc.to_json()).query(connection)?;
    Ok(())
}

/// Reads the document (the defaults when none is stored), applies `change` and writes it back
/// in a `WATCH`/`MULTI` transaction, retried if another writer got in between. Returns the new
/// document.
///
/// # Errors
/// [`SyncFlagsError`]; nothing is written when the result is not valid.
pub fn update_sync(
    connection: &mut impl redis::ConnectionLike,
    key: &str,
    change: impl Fn(&mut FlagsDoc),
) -> Result<FlagsDoc, SyncFlagsError> {
    loop {
        let () = redis::cmd("WATCH").arg(key).query(connection)?;
        let mut doc = match load_sync(connection, key) {
            Ok(stored) => stored.unwrap_or_default(),
            Err(error) => {
                let _: redis::RedisResult<()> = redis::cmd("UNWATCH").query(connection);
                return Err(error);
            }
        };
        change(&mut doc);
        if let Err(error) = doc.validate() {
            let _: redis::RedisResult<()> = redis::cmd("UNWATCH").query(connection);
            return Err(error.into());
        }
        let committed: Option<()> = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(key)
            .arg(doc.to_json())
            .ignore()
            .query(connection)?;
        if committed.is_some() {
            return Ok(doc);
        }
    }
}

/// One command-line change of the flags.
#[derive(Debug, Clone, PartialEq)]
pub enum FlagsAction {
    /// Read the stored document (the defaults when none is stored).
    Get,
    /// Replace the whole document.
    Set(FlagsDoc),
    /// Enable a switch for `percent` % of users.
    Enable { name: FlagName, percent: u32 },
    /// Disable a switch for everyone (its `rollout_percent` is left as it is).
    Disable { name: FlagName },
}

/// Runs `action` against the namespace of `store` and returns the document now stored.
///
/// # Errors
/// [`SyncFlagsError`]: Redis unreachable, or a document (given or resulting) not valid.
pub fn run_action(store: &StoreConfig, action: FlagsAction) -> Result<FlagsDoc, SyncFlagsError> {
    let key = Keys::of(store, &store.namespace).flags();
    let (connect, command) = (
        Duration::from_millis(store.connect_timeout_ms),
        Duration::from_millis(store.command_timeout_ms),
    );
    let client = if store.cluster {
        redis::Client::open(slot_owner(store, &key, connect, command)?)?
    } else {
        redis::Client::open(store.url.as_str())?
    };
    let mut connection = client.get_connection_with_timeout(connect)?;
    connection.set_read_timeout(Some(command))?;
    connection.set_write_timeout(Some(command))?;
    run_on(&mut connection, &key, action)
}

/// How to reach the master that holds `key`'s slot, asked of the cluster's seeds
/// (`CLUSTER KEYSLOT`, `CLUSTER SLOTS`): the `WATCH`/`MULTI` of an update must run on one
/// connection to that master, which redis's synchronous cluster connection does not offer (it
/// refuses pipelines). A slot that moves meanwhile makes the update fail with `MOVED`: run it
/// again.
fn slot_owner(
    store: &StoreConfig,
    key: &str,
    connect: Duration,
    command: Duration,
) -> Result<redis::ConnectionInfo, SyncFlagsError> {
    use redis::IntoConnectionInfo;
    let seeds = store.seeds();
    // The seed's credentials and database, with the owner's address.
    let seed = seeds.first().copied().unwrap_or_default().into_connection_info()?;
    let mut cluster = redis::cluster::ClusterClient::builder(seeds)
        .connection_timeout(connect)
        .response_timeout(command)
        .build()?
        .get_connection()?;
    let slot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(&mut cluster)?;
    let reply: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut cluster)?;
    let (host, port) = crate::store::slot_ranges(reply)?
        .into_iter()
        .find(|range| u16::try_from(slot).is_ok_and(|slot| range.slots.contains(&slot)))
        .map(|range| range.master)
        .ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                "no master holds the slot",
                format!("slot {slot}"),
            ))
        })?;
    Ok(seed.set_addr(redis::ConnectionAddr::Tcp(host, port)))
}

fn run_on(
    connection: &mut impl redis::ConnectionLike,
    key: &str,
    action: FlagsAction,
) -> Result<FlagsDoc, SyncFlagsError> {
    match action {
        FlagsAction::Get => Ok(load_sync(connection, key)?.unwrap_or_default()),
        FlagsAction::Set(doc) => {
            save_sync(connection, key, &doc)?;
            Ok(doc)
        }
        FlagsAction::Enable { name, percent } => update_sync(connection, key, |doc| {
            *doc.flag_mut(name) = Flag { enabled: true, rollout_percent: percent };
        }),
        FlagsAction::Disable { name } => {
            update_sync(connection, key, |doc| doc.flag_mut(name).enabled = false)
        }
    }
}
