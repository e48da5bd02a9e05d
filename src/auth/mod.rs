//! Stateless authentication: JWT access tokens verified against a JWKS, scopes, revocation,
//! and a token endpoint for service clients (client credentials, rotating refresh tokens).
//!
//! - [`config`]: the `[auth]` section.
//! - [`principal`]: scopes, typed claims, the [`Principal`] handlers receive.
//! - [`jwks`]: verification keys by `kid`, reloaded from the JWKS file without a restart.
//! - [`verify`]: the pure verifier (algorithm pinning, `iss`/`aud`, `exp`/`nbf` with leeway).
//! - [`issue`]: signing, key generation, secret hashing.
//! - [`clients`]: the registered service clients (argon2-hashed secrets).
//! - [`guard`]: admission of secret checks (global slots with a queue deadline, per client).
//! - [`store`]: revocation list and refresh tokens in Redis.
//! - [`http`]: the authentication layer, extractors and the two `/v1/auth` routes.
//!
//! Protocols: RFC 7519 (JWT), RFC 7517 (JWKS), RFC 8037 (EdDSA), RFC 8725 (JWT best current
//! practice), RFC 6749 §4.4, §5.2, §6 (client credentials, errors, refresh), RFC 6750
//! (bearer usage, `WWW-Authenticate`), RFC 7009 (revocation, in spirit).

pub mod clients;
pub mod config;
pub mod guard;
pub mod http;
pub mod issue;
pub mod jwks;
pub mod principal;
mod revocations;
pub mod store;
mod token;
pub mod verify;

#[cfg(test)]
mod verify_tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use config::{AuthConfig, SigningAlgorithm};
pub use principal::{AccessClaims, MissingScope, Principal, Scope, Scopes};
pub use verify::TokenError;

use crate::store::AsyncRedis;

/// Why the auth side could not be built at start.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// Auth is enabled but no JWKS is configured.
    #[error(
        "auth.jwks_path is not set: set it (see `embedstream auth keygen`), or set \
         auth.enabled = false explicitly for local development"
    )]
    NoJwks,
    /// The JWKS file is unusable.
    #[error(transparent)]
    Jwks(#[from] jwks::JwksError),
    /// The signing key is unusable.
    #[error(transparent)]
    Signing(#[from] issue::IssueError),
    /// The clients file is unusable.
    #[error(transparent)]
    Clients(#[from] clients::ClientsError),
}

/// Everything the HTTP side needs for auth, built once from the configuration.
#[derive(Debug)]
pub struct Auth {
    config: AuthConfig,
    /// `None` when `auth.enabled = false`.
    verifier: Option<verify::Verifier>,
    signer: Option<issue::Signer>,
    clients: Option<clients::Clients>,
    /// Admission of secret checks; present with `clients`.
    secret_checks: Option<guard::SecretChecks>,
    revocations: store::Revocations,
    refresh: store::RefreshTokens,
}

/// Seconds since the Unix epoch by the wall clock (0 before 1970).
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

impl Auth {
    /// Loads keys, signing key and clients named by `config`, and starts the JWKS poll when a
    /// tokio runtime is running.
    ///
    /// # Errors
    /// [`AuthSetupError`]: the service must not start with auth half configured.
    pub fn from_config(config: &AuthConfig, redis: AsyncRedis) -> Result<Self, AuthSetupError> {
        let verifier = if config.enabled {
            let path = config.jwks_path.as_deref().ok_or(AuthSetupError::NoJwks)?;
            let min_interval = Duration::from_millis(config.unknown_kid_reload_min_interval_ms);
            let keys = Arc::new(jwks::KeyStore::open(path, min_interval)?);
            match tokio::runtime::Handle::try_current() {
                Ok(_) => {
                    keys.spawn_poll(Duration::from_millis(config.jwks_reload_interval_ms));
                }
                Err(_) => tracing::warn!("no tokio runtime: the jwks file is not polled"),
            }
            Some(verify::Verifier::new(keys, config))
        } else {
            tracing::error!(
                "AUTHENTICATION IS DISABLED (auth.enabled = false): every /v1 request acts as \
                 an anonymous admin; never run this way outside local development"
            );
            None
        };
        let signer = issue::Signer::from_config(config)?;
        if let (Some(signer), Some(verifier)) = (&signer, &verifier) {
            let kid = signer.kid().unwrap_or_default();
            if verifier.keys().get(kid).is_none() {
                tracing::warn!(
                    kid,
                    "the signing kid is not in the jwks: issued tokens will be refused"
                );
            }
        }
        let clients = config.clients_path.as_deref().map(clients::Clients::load).transpose()?;
        let secret_checks = clients
            .as_ref()
            .map(|clients| guard::SecretChecks::new(config, clients.memory_blocks()));
        let auth = Self {
            config: config.clone(),
            verifier,
            signer,
            clients,
            secret_checks,
            revocations: store::Revocations::new(
                redis.clone(),
                Duration::from_millis(config.revocation_resync_ms),
            ),
            refresh: store::RefreshTokens::new(redis, config.refresh_ttl_s),
        };
        // The view of the revocation list matters only when tokens are verified.
        if auth.verifier.is_some() && tokio::runtime::Handle::try_current().is_ok() {
            auth.revocations.spawn_follower();
        }
        Ok(auth)
    }

    /// The configuration.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// The verifier (`None` when auth is disabled).
    pub fn verifier(&self) -> Option<&verify::Verifier> {
        self.verifier.as_ref()
    }

    /// The signer (`None` when issuance is not configured).
    pub fn signer(&self) -> Option<&issue::Signer> {
        self.signer.as_ref()
    }

    /// The registered clients (`None` when `auth.clients_path` is unset).
    pub fn clients(&self) -> Option<&clients::Clients> {
        self.clients.as_ref()
    }

    /// Admission of secret checks (`None` when `auth.clients_path` is unset).
    pub fn secret_checks(&self) -> Option<&guard::SecretChecks> {
        self.secret_checks.as_ref()
    }

    /// The revocation list.
    pub fn revocations(&self) -> &store::Revocations {
        &self.revocations
    }

    /// The refresh tokens.
    pub fn refresh(&self) -> &store::RefreshTokens {
        &self.refresh
    }

    /// Verifies `token` now: signature and claims, a rate-limited JWKS reload on an unknown
    /// `kid`, then the revocation list (one Redis round trip; when Redis is unreachable only
    /// the tokens revoked through this instance are refused).
    ///
    /// # Errors
    /// [`TokenError`].
    pub async fn authenticate(&self, token: &str) -> Result<Principal, TokenError> {
        let Some(verifier) = &self.verifier else {
            return Ok(Self::anonymous_admin());
        };
        let now = now_s();
        let claims = match verifier.verify(token, now) {
            Err(TokenError::UnknownKid)
                if verifier.keys().reload_for_unknown_kid(Instant::now()) =>
            {
                verifier.verify(token, now)?
            }
            other => other?,
        };
        if self.revocations.check(&claims.jti).await == store::RevocationCheck::Revoked {
            return Err(TokenError::Revoked);
        }
        Ok(Principal::from_claims(claims))
    }

    fn anonymous_admin() -> Principal {
        Principal {
            sub: "anonymous".to_owned(),
            scopes: Scopes::of(&Scope::ALL),
            jti: String::new(),
            exp: u64::MAX,
            service: true,
        }
    }
}
