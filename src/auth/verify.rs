//! Access-token verification: pure, the time passed in. The hot path of every `/v1` request:
//! one header decode, one map lookup by `kid`, one signature check, one typed claims decode.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, Validation};

use super::config::{AuthConfig, SigningAlgorithm};
use super::jwks::KeyStore;
use super::principal::AccessClaims;

/// Why a token was refused. Every variant is a 401 `unauthorized`; the message names the
/// variant but never echoes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `Authorization: Bearer` header and no access cookie.
    #[error("missing bearer token")]
    Missing,
    /// Not three base64url parts with a JSON header (includes `alg: none`, which jsonwebtoken
    /// cannot even represent).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// `alg` not among the configured algorithms.
    #[error("algorithm {0:?} is not accepted")]
    AlgorithmNotAccepted(Algorithm),
    /// No `kid` in the header.
    #[error("token has no kid")]
    MissingKid,
    /// No key with this `kid` (after at most one rate-limited reload).
    #[error("unknown kid")]
    UnknownKid,
    /// The header carries `crit`: it names extensions the verifier must understand, and we
    /// understand none, so RFC 7515 §4.1.11 requires refusing it (even an empty list, which
    /// §4.1.11 forbids producers to send).
    #[error("critical header extensions are not supported")]
    CriticalExtension,
    /// `alg` differs from the algorithm of the key named by `kid`.
    #[error("algorithm {token:?} does not match the key's {key:?}")]
    AlgorithmMismatch { token: Algorithm, key: SigningAlgorithm },
    /// Bad signature, wrong `iss` or `aud`, a missing or mistyped claim.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `exp` (plus leeway) is not after now.
    #[error("token expired")]
    Expired,
    /// `nbf` (minus leeway) is after now.
    #[error("token not valid yet")]
    NotYetValid,
    /// `iat` is further in the future than the leeway: a token from a clock (or an issuer)
    /// that cannot be trusted.
    #[error("token issued in the future")]
    IssuedInFuture,
    /// `jti` is empty: such a token could never be revoked.
    #[error("token has an empty jti")]
    EmptyJti,
    /// The `jti` is on the revocation list.
    #[error("token revoked")]
    Revoked,
}

/// Verifies access tokens against the keys of a [`KeyStore`].
#[derive(Debug)]
pub struct Verifier {
    keys: Arc<KeyStore>,
    accepted: Vec<SigningAlgorithm>,
    /// One prepared validation per accepted algorithm (iss, aud, required claims set once).
    validations: HashMap<SigningAlgorithm, Validation>,
    leeway_s: u64,
}

impl Verifier {
    /// A verifier with the algorithms, issuer, audience and leeway of `config`.
    pub fn new(keys: Arc<KeyStore>, config: &AuthConfig) -> Self {
        let validations = config
            .algorithms
            .iter()
            .map(|algorithm| {
                let mut validation = Validation::new(algorithm.jwt());
                validation.set_issuer(&[&config.issuer]);
                validation.set_audience(&[&config.audience]);
                validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                // Time is checked below against the clock passed in, with the configured
                // leeway; jsonwebtoken's own check would read the wall clock with its 60 s
                // default leeway.
                validation.validate_exp = false;
                validation.validate_nbf = false;
                validation.leeway = config.leeway_s;
                (*algorithm, validation)
            })
            .collect();
        Self { keys, accepted: config.algorithms.clone(), validations, leeway_s: config.leeway_s }
    }

    /// The key store (for reloads and tests).
    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// Verifies `token` at `now_s` (seconds since the epoch).
    ///
    /// # Errors
    /// [`TokenError`]; [`TokenError::UnknownKid`] tells the caller a rate-limited reload may
    /// help (see [`KeyStore::reload_for_unknown_kid`]).
    pub fn verify(&self, token: &str, now_s: u64) -> Result<AccessClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|error| TokenError::Malformed(error.to_string()))?;
        if header.crit.is_some() || names_crit(token) {
            return Err(TokenError::CriticalExtension);
        }
        let algorithm = SigningAlgorithm::from_jwt(header.alg)
            .filter(|algorithm| self.accepted.contains(algorithm))
            .ok_or(TokenError::AlgorithmNotAccepted(header.alg))?;
        let kid = header.kid.as_deref().ok_or(TokenError::MissingKid)?;
        let key = self.keys.get(kid).ok_or(TokenError::UnknownKid)?;
        if key.algorithm != algorithm {
            return Err(TokenError::AlgorithmMismatch { token: header.alg, key: key.algorithm });
        }
        let validation =
            self.validations.get(&algorithm).ok_or(TokenError::AlgorithmNotAccepted(header.alg))?;
        let claims = jsonwebtoken::decode::<AccessClaims>(token, &key.key, validation)
            .map_err(|error| TokenError::Invalid(error.to_string()))?
            .claims;
        if now_s >= claims.exp.saturating_add(self.leeway_s) {
            return Err(TokenError::Expired);
        }
        let latest_valid = now_s.saturating_add(self.leeway_s);
        if claims.nbf.is_some_and(|nbf| nbf > latest_valid) {
            return Err(TokenError::NotYetValid);
        }
        if claims.iat.is_some_and(|iat| iat > latest_valid) {
            return Err(TokenError::IssuedInFuture);
        }
        if claims.jti.is_empty() {
            return Err(TokenError::EmptyJti);
        }
        Ok(claims)
    }
}

/// Whether the token's protected header has a `crit` member at all: `jsonwebtoken` reads
/// `"crit": null` as no `crit`, but RFC 7515 section 4.1.11 allows only a non-empty array
/// there, so any `crit` member is refused (an attack run got `"crit": null` accepted).
fn names_crit(token: &str) -> bool {
    use base64::Engine;
    let Some(encoded) = token.split('.').next() else { return false };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json)
        .is_ok_and(|header| header.contains_key("crit"))
}
