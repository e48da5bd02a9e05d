//! Signing access tokens, generating key pairs and hashing client secrets.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use rand::RngCore;

use super::config::{AuthConfig, SigningAlgorithm};
use super::principal::{AccessClaims, Scopes};

/// Why a token could not be signed or a key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// No `auth.signing_key_path` / `auth.signing_kid`.
    #[error("token issuance is not configured (auth.signing_key_path, auth.signing_kid)")]
    NotConfigured,
    /// The key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key is not a PKCS#8 PEM key of the configured algorithm.
    #[error("signing key {path}: {reason}")]
    BadKey { path: PathBuf, reason: String },
    /// jsonwebtoken refused to sign (a bug in our key handling).
    #[error("signing: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    /// Hashing a secret failed.
    #[error("hashing: {0}")]
    Hash(String),
}

/// `bytes` random bytes from the OS, URL-safe base64 without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buffer);
    URL_SAFE_NO_PAD.encode(buffer)
}

/// Signs access tokens with the configured private key.
pub struct Signer {
    key: EncodingKey,
    header: Header,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.header.kid).finish_non_exhaustive()
    }
}

impl Signer {
    /// The signer of `config`, or `None` when issuance is not configured.
    ///
    /// # Errors
    /// [`IssueError::Io`] or [`IssueError::BadKey`].
    pub fn from_config(config: &AuthConfig) -> Result<Option<Self>, IssueError> {
        let (Some(path), Some(kid)) = (&config.signing_key_path, &config.signing_kid) else {
            return Ok(None);
        };
        let pem =
            std::fs::read(path).map_err(|source| IssueError::Io { path: path.clone(), source })?;
        let key = match config.signing_algorithm {
            SigningAlgorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            SigningAlgorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            SigningAlgorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        }
        .map_err(|error| IssueError::BadKey { path: path.clone(), reason: error.to_string() })?;
        let mut header = Header::new(config.signing_algorithm.jwt());
        header.kid = Some(kid.clone());
        let signer =
            Self { key, header, issuer: config.issuer.clone(), audience: config.audience.clone() };
        // A key that does not match its declared algorithm fails here, at start, rather than
        // on the first token request.
        signer.mint("startup-check", Scopes::default(), 1, 0).map_err(|error| {
            IssueError::BadKey { path: path.clone(), reason: error.to_string() }
        })?;
        Ok(Some(signer))
    }

    /// The `kid` of issued tokens.
    pub fn kid(&self) -> Option<&str> {
        self.header.kid.as_deref()
    }

    /// Signs an access token for `sub` with `scopes`, valid from `now_s` for `ttl_s` seconds,
    /// with a fresh 128-bit `jti`.
    ///
    /// # Errors
    /// [`IssueError::Sign`].
    pub fn mint(
        &self,
        sub: &str,
        scopes: Scopes,
        ttl_s: u64,
        now_s: u64,
    ) -> Result<(String, AccessClaims), IssueError> {
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: sub.to_owned(),
            scope: scopes,
            jti: random_token(16),
            iat: Some(now_s),
            nbf: Some(now_s),
            exp: now_s.saturating_add(ttl_s),
        };
        let token = jsonwebtoken::encode(&self.header, &claims, &self.key)?;
        Ok((token, claims))
    }
}

/// Files written by [`keygen`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedKeys {
    /// `DIR/signing-key.pem`: the Ed25519 private key, PKCS#8 PEM.
    pub signing_key: PathBuf,
    /// `DIR/jwks.json`: the public key as an OKP JWK with `kid`, `alg: EdDSA`, `use: sig`.
    pub jwks: PathBuf,
}

/// The public JWK (as JSON) of an Ed25519 key.
pub fn ed25519_jwk(key: &ed25519_dalek::SigningKey, kid: &str) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
        "kid": kid,
        "alg": "EdDSA",
        "use": "sig",
    })
}

/// A new Ed25519 key pair.
pub fn generate_ed25519() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng)
}

/// The PKCS#8 PEM of an Ed25519 private key.
///
/// # Errors
/// [`IssueError::Hash`] when encoding fails (it cannot for a valid key).
pub fn ed25519_pem(key: &ed25519_dalek::SigningKey) -> Result<String, IssueError> {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|error| IssueError::Hash(error.to_string()))?;
    Ok(pem.to_string())
}

/// Generates an Ed25519 key pair into `dir` (created if missing): the private key (mode 0600
/// on Unix) and a JWKS holding its public half under `kid`.
///
/// # Errors
/// [`IssueError::Io`].
pub fn keygen(dir: &Path, kid: &str) -> Result<GeneratedKeys, IssueError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| IssueError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let key = generate_ed25519();
    let files =
        GeneratedKeys { signing_key: dir.join("signing-key.pem"), jwks: dir.join("jwks.json") };
    write_private(&files.signing_key, ed25519_pem(&key)?.as_bytes())
        .map_err(io(&files.signing_key))?;
    let jwks = serde_json::json!({ "keys": [ed25519_jwk(&key, kid)] });
    std::fs::write(&files.jwks, format!("{jwks:#}\n")).map_err(io(&files.jwks))?;
    Ok(files)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

/// The argon2id PHC string of `secret` (random salt, the crate's default cost: 19 MiB, 2
/// passes, OWASP's minimum recommendation).
///
/// # Errors
/// [`IssueError::Hash`].
pub fn hash_secret(secret: &str) -> Result<String, IssueError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| IssueError::Hash(error.to_string()))
}
