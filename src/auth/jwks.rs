//! Verification keys by `kid`, from a JWKS file (RFC 7517) reloaded without a restart.
//!
//! Two triggers reload the file: a background poll of its modification time (key rotation:
//! added keys start working, removed keys stop working within one poll interval), and a
//! token with an unknown `kid`, at most once per `unknown_kid_reload_min_interval_ms` so that
//! random `kid`s cannot cause a reload storm.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::DecodingKey;

use super::config::SigningAlgorithm;

/// Why a JWKS file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The file could not be read.
    #[error("reading JWKS {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not a JWKS document.
    #[error("parsing JWKS {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// One key is unusable (no `kid`, a symmetric key, a bad encoding, an `alg` that does not
    /// match its type): the whole file is refused, the previous keys stay in use.
    #[error("JWKS {path}: key {kid:?}: {reason}")]
    BadKey { path: PathBuf, kid: String, reason: String },
}

/// One verification key and the only algorithm it verifies.
pub struct VerifyingKey {
    /// The decoding key.
    pub key: DecodingKey,
    /// Its algorithm, fixed by its type (and `alg`, when the JWK names one).
    pub algorithm: SigningAlgorithm,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

/// Keys by `kid`.
pub type KeySet = HashMap<String, Arc<VerifyingKey>>;

/// Parses a JWKS document. Only asymmetric keys with a `kid` are accepted; a JWK `alg`, when
/// present, must be the algorithm its key type implies (OKP Ed25519 → EdDSA, RSA → RS256,
/// EC P-256 → ES256).
///
/// # Errors
/// [`JwksError::Parse`] or [`JwksError::BadKey`].
pub fn parse_jwks(path: &Path, text: &str) -> Result<KeySet, JwksError> {
    let set: JwkSet = serde_json::from_str(text)
        .map_err(|source| JwksError::Parse { path: path.to_owned(), source })?;
    let mut keys = KeySet::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        let bad =
            |reason: String| JwksError::BadKey { path: path.to_owned(), kid: kid.clone(), reason };
        if kid.is_empty() {
            return Err(bad("every key needs a kid".to_owned()));
        }
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(params) if params.curve == EllipticCurve::Ed25519 => {
                SigningAlgorithm::EdDSA
            }
            AlgorithmParameters::RSA(_) => SigningAlgorithm::RS256,
            AlgorithmParameters::EllipticCurve(params) if params.curve == EllipticCurve::P256 => {
                SigningAlgorithm::ES256
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err(bad("symmetric (oct) keys are refused".to_owned()))
            }
            _ => return Err(bad("unsupported key type or curve".to_owned())),
        };
        let named = jwk.common.key_algorithm;
        let expected = match algorithm {
            SigningAlgorithm::EdDSA => KeyAlgorithm::EdDSA,
            SigningAlgorithm::RS256 => KeyAlgorithm::RS256,
            SigningAlgorithm::ES256 => KeyAlgorithm::ES256,
        };
        if named.is_some_and(|named| named != expected) {
            return Err(bad(format!("alg {named:?} does not match the key type")));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|error| bad(error.to_string()))?;
        if keys.insert(kid.clone(), Arc::new(VerifyingKey { key, algorithm })).is_some() {
            return Err(bad("duplicate kid".to_owned()));
        }
    }
    Ok(keys)
}

/// Reads and parses a JWKS file.
///
/// # Errors
/// [`JwksError`].
pub fn load_jwks(path: &Path) -> Result<KeySet, JwksError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| JwksError::Read { path: path.to_owned(), source })?;
    parse_jwks(path, &text)
}

/// What identifies one version of the file: modification time and length.
type FileStamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> FileStamp {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// The live key set: readers take an `Arc` snapshot (one read lock, no copy).
#[derive(Debug)]
pub struct KeyStore {
    path: PathBuf,
    keys: RwLock<Arc<KeySet>>,
    stamp: Mutex<FileStamp>,
    last_unknown_kid_reload: Mutex<Option<Instant>>,
    unknown_kid_min_interval: Duration,
    reloads: AtomicU64,
}

impl KeyStore {
    /// Loads `path` once.
    ///
    /// # Errors
    /// [`JwksError`]: a service must not start without its keys.
    pub fn open(path: &Path, unknown_kid_min_interval: Duration) -> Result<Self, JwksError> {
        let file_stamp = stamp(path);
        let keys = load_jwks(path)?;
        Ok(Self {
            path: path.to_owned(),
            keys: RwLock::new(Arc::new(keys)),
            stamp: Mutex::new(file_stamp),
            last_unknown_kid_reload: Mutex::new(None),
            unknown_kid_min_interval,
            reloads: AtomicU64::new(0),
        })
    }

    /// The key of `kid`.
    pub fn get(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(kid).cloned()
    }

    /// How many times the file was re-read since start (successfully or not).
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// The `kid`s currently loaded, sorted.
    pub fn kids(&self) -> Vec<String> {
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut kids: Vec<String> = keys.keys().cloned().collect();
        kids.sort();
        kids
    }

    /// Re-reads the file; on error the previous keys stay in use.
    ///
    /// # Errors
    /// [`JwksError`].
    pub fn reload(&self) -> Result<(), JwksError> {
        self.reloads.fetch_add(1, Ordering::Relaxed);
        let file_stamp = stamp(&self.path);
        let keys = load_jwks(&self.path)?;
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
        *self.stamp.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = file_stamp;
        Ok(())
    }

    /// Reloads when the file's modification time or length changed since the last load.
    /// Returns whether it reloaded.
    ///
    /// # Errors
    /// [`JwksError`] of the reload.
    pub fn reload_if_changed(&self) -> Result<bool, JwksError> {
        let current = stamp(&self.path);
        let known = *self.stamp.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current == known {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// A token named a `kid` we do not know: reload, unless a reload of this kind happened
    /// less than the minimum interval before `now`. Returns whether it reloaded.
    pub fn reload_for_unknown_kid(&self, now: Instant) -> bool {
        {
            let mut last = self
                .last_unknown_kid_reload
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last
                .is_some_and(|at| now.saturating_duration_since(at) < self.unknown_kid_min_interval)
            {
                return false;
            }
            *last = Some(now);
        }
        match self.reload() {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(error = %error, "jwks reload for an unknown kid failed");
                false
            }
        }
    }

    /// Polls the file every `interval` until the store is dropped (the task holds a weak
    /// reference only). Needs a tokio runtime.
    pub fn spawn_poll(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(store) = weak.upgrade() else { return };
                let checked = tokio::task::spawn_blocking(move || store.reload_if_changed()).await;
                match checked {
                    Ok(Ok(true)) => tracing::info!("jwks reloaded"),
                    Ok(Ok(false)) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(error = %error, "jwks reload failed, keeping the old keys")
                    }
                    Err(error) => tracing::warn!(error = %error, "jwks poll task failed"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn okp(kid: &str, alg: &str) -> String {
        format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{ED_X}","kid":"{kid}","alg":"{alg}"}}"#)
    }

    #[test]
    fn okp_keys_verify_eddsa_only() {
        let text = format!(r#"{{"keys":[{}]}}"#, okp("k1", "EdDSA"));
        let keys = parse_jwks(Path::new("t"), &text).unwrap();
        assert_eq!(keys["k1"].algorithm, SigningAlgorithm::EdDSA);
    }

    #[test]
    fn refuses_symmetric_mismatched_and_kidless_keys() {
        let oct = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#;
        assert!(matches!(parse_jwks(Path::new("t"), oct), Err(JwksError::BadKey { .. })));
        let mismatch = format!(r#"{{"keys":[{}]}}"#, okp("k1", "RS256"));
        assert!(matches!(parse_jwks(Path::new("t"), &mismatch), Err(JwksError::BadKey { .. })));
        let kidless = format!(r#"{{"keys":[{}]}}"#, okp("", "EdDSA"));
        assert!(matches!(parse_jwks(Path::new("t"), &kidless), Err(JwksError::BadKey { .. })));
        let twice = format!(r#"{{"keys":[{},{}]}}"#, okp("k", "EdDSA"), okp("k", "EdDSA"));
        assert!(matches!(parse_jwks(Path::new("t"), &twice), Err(JwksError::BadKey { .. })));
    }

    #[test]
    fn unknown_kid_reloads_at_most_once_per_interval() {
        let dir = std::env::temp_dir().join(format!("es-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwks.json");
        std::fs::write(&path, format!(r#"{{"keys":[{}]}}"#, okp("k1", "EdDSA"))).unwrap();
        let store = KeyStore::open(&path, Duration::from_secs(30)).unwrap();
        let start = Instant::now();
        assert!(store.reload_for_unknown_kid(start));
        for step in 1..100 {
            assert!(!store.reload_for_unknown_kid(start + Duration::from_millis(step * 100)));
        }
        assert_eq!(store.reloads(), 1);
        assert!(store.reload_for_unknown_kid(start + Duration::from_secs(30)));
        assert_eq!(store.reloads(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
