//! Keys and tokens for the integration tests: every test config verifies tokens against a key
//! pair generated once per test process, and the HTTP helpers send a token of it.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use embedstream::auth::issue::{keygen, Signer};
use embedstream::auth::{now_s, Scopes};
use embedstream::config::Config;

/// A generated key pair on disk.
#[derive(Debug, Clone)]
pub struct TestKeys {
    pub dir: PathBuf,
    pub kid: String,
    pub signing_key: PathBuf,
    pub jwks: PathBuf,
}

impl TestKeys {
    /// A fresh key pair under a new temporary directory.
    pub fn generate(name: &str, kid: &str) -> Self {
        let dir = std::env::temp_dir().join(super::infra::unique(&format!("es-keys-{name}")));
        let files = keygen(&dir, kid).unwrap();
        Self { dir, kid: kid.to_owned(), signing_key: files.signing_key, jwks: files.jwks }
    }

    /// Points `config` at these keys: verification and issuance.
    pub fn configure(&self, config: &mut Config) {
        config.auth.enabled = true;
        config.auth.jwks_path = Some(self.jwks.clone());
        config.auth.signing_key_path = Some(self.signing_key.clone());
        config.auth.signing_kid = Some(self.kid.clone());
    }
}

/// The key pair of this test process.
pub fn shared_keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| TestKeys::generate("shared", "test-key"))
}

/// An access token for `sub` with space-separated `scopes`, signed with `config`'s key.
pub fn token(config: &Config, sub: &str, scopes: &str) -> String {
    token_ttl(config, sub, scopes, config.auth.access_ttl_s)
}

/// As [`token`], with a lifetime in seconds.
pub fn token_ttl(config: &Config, sub: &str, scopes: &str, ttl_s: u64) -> String {
    let signer = Signer::from_config(&config.auth).unwrap().expect("config has a signing key");
    let scopes = Scopes::parse_strict(scopes).unwrap();
    signer.mint(sub, scopes, ttl_s, now_s()).unwrap().0
}

/// `Authorization` value of a long-lived service token (every scope) of the shared keys: what
/// the tests' HTTP helpers send.
pub fn bearer() -> String {
    static BEARER: OnceLock<Arc<String>> = OnceLock::new();
    let value = BEARER.get_or_init(|| {
        let mut config = Config::default();
        shared_keys().configure(&mut config);
        let token = token_ttl(
            &config,
            "client:integration-tests",
            "recs:read events:write admin",
            6 * 3600,
        );
        Arc::new(format!("Bearer {token}"))
    });
    value.as_str().to_owned()
}

/// The HTTP state of a small model (300 click events, users u0..u6, items i0..i22) over the
/// Redis and namespace of `config`, built like the service builds it.
pub fn app_state(config: &Config) -> embedstream::serve::AppState {
    use embedstream::index::{Index, IndexConfig};
    let records: Vec<embedstream::source::Record> = (0..300u64)
        .map(|n| {
            let text = format!(
                r#"{{"event_id":"e{n}","user_id":"u{}","item_id":"i{}","event_type":"click","ts":{}}}"#,
                n % 7,
                n % 23,
                1_700_000_000_000u64 + n * 100
            );
            embedstream::source::Record {
                key: Some(format!("u{}", n % 7).into_bytes()),
                value: text.into_bytes(),
                line: n,
                ts: None,
            }
        })
        .collect();
    let (_, fold) = embedstream::replay::replay(
        &records,
        &Config::default(),
        1,
        &indicatif::ProgressBar::hidden(),
    )
    .unwrap();
    let model = fold.shared_model();
    // The graph path even on 23 items (the default threshold would scan them exactly).
    let index =
        Arc::new(Index::new(IndexConfig { full_scan_threshold: 0, ..IndexConfig::default() }));
    index.rebuild(&model).unwrap();
    let status = Arc::new(embedstream::ingest::Status::default());
    status.restored.store(true, std::sync::atomic::Ordering::Relaxed);
    let metrics = embedstream::metrics::Metrics::new().unwrap();
    let breaker = Arc::new(embedstream::resilience::CircuitBreaker::new(
        "redis",
        config.store.breaker.clone(),
        None,
    ));
    let redis =
        embedstream::store::AsyncRedis::new(&config.store, breaker, metrics.clone()).unwrap();
    embedstream::serve::AppState::new(model, index, status, metrics, redis, config).unwrap()
}

/// The `EMBEDSTREAM_AUTH__*` variables that give a spawned `embedstream run` the keys of
/// `config`.
pub fn service_env(config: &Config) -> Vec<(&'static str, String)> {
    let path = |path: &Option<PathBuf>| path.as_ref().map(|p| p.display().to_string());
    [
        ("EMBEDSTREAM_AUTH__JWKS_PATH", path(&config.auth.jwks_path)),
        ("EMBEDSTREAM_AUTH__SIGNING_KEY_PATH", path(&config.auth.signing_key_path)),
        ("EMBEDSTREAM_AUTH__SIGNING_KID", config.auth.signing_kid.clone()),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value?)))
    .collect()
}
