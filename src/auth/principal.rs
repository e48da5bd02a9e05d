//! Scopes, the typed claims of an access token, and the principal a verified token names.

use serde::{Deserialize, Serialize};

/// Subject prefix of tokens the token endpoint issues to service clients.
pub const SERVICE_SUBJECT_PREFIX: &str = "client:";

/// One permission (the space-separated `scope` claim, RFC 8693 §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Recommendations, scores, user and item reads.
    RecsRead,
    /// Event ingestion over HTTP.
    EventsWrite,
    /// Admin routes; also satisfies every other scope and may name any user.
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 3] = [Scope::RecsRead, Scope::EventsWrite, Scope::Admin];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RecsRead => "recs:read",
            Self::EventsWrite => "events:write",
            Self::Admin => "admin",
        }
    }

    /// The scope of a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == name)
    }

    fn bit(self) -> u8 {
        match self {
            Self::RecsRead => 1,
            Self::EventsWrite => 2,
            Self::Admin => 4,
        }
    }
}

/// A set of scopes (a bit set: checking one is free).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    /// Parses a space-separated list; unknown names are ignored (a token may carry scopes of
    /// other services), duplicates are harmless.
    pub fn parse_lenient(text: &str) -> Self {
        Self(text.split(' ').filter_map(Scope::parse).fold(0, |bits, scope| bits | scope.bit()))
    }

    /// Parses a space-separated list, refusing unknown names.
    ///
    /// # Errors
    /// The first unknown name.
    pub fn parse_strict(text: &str) -> Result<Self, String> {
        let mut bits = 0;
        for name in text.split(' ').filter(|name| !name.is_empty()) {
            bits |= Scope::parse(name).ok_or_else(|| name.to_owned())?.bit();
        }
        Ok(Self(bits))
    }

    /// A set of the given scopes.
    pub fn of(scopes: &[Scope]) -> Self {
        Self(scopes.iter().fold(0, |bits, scope| bits | scope.bit()))
    }

    /// Whether `scope` is in the set (literally; see [`Principal::has`] for admin).
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Whether every scope of `self` is in `other`.
    pub fn is_subset(self, other: Scopes) -> bool {
        self.0 & !other.0 == 0
    }

    /// The scopes in both sets.
    pub fn intersection(self, other: Scopes) -> Self {
        Self(self.0 & other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The space-separated wire form, in a fixed order.
    pub fn to_claim(self) -> String {
        let names: Vec<&str> =
            Scope::ALL.into_iter().filter(|s| self.contains(*s)).map(Scope::as_str).collect();
        names.join(" ")
    }
}

impl Serialize for Scopes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_claim())
    }
}

impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(Self::parse_lenient(&text))
    }
}

/// The claims of an access token. Typed: a claim of the wrong JSON type (an `exp` string) is a
/// decode error, never a silently skipped check. `iss` and `aud` are checked by jsonwebtoken's
/// validation and not kept. Nothing sensitive: no email, no name, no roles beyond scopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Audience (one; a list is accepted by the validation but not re-issued).
    #[serde(default, skip_serializing_if = "String::is_empty", deserialize_with = "any_aud")]
    pub aud: String,
    /// Subject: a user id, or `client:<client_id>` for a service client.
    pub sub: String,
    /// Granted scopes.
    #[serde(default)]
    pub scope: Scopes,
    /// Unique id (128 random bits, URL-safe base64): the revocation handle.
    pub jti: String,
    /// Issued at, s since the epoch.
    #[serde(default)]
    pub iat: Option<u64>,
    /// Not before, s since the epoch.
    #[serde(default)]
    pub nbf: Option<u64>,
    /// Expires at, s since the epoch (required).
    pub exp: u64,
}

fn any_aud<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Aud::deserialize(deserializer)? {
        Aud::One(aud) => aud,
        Aud::Many(list) => list.into_iter().next().unwrap_or_default(),
    })
}

/// The principal lacks the scope a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this route needs scope {}", .0.as_str())]
pub struct MissingScope(pub Scope);

/// Who is calling: the verified token of the request. Handlers take it as an extractor (the
/// authentication layer puts it into the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`.
    pub sub: String,
    /// The token's scopes.
    pub scopes: Scopes,
    /// The token's `jti`.
    pub jti: String,
    /// The token's `exp`, s since the epoch.
    pub exp: u64,
    /// Whether `sub` is a service client (`client:<id>`), which may name other users.
    pub service: bool,
}

impl Principal {
    /// The principal of verified claims.
    pub fn from_claims(claims: AccessClaims) -> Self {
        Self {
            service: claims.sub.starts_with(SERVICE_SUBJECT_PREFIX),
            sub: claims.sub,
            scopes: claims.scope,
            jti: claims.jti,
            exp: claims.exp,
        }
    }

    /// Whether the principal holds `scope` (`admin` holds every scope).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(scope) || self.scopes.contains(Scope::Admin)
    }

    /// `Ok` when the principal holds `scope`.
    ///
    /// # Errors
    /// [`MissingScope`] (an HTTP answer turns it into 403 `forbidden`).
    pub fn require(&self, scope: Scope) -> Result<(), MissingScope> {
        if self.has(scope) {
            return Ok(());
        }
        Err(MissingScope(scope))
    }

    /// Whether the principal may act on `user_id`: its own user, or any user for a service
    /// client holding `recs:read`, or for `admin`.
    pub fn may_name(&self, user_id: &str) -> bool {
        self.sub == user_id
            || self.scopes.contains(Scope::Admin)
            || (self.service && self.scopes.contains(Scope::RecsRead))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print() {
        let scopes = Scopes::parse_lenient("admin  recs:read other:thing");
        assert!(scopes.contains(Scope::Admin) && scopes.contains(Scope::RecsRead));
        assert!(!scopes.contains(Scope::EventsWrite));
        assert_eq!(scopes.to_claim(), "recs:read admin");
        assert_eq!(Scopes::parse_strict("recs:read nope"), Err("nope".to_owned()));
        assert!(Scopes::of(&[Scope::RecsRead]).is_subset(scopes));
        assert!(!Scopes::of(&[Scope::EventsWrite]).is_subset(scopes));
    }

    #[test]
    fn who_may_name_whom() {
        let principal = |sub: &str, scopes: &[Scope]| {
            Principal::from_claims(AccessClaims {
                iss: "i".into(),
                aud: "a".into(),
                sub: sub.into(),
                scope: Scopes::of(scopes),
                jti: "j".into(),
                iat: None,
                nbf: None,
                exp: 1,
            })
        };
        let user = principal("u1", &[Scope::RecsRead]);
        assert!(user.may_name("u1") && !user.may_name("u2") && !user.service);
        let service = principal("client:recs", &[Scope::RecsRead]);
        assert!(service.service && service.may_name("u2"));
        let writer = principal("client:ingest", &[Scope::EventsWrite]);
        assert!(!writer.may_name("u2"));
        assert_eq!(writer.require(Scope::RecsRead), Err(MissingScope(Scope::RecsRead)));
        let admin = principal("ops", &[Scope::Admin]);
        assert!(admin.may_name("u2") && admin.require(Scope::EventsWrite).is_ok());
    }
}
