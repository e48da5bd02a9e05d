//! Namespace aliases, like Qdrant's collection aliases: a name that serving instances resolve
//! to a namespace (`store.alias`), moved from one namespace to another in one Redis command, so
//! a data engineer rebuilds a namespace beside the live one and switches readers to it.
//!
//! Aliases live in one hash, `embedstream:aliases` (alias to namespace), outside every
//! namespace: they name namespaces, and dropping a namespace must not drop them. Instances
//! poll their alias every `store.alias_poll_ms` and swap what they serve as a whole (see
//! `app.rs`).

use std::collections::BTreeMap;

use redis::AsyncCommands;
use serde::Serialize;

use super::{StoreError, SyncStore};

/// The hash of every alias (alias to namespace).
pub const ALIASES_KEY: &str = "embedstream:aliases";

/// The resume offset of a stored progress field, -1 when it cannot be read (what `inspect` and
/// `reset_progress` report; the consumer itself refuses such a field as corrupt).
fn stored_resume(value: &str) -> i64 {
    serde_json::from_str::<serde_json::Value>(value)
        .ok()
        .and_then(|value| value["resume"].as_i64())
        .unwrap_or(-1)
}

/// Keys deleted per `UNLINK` when a namespace is dropped.
const DROP_BATCH: usize = 500;

/// What `embedstream namespace inspect` prints of a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamespaceInfo {
    /// The namespace.
    pub namespace: String,
    /// The layout version it was written with.
    pub schema_version: u32,
    /// Embedding dimension.
    pub dim: usize,
    /// Events applied over its whole life.
    pub events_applied: u64,
    /// End of the last closed window, ms since the epoch.
    pub closed_until: i64,
    /// Users stored (`SCARD {ns}:users`).
    pub users: u64,
    /// Items stored (`ZCARD {ns}:items`).
    pub items: u64,
    /// Topics with stored progress (`{ns}:progress:{topic}`), each with its partitions' resume
    /// offsets (partition number to offset).
    pub progress: BTreeMap<String, BTreeMap<String, i64>>,
    /// Aliases that point at it.
    pub aliases: Vec<String>,
}

impl SyncStore {
    /// Every alias and the namespace it points at.
    ///
    /// # Errors
    /// [`StoreError`] for Redis failures.
    pub fn aliases(&mut self) -> Result<BTreeMap<String, String>, StoreError> {
        self.with("aliases", |mut connection| async move {
            connection.hgetall::<_, BTreeMap<String, String>>(ALIASES_KEY).await
        })
    }

    /// The namespace `alias` points at, if it exists.
    ///
    /// # Errors
    /// [`StoreError`] for Redis failures.
    pub fn alias_target(&mut self, alias: &str) -> Result<Option<String>, StoreError> {
        let alias = alias.to_owned();
        self.with("alias_get", |mut connection| async move {
            connection.hget::<_, _, Option<String>>(ALIASES_KEY, alias).await
        })
    }

    /// Creates `alias` pointing at `namespace` unless it exists; returns where it points.
    ///
    /// # Errors
    /// [`StoreError`] for Redis failures.
    pub fn ensure_alias(&mut self, alias: &str, namespace: &str) -> Result<String, StoreError> {
        let (alias, namespace) = (alias.to_owned(), namespace.to_owned());
        self.with("alias_ensure", |mut connection| async move {
            let (_, target): (i64, String) = redis::pipe()
                .atomic()
                .hset_nx(ALIASES_KEY, &alias, &namespace)
                .hget(ALIASES_KEY, &alias)
                .query_async(&mut connection)
                .await?;
            Ok(target)
        })
    }

    /// Points `alias` at `namespace` (creating it), in one `HSET`; returns the namespace it
    /// pointed at before.
    ///
    /// # Errors
    /// [`StoreError`] for Redis failures.
    pub fn switch_alias(
        &mut self,
        alias: &str,
        namespace: &str,
    ) -> Result<Option<String>, StoreError> {
        let (alias, namespace) = (alias.to_owned(), namespace.to_owned());
        self.with("alias_switch", |mut connection| async move {
            let (previous, _): (Option<String>, i64) = redis::pipe()
                .atomic()
                .hget(ALIASES_KEY, &alias)
                .hset(ALIASES_KEY, &alias, &namespace)
                .query_async(&mut connection)
                .await?;
            Ok(previous)
        })
    }

    /// Every namespace holding a model: the keys `{ns}:meta` that are hashes with a `dim`
    /// field (so a user id ending in `:meta` is not taken for one), sorted.
    ///
    /// # Errors
    /// [`StoreError`] for Redis failures.
    pub fn namespaces(&mut self) -> Result<Vec<String>, StoreError> {
        self.with("namespaces", |mut connection| async move {
            let cluster = connection.is_cluster();
            let candidates = connection.scan_keys("*:meta", Some("hash"), None).await?;
            let mut namespaces = Vec::new();
            for key in candidates {
                if connection.hexists::<_, _, bool>(&key, "dim").await? {
                    let prefix = key.strip_suffix(":meta");
                    // With a cluster the prefix is the hash tag `{namespace}`.
                    let namespace = if cluster {
                        prefix.and_then(|tag| tag.strip_prefix('{')?.strip_suffix('}'))
                    } else {
                        prefix
                    };
                    if let Some(namespace) = namespace {
                        namespaces.push(namespace.to_owned());
                    }
                }
            }
            namespaces.sort();
            Ok(namespaces)
        })
    }

    /// What a namespace holds (`None` when it holds no model), with the aliases pointing at
    /// it.
    ///
    /// # Errors
    /// [`StoreError`] for Redis failures or malformed fields.
    pub fn inspect(&mut self) -> Result<Option<NamespaceInfo>, StoreError> {
        let Some(meta) = self.load_meta()? else { return Ok(None) };
        let keys = self.keys.clone();
        let namespace = keys.namespace().to_owned();
        let (users, items, progress) = self.with("inspect", |mut connection| async move {
            let users: u64 = connection.scard(keys.users()).await?;
            let items: u64 = connection.zcard(keys.items()).await?;
            let pattern = format!("{}*", glob_escape(&keys.progress("")));
            let progress_keys = connection.scan_keys(&pattern, None, Some(&keys.meta())).await?;
            let mut progress = BTreeMap::new();
            for key in progress_keys {
                let fields: BTreeMap<String, String> = connection.hgetall(&key).await?;
                let resume = fields
                    .into_iter()
                    .map(|(partition, value)| (partition, stored_resume(&value)))
                    .collect();
                let topic = key.strip_prefix(&keys.progress("")).unwrap_or(&key).to_owned();
                progress.insert(topic, resume);
            }
            Ok((users, items, progress))
        })?;
        let aliases = self
            .aliases()?
            .into_iter()
            .filter(|(_, target)| *target == namespace)
            .map(|(alias, _)| alias)
            .collect();
        Ok(Some(NamespaceInfo {
            namespace,
            schema_version: meta.schema_version,
            dim: meta.dim,
            events_applied: meta.events_applied,
            closed_until: meta.closed_until,
            users,
            items,
            progress,
            aliases,
        }))
    }

    /// Removes the stored progress of `partitions` of `topic` (every partition when empty), so
    /// that they start at `run --from` again: Kafka's `kafka-consumer-groups --reset-offsets`
    /// for the progress this service keeps with its state. For a topic the broker lost (see
    /// [`crate::ingest::EXIT_PROGRESS_PAST_LOG_END`]); run it while no instance consumes the
    /// topic into this namespace. Returns each removed partition's resume offset.
    ///
    /// # Errors
    /// [`StoreError`] for Redis failures.
    pub fn reset_progress(
        &mut self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, i64>, StoreError> {
        let key = self.keys.progress(topic);
        let wanted: Vec<i32> = partitions.to_vec();
        self.with("reset_progress", |mut connection| async move {
            let fields: BTreeMap<String, String> = connection.hgetall(&key).await?;
            let mut removed = BTreeMap::new();
            for (field, value) in fields {
                let Ok(partition) = field.parse::<i32>() else { continue };
                if !wanted.is_empty() && !wanted.contains(&partition) {
                    continue;
                }
                let resume = stored_resume(&value);
                let _: u64 = connection.hdel(&key, &field).await?;
                removed.insert(partition, resume);
            }
            Ok(removed)
        })
    }

    /// Deletes every key of the namespace (`UNLINK` in batches of [`DROP_BATCH`]), leaving the
    /// keys of other namespaces whose names start with this one's and a colon. Refused while
    /// an alias points at it. Returns the keys deleted.
    ///
    /// # Errors
    /// [`StoreError::AliasedNamespace`] while an alias points at it; [`StoreError`] for Redis
    /// failures.
    pub fn drop_namespace(&mut self) -> Result<u64, StoreError> {
        let namespace = self.keys.namespace().to_owned();
        let aliases: Vec<String> = self
            .aliases()?
            .into_iter()
            .filter(|(_, target)| *target == namespace)
            .map(|(alias, _)| alias)
            .collect();
        if !aliases.is_empty() {
            return Err(StoreError::AliasedNamespace { namespace, aliases });
        }
        let nested: Vec<String> = self
            .namespaces()?
            .into_iter()
            .filter(|other| other.starts_with(&format!("{namespace}:")))
            .map(|other| format!("{other}:"))
            .collect();
        let pattern = format!("{}:*", glob_escape(self.keys.prefix()));
        let slot_key = self.keys.meta();
        self.with("drop_namespace", |mut connection| async move {
            let keys = connection.scan_keys(&pattern, None, Some(&slot_key)).await?;
            let doomed: Vec<&String> = keys
                .iter()
                .filter(|key| !nested.iter().any(|prefix| key.starts_with(prefix.as_str())))
                .collect();
            let mut deleted = 0u64;
            for batch in doomed.chunks(DROP_BATCH) {
                deleted +=
                    redis::cmd("UNLINK").arg(batch).query_async::<u64>(&mut connection).await?;
            }
            Ok(deleted)
        })
    }
}

/// `text` with the glob characters of `SCAN MATCH` escaped.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::glob_escape;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("es"), "es");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
