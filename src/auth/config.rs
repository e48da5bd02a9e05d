//! The `[auth]` configuration section.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A signature algorithm the service may accept or sign with. Symmetric algorithms (HS256
/// and family) cannot be named at all: with public keys in a JWKS they are the
/// algorithm-confusion hole (RFC 8725 §2.1, §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    /// Ed25519 (RFC 8037), key type OKP.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256, key type RSA.
    RS256,
    /// ECDSA P-256 with SHA-256, key type EC.
    ES256,
}

impl SigningAlgorithm {
    /// The jsonwebtoken algorithm.
    pub fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            Self::RS256 => jsonwebtoken::Algorithm::RS256,
            Self::ES256 => jsonwebtoken::Algorithm::ES256,
        }
    }

    /// The algorithm for a jsonwebtoken algorithm, when it is one we support.
    pub fn from_jwt(algorithm: jsonwebtoken::Algorithm) -> Option<Self> {
        match algorithm {
            jsonwebtoken::Algorithm::EdDSA => Some(Self::EdDSA),
            jsonwebtoken::Algorithm::RS256 => Some(Self::RS256),
            jsonwebtoken::Algorithm::ES256 => Some(Self::ES256),
            _ => None,
        }
    }
}

/// Authentication and token issuance (`[auth]`). Every field: `docs/configuration.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Whether `/v1` routes require a token (default true). `false` is for local development
    /// only: every request then acts as an anonymous admin, and the service logs it loudly.
    pub enabled: bool,
    /// Expected and issued `iss` claim (default `embedstream`).
    pub issuer: String,
    /// Expected and issued `aud` claim (default `embedstream`).
    pub audience: String,
    /// Algorithms a token may be signed with (default `["EdDSA"]`; any of EdDSA, RS256,
    /// ES256). The token's `alg` must be listed and match its key's type.
    pub algorithms: Vec<SigningAlgorithm>,
    /// Clock skew tolerated on `exp` and `nbf`, seconds (default 0, at most 300).
    pub leeway_s: u64,
    /// JWKS file of the verification keys, by `kid`. Required when `enabled`.
    pub jwks_path: Option<PathBuf>,
    /// How often the JWKS file's modification time is checked, ms (default 5000, >= 100).
    pub jwks_reload_interval_ms: u64,
    /// Least time between two reloads caused by a token with an unknown `kid`, ms (default
    /// 30000, >= 1000): an attacker sending random `kid`s causes one reload per interval.
    pub unknown_kid_reload_min_interval_ms: u64,
    /// Cookie read when no `Authorization` header is present, and set by
    /// `POST /v1/auth/token?cookie=true` (default `embedstream_access`).
    pub cookie_name: String,
    /// PKCS#8 PEM private key the token endpoint signs with (unset: no issuance).
    pub signing_key_path: Option<PathBuf>,
    /// `kid` written into issued tokens; required with `signing_key_path`.
    pub signing_kid: Option<String>,
    /// Algorithm of `signing_key_path` (default EdDSA); must be in `algorithms`.
    pub signing_algorithm: SigningAlgorithm,
    /// Lifetime of issued access tokens, s (default 300, 1..=86400).
    pub access_ttl_s: u64,
    /// Lifetime of a refresh token and of its family after its last rotation, s (default
    /// 86400, >= `access_ttl_s`).
    pub refresh_ttl_s: u64,
    /// TOML or JSON file of the service clients (`client_id`, argon2 `secret_hash`, `scopes`);
    /// unset: the client-credentials grant is refused. Requires `signing_key_path`.
    pub clients_path: Option<PathBuf>,
    /// Client-secret checks (argon2, about 19 MiB and 80 ms of CPU each) running at once on
    /// this instance (default 1, >= 1). Each slot holds its argon2 memory for the life of the
    /// process, so memory stays flat under any flood.
    pub secret_check_concurrency: usize,
    /// Nice value of the secret-check threads (Linux, default 10, 0 to 19; 0 leaves them at
    /// the process's priority): under a flood of token requests the serving threads get the
    /// CPU first.
    pub secret_check_nice: i32,
    /// Longest wait of a token request for a free secret-check slot, ms (default 1000); then
    /// 503 `temporarily_unavailable` with `Retry-After`.
    pub secret_check_queue_ms: u64,
    /// Secret checks per second allowed for one presented `client_id` (default 1, > 0); past
    /// the burst: 429 `slow_down` with `Retry-After`.
    pub client_checks_per_second: f64,
    /// Secret checks one `client_id` may make at once after being idle (default 5, >= 1).
    pub client_checks_burst: u32,
    /// Period of the full re-read of the revocation list into the in-process view, ms
    /// (default 2000, >= 100). Revocations arrive over Redis pub/sub within milliseconds; the
    /// re-read catches a message lost on a broken subscription and entries written by other
    /// programs. A revoked token is refused by every instance that reaches Redis within at most
    /// twice this period (see README, "Revocation").
    pub revocation_resync_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            issuer: "embedstream".to_owned(),
            audience: "embedstream".to_owned(),
            algorithms: vec![SigningAlgorithm::EdDSA],
            leeway_s: 0,
            jwks_path: None,
            jwks_reload_interval_ms: 5000,
            unknown_kid_reload_min_interval_ms: 30_000,
            cookie_name: "embedstream_access".to_owned(),
            signing_key_path: None,
            signing_kid: None,
            signing_algorithm: SigningAlgorithm::EdDSA,
            access_ttl_s: 300,
            refresh_ttl_s: 86_400,
            clients_path: None,
            secret_check_concurrency: 1,
            secret_check_nice: 10,
            secret_check_queue_ms: 1000,
            client_checks_per_second: 1.0,
            client_checks_burst: 5,
            revocation_resync_ms: 2000,
        }
    }
}

/// One `[auth]` field out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value} is invalid: {rule}")]
pub struct InvalidAuthConfig {
    /// The field, `auth.` included (several, for a cross-field rule).
    pub field: &'static str,
    /// Its value.
    pub value: String,
    /// The rule it breaks.
    pub rule: &'static str,
}

impl AuthConfig {
    /// Checks ranges and cross-field rules. Whether a JWKS is configured is checked when the
    /// service starts ([`crate::auth::Auth::from_config`]), so that offline commands need none.
    ///
    /// # Errors
    /// The first [`InvalidAuthConfig`] found.
    pub fn validate(&self) -> Result<(), InvalidAuthConfig> {
        let invalid = |field: &'static str, value: &dyn std::fmt::Debug, rule: &'static str| {
            Err(InvalidAuthConfig { field, value: format!("{value:?}"), rule })
        };
        if self.issuer.is_empty() || self.audience.is_empty() {
            return invalid(
                "auth.issuer / auth.audience",
                &(&self.issuer, &self.audience),
                "non-empty",
            );
        }
        if self.algorithms.is_empty() {
            return invalid(
                "auth.algorithms",
                &self.algorithms,
                "must name at least one algorithm",
            );
        }
        if self.leeway_s > 300 {
            return invalid("auth.leeway_s", &self.leeway_s, "must be <= 300");
        }
        if self.jwks_reload_interval_ms < 100 {
            return invalid(
                "auth.jwks_reload_interval_ms",
                &self.jwks_reload_interval_ms,
                ">= 100",
            );
        }
        if self.unknown_kid_reload_min_interval_ms < 1000 {
            let value = self.unknown_kid_reload_min_interval_ms;
            return invalid("auth.unknown_kid_reload_min_interval_ms", &value, ">= 1000");
        }
        let cookie_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if self.cookie_name.is_empty() || !self.cookie_name.chars().all(cookie_char) {
            return invalid("auth.cookie_name", &self.cookie_name, "non-empty, [A-Za-z0-9_-]");
        }
        if !(1..=86_400).contains(&self.access_ttl_s) {
            return invalid("auth.access_ttl_s", &self.access_ttl_s, "must be in 1..=86400");
        }
        if self.refresh_ttl_s < self.access_ttl_s {
            return invalid(
                "auth.refresh_ttl_s / auth.access_ttl_s",
                &(self.refresh_ttl_s, self.access_ttl_s),
                "refresh_ttl_s must be >= access_ttl_s",
            );
        }
        if self.signing_key_path.is_some() != self.signing_kid.is_some() {
            return invalid(
                "auth.signing_key_path / auth.signing_kid",
                &(&self.signing_key_path, &self.signing_kid),
                "set both or neither",
            );
        }
        if self.signing_key_path.is_some() && !self.algorithms.contains(&self.signing_algorithm) {
            return invalid(
                "auth.signing_algorithm / auth.algorithms",
                &(self.signing_algorithm, &self.algorithms),
                "the signing algorithm must be one of the accepted algorithms",
            );
        }
        if self.secret_check_concurrency == 0 || self.client_checks_burst == 0 {
            return invalid(
                "auth.secret_check_concurrency / auth.client_checks_burst",
                &(self.secret_check_concurrency, self.client_checks_burst),
                "both must be >= 1",
            );
        }
        if !(0..=19).contains(&self.secret_check_nice) {
            return invalid(
                "auth.secret_check_nice",
                &self.secret_check_nice,
                "must be 0 to 19 (raising priority needs privileges)",
            );
        }
        if !(self.client_checks_per_second.is_finite() && self.client_checks_per_second > 0.0) {
            return invalid(
                "auth.client_checks_per_second",
                &self.client_checks_per_second,
                "must be finite and > 0",
            );
        }
        if self.revocation_resync_ms < 100 {
            return invalid(
                "auth.revocation_resync_ms",
                &self.revocation_resync_ms,
                "must be >= 100",
            );
        }
        if self.clients_path.is_some() && self.signing_key_path.is_none() {
            return invalid(
                "auth.clients_path / auth.signing_key_path",
                &self.clients_path,
                "issuing tokens to clients needs a signing key",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_secure() {
        let config = AuthConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert!(config.enabled);
        assert_eq!(config.leeway_s, 0);
        assert_eq!(config.algorithms, vec![SigningAlgorithm::EdDSA]);
        assert_eq!(config.access_ttl_s, 300);
    }

    #[test]
    fn cross_field_rules_name_both_fields() {
        let config = AuthConfig { signing_kid: Some("k1".to_owned()), ..AuthConfig::default() };
        assert_eq!(
            config.validate().map_err(|e| e.field),
            Err("auth.signing_key_path / auth.signing_kid")
        );
        let config = AuthConfig {
            signing_key_path: Some("key.pem".into()),
            signing_kid: Some("k1".to_owned()),
            signing_algorithm: SigningAlgorithm::RS256,
            ..AuthConfig::default()
        };
        assert_eq!(
            config.validate().map_err(|e| e.field),
            Err("auth.signing_algorithm / auth.algorithms")
        );
        let config = AuthConfig { refresh_ttl_s: 10, ..AuthConfig::default() };
        assert_eq!(
            config.validate().map_err(|e| e.field),
            Err("auth.refresh_ttl_s / auth.access_ttl_s")
        );
        let config = AuthConfig { clients_path: Some("c.toml".into()), ..AuthConfig::default() };
        assert_eq!(
            config.validate().map_err(|e| e.field),
            Err("auth.clients_path / auth.signing_key_path")
        );
    }

    #[test]
    fn symmetric_algorithms_cannot_be_configured() {
        let parsed: Result<Vec<SigningAlgorithm>, _> = serde_json::from_str(r#"["HS256"]"#);
        assert!(parsed.is_err());
    }
}
