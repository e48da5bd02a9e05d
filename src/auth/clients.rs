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

use argon2::password_hash::{PasswordHash, PasswordVerifier};
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
    /// off the async threads. An unknown id takes as long as a wrong secret.
    pub fn authenticate(&self, client_id: &str, secret: &str) -> Option<&Client> {
        let client = self.by_id.get(client_id);
        let hash = client.map_or(self.dummy_hash.as_str(), |client| client.secret_hash.as_str());
        let parsed = PasswordHash::new(hash).ok()?;
        let verified =
            argon2::Argon2::default().verify_password(secret.as_bytes(), &parsed).is_ok();
        client.filter(|_| verified)
    }
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
