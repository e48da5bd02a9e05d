//! Service clients of the token endpoint, from a TOML or JSON file. Secrets are stored only as
//! argon2 PHC strings (`embedstream auth hash-secret`).
//!
//! ```toml
//! [[clients]]
//! client_id = "recs-service"
//! secret_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! scopes = ["recs:read"]
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use argon2::password_hash::PasswordHash;
use figment::providers::{Format, Toml};
use figment::Figment;
use serde::Deserialize;

use super::principal::{Scope, Scopes};

/// Why the clients file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientsError {
    /// Unreadable, not TOML/JSON, or an unknown field.
    #[error("clients file {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    /// One client is unusable.
    #[error("clients file {path}: client {client_id:?}: {reason}")]
    BadClient { path: PathBuf, client_id: String, reason: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    clients: Vec<ClientEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    client_id: String,
    secret_hash: String,
    scopes: Vec<String>,
}

/// One registered client.
#[derive(Debug, Clone)]
pub struct Client {
    /// The id (the token's `sub` is `client:<id>`).
    pub client_id: String,
    /// The argon2 PHC string of the secret.
    secret_hash: String,
    /// The scopes it may ask for.
    pub allowed: Scopes,
}

/// Registered clients by id.
#[derive(Debug, Clone, Default)]
pub struct Clients {
    by_id: HashMap<String, Client>,
    /// Hash of a random secret, verified when the client id is unknown, so that an unknown id
    /// costs the same time as a wrong secret (no client-id enumeration by timing).
    dummy_hash: String,
}

impl Clients {
    /// Loads a `.json` file as JSON, anything else as TOML.
    ///
    /// # Errors
    /// [`ClientsError`].
    pub fn load(path: &Path) -> Result<Self, ClientsError> {
        let load = |reason: String| ClientsError::Load { path: path.to_owned(), reason };
        let file: ClientsFile = if path.extension().is_some_and(|ext| ext == "json") {
            let text = std::fs::read_to_string(path).map_err(|error| load(error.to_string()))?;
            serde_json::from_str(&text).map_err(|error| load(error.to_string()))?
        } else {
            Figment::from(Toml::file_exact(path))
                .extract()
                .map_err(|error| load(error.to_string()))?
        };
        let mut by_id = HashMap::new();
        for entry in file.clients {
            let bad = |reason: String| ClientsError::BadClient {
                path: path.to_owned(),
                client_id: entry.client_id.clone(),
                reason,
            };
            if entry.client_id.is_empty() || entry.client_id.contains(char::is_whitespace) {
                return Err(bad("client_id must be non-empty without spaces".to_owned()));
            }
            PasswordHash::new(&entry.secret_hash)
                .map_err(|error| bad(format!("secret_hash is not a PHC string: {error}")))?;
            let mut allowed = Vec::new();
            for name in &entry.scopes {
                allowed
                    .push(Scope::parse(name).ok_or_else(|| bad(format!("unknown scope {name}")))?);
            }
            let client = Client {
                client_id: entry.client_id.clone(),
                secret_hash: entry.secret_hash.clone(),
                allowed: Scopes::of(&allowed),
            };
            if by_id.insert(entry.client_id.clone(), client).is_some() {
                return Err(bad("duplicate client_id".to_owned()));
            }
        }
        let dummy_hash =
            super::issue::hash_secret(&super::issue::random_token(16)).map_err(|error| {
                ClientsError::BadClient {
                    path: path.to_owned(),
                    client_id: String::new(),
                    reason: error.to_string(),
                }
            })?;
        Ok(Self { by_id, dummy_hash })
    }

    /// The client `client_id`, when registered.
    pub fn get(&self, client_id: &str) -> Option<&Client> {
        self.by_id.get(client_id)
    }

    /// The client when `secret` is its secret. Slow by design (argon2, tens of ms): call it
    /// off the async threads. An unknown id takes as long as a wrong secret. Allocates the
    /// argon2 memory for this one call; the token endpoint reuses its own
    /// ([`Clients::authenticate_with`]).
    pub fn authenticate(&self, client_id: &str, secret: &str) -> Option<&Client> {
        let mut memory = vec![argon2::Block::default(); self.memory_blocks()];
        self.authenticate_with(client_id, secret, &mut memory)
    }

    /// [`Clients::authenticate`] with the caller's argon2 memory, at least
    /// [`Clients::memory_blocks`] long (a shorter one fails every check): no allocation, so a
    /// flood of checks cannot grow the heap.
    pub fn authenticate_with(
        &self,
        client_id: &str,
        secret: &str,
        memory: &mut [argon2::Block],
    ) -> Option<&Client> {
        let client = self.by_id.get(client_id);
        let hash = client.map_or(self.dummy_hash.as_str(), |client| client.secret_hash.as_str());
        let parsed = PasswordHash::new(hash).ok()?;
        let verified = verify_in(secret.as_bytes(), &parsed, memory);
        client.filter(|_| verified)
    }

    /// Argon2 memory blocks (1 KiB each) one check needs: the largest `m` of any stored hash.
    pub fn memory_blocks(&self) -> usize {
        self.by_id
            .values()
            .map(|client| client.secret_hash.as_str())
            .chain(std::iter::once(self.dummy_hash.as_str()))
            .filter_map(|hash| PasswordHash::new(hash).ok())
            .filter_map(|hash| argon2::Params::try_from(&hash).ok())
            .map(|params| params.block_count())
            .max()
            .unwrap_or(argon2::Params::DEFAULT_M_COST as usize)
    }
}

/// `PasswordVerifier::verify_password` of argon2 with the caller's memory: recompute the hash
/// with the stored algorithm, version, parameters and salt, and compare in constant time
/// (`password_hash::Output` equality).
fn verify_in(secret: &[u8], hash: &PasswordHash<'_>, memory: &mut [argon2::Block]) -> bool {
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else { return false };
    let Ok(algorithm) = argon2::Algorithm::try_from(hash.algorithm) else { return false };
    let version = match hash.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let Ok(params) = argon2::Params::try_from(hash) else { return false };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else { return false };
    let mut output = [0u8; argon2::password_hash::Output::MAX_LENGTH];
    let Some(output) = output.get_mut(..expected.len()) else { return false };
    let argon = argon2::Argon2::new(algorithm, version, params);
    if argon.hash_password_into_with_memory(secret, salt, output, memory).is_err() {
        return false;
    }
    argon2::password_hash::Output::new(output).is_ok_and(|computed| computed == *expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_toml_and_checks_secrets() {
        let dir = std::env::temp_dir().join(format!("es-clients-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hash = super::super::issue::hash_secret("s3cret").unwrap();
        let path = dir.join("clients.toml");
        std::fs::write(
            &path,
            format!("[[clients]]\nclient_id = \"recs\"\nsecret_hash = '{hash}'\nscopes = [\"recs:read\"]\n"),
        )
        .unwrap();
        let clients = Clients::load(&path).unwrap();
        assert!(clients.authenticate("recs", "s3cret").is_some());
        assert!(clients.authenticate("recs", "wrong").is_none());
        assert!(clients.authenticate("nobody", "s3cret").is_none());
        // With the caller's memory: the same answers, and too little memory never verifies.
        let mut memory = vec![argon2::Block::default(); clients.memory_blocks()];
        assert_eq!(clients.memory_blocks(), argon2::Params::DEFAULT_M_COST as usize);
        assert!(clients.authenticate_with("recs", "s3cret", &mut memory).is_some());
        assert!(clients.authenticate_with("recs", "wrong", &mut memory).is_none());
        assert!(clients.authenticate_with("recs", "s3cret", &mut memory[..8]).is_none());
        assert_eq!(clients.get("recs").unwrap().allowed, Scopes::of(&[Scope::RecsRead]));
        std::fs::write(
            &path,
            "[[clients]]\nclient_id = \"x\"\nsecret_hash = 'plain'\nscopes = []\n",
        )
        .unwrap();
        assert!(matches!(Clients::load(&path), Err(ClientsError::BadClient { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
