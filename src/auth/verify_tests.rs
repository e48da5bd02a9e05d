//! Unit tests of the verifier: pure, the time passed in, no Redis.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::config::{AuthConfig, SigningAlgorithm};
use super::issue::{keygen, Signer};
use super::jwks::KeyStore;
use super::principal::{Scope, Scopes};
use super::verify::{TokenError, Verifier};

const NOW: u64 = 1_750_000_000;

struct Fixture {
    dir: PathBuf,
    config: AuthConfig,
    pem: Vec<u8>,
    jwks: String,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("es-verify-{name}-{}", std::process::id()));
        let files = keygen(&dir, "k1").unwrap();
        let config = AuthConfig {
            jwks_path: Some(files.jwks.clone()),
            signing_key_path: Some(files.signing_key.clone()),
            signing_kid: Some("k1".to_owned()),
            ..AuthConfig::default()
        };
        let pem = std::fs::read(&files.signing_key).unwrap();
        let jwks = std::fs::read_to_string(&files.jwks).unwrap();
        Self { dir, config, pem, jwks }
    }

    fn verifier(&self) -> Verifier {
        let path = self.config.jwks_path.as_deref().unwrap();
        Verifier::new(
            Arc::new(KeyStore::open(path, Duration::from_secs(30)).unwrap()),
            &self.config,
        )
    }

    fn claims(&self) -> Value {
        json!({
            "iss": "embedstream", "aud": "embedstream", "sub": "u1", "scope": "recs:read",
            "jti": "j1", "iat": NOW, "nbf": NOW, "exp": NOW + 300,
        })
    }

    fn sign(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &EncodingKey::from_ed_pem(&self.pem).unwrap()).unwrap()
    }

    fn ed_header(&self) -> Header {
        Header { kid: Some("k1".to_owned()), ..Header::new(Algorithm::EdDSA) }
    }

    fn with(&self, field: &str, value: Value) -> String {
        let mut claims = self.claims();
        claims[field] = value;
        self.sign(&self.ed_header(), &claims)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

#[test]
fn a_token_of_our_signer_verifies() {
    let fixture = Fixture::new("valid");
    let signer = Signer::from_config(&fixture.config).unwrap().unwrap();
    let (token, minted) =
        signer.mint("client:recs", Scopes::of(&[Scope::RecsRead]), 300, NOW).unwrap();
    let claims = fixture.verifier().verify(&token, NOW + 10).unwrap();
    assert_eq!(claims, minted);
    assert_eq!(claims.jti.len(), 22, "128 random bits in base64url");
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap())
            .unwrap();
    let mut names: Vec<&str> = payload.as_object().unwrap().keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["aud", "exp", "iat", "iss", "jti", "nbf", "scope", "sub"]);
}

#[test]
fn alg_none_is_refused() {
    let fixture = Fixture::new("none");
    let token =
        format!("{}.{}.", b64(&json!({"alg": "none", "kid": "k1"})), b64(&fixture.claims()));
    assert!(matches!(fixture.verifier().verify(&token, NOW), Err(TokenError::Malformed(_))));
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    let fixture = Fixture::new("confusion");
    let jwks: Value = serde_json::from_str(&fixture.jwks).unwrap();
    let public = URL_SAFE_NO_PAD.decode(jwks["keys"][0]["x"].as_str().unwrap()).unwrap();
    let header = Header { kid: Some("k1".to_owned()), ..Header::new(Algorithm::HS256) };
    let token =
        jsonwebtoken::encode(&header, &fixture.claims(), &EncodingKey::from_secret(&public))
            .unwrap();
    assert_eq!(
        fixture.verifier().verify(&token, NOW),
        Err(TokenError::AlgorithmNotAccepted(Algorithm::HS256))
    );
}

#[test]
fn alg_must_match_the_key_type_even_when_accepted() {
    let mut fixture = Fixture::new("mismatch");
    fixture.config.algorithms = vec![SigningAlgorithm::EdDSA, SigningAlgorithm::RS256];
    let header = b64(&json!({"alg": "RS256", "kid": "k1", "typ": "JWT"}));
    let token = format!("{header}.{}.AAAA", b64(&fixture.claims()));
    assert!(matches!(
        fixture.verifier().verify(&token, NOW),
        Err(TokenError::AlgorithmMismatch { key: SigningAlgorithm::EdDSA, .. })
    ));
}

#[test]
fn expiry_honours_exactly_the_configured_leeway() {
    let mut fixture = Fixture::new("exp");
    let token = fixture.sign(&fixture.ed_header(), &fixture.claims());
    let exp = NOW + 300;
    assert!(fixture.verifier().verify(&token, exp - 1).is_ok());
    assert_eq!(fixture.verifier().verify(&token, exp), Err(TokenError::Expired));
    fixture.config.leeway_s = 5;
    assert!(fixture.verifier().verify(&token, exp + 4).is_ok());
    assert_eq!(fixture.verifier().verify(&token, exp + 5), Err(TokenError::Expired));
}

#[test]
fn nbf_in_the_future_is_refused() {
    let mut fixture = Fixture::new("nbf");
    let token = fixture.with("nbf", json!(NOW + 60));
    assert_eq!(fixture.verifier().verify(&token, NOW), Err(TokenError::NotYetValid));
    assert!(fixture.verifier().verify(&token, NOW + 60).is_ok());
    fixture.config.leeway_s = 60;
    assert!(fixture.verifier().verify(&token, NOW).is_ok());
}

#[test]
fn claims_of_the_wrong_type_or_missing_are_refused() {
    let fixture = Fixture::new("types");
    let verifier = fixture.verifier();
    for (field, value) in [
        ("exp", json!((NOW + 300).to_string())),
        ("exp", json!(null)),
        ("nbf", json!("0")),
        ("scope", json!(["recs:read"])),
        ("sub", json!(7)),
        ("jti", json!(null)),
    ] {
        let token = fixture.with(field, value.clone());
        assert!(
            matches!(verifier.verify(&token, NOW), Err(TokenError::Invalid(_))),
            "{field} = {value}"
        );
    }
}

#[test]
fn wrong_issuer_or_audience_is_refused() {
    let fixture = Fixture::new("issaud");
    let verifier = fixture.verifier();
    for (field, value) in [("iss", json!("evil")), ("aud", json!("other")), ("aud", json!(["x"]))] {
        let token = fixture.with(field, value);
        assert!(matches!(verifier.verify(&token, NOW), Err(TokenError::Invalid(_))), "{field}");
    }
    assert!(verifier.verify(&fixture.with("aud", json!(["x", "embedstream"])), NOW).is_ok());
}

#[test]
fn tampered_payload_is_refused() {
    let fixture = Fixture::new("tamper");
    let token = fixture.sign(&fixture.ed_header(), &fixture.claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims = fixture.claims();
    claims["scope"] = json!("admin");
    parts[1] = b64(&claims);
    let forged = parts.join(".");
    assert!(matches!(fixture.verifier().verify(&forged, NOW), Err(TokenError::Invalid(_))));
}

#[test]
fn unknown_or_missing_kid_is_refused() {
    let fixture = Fixture::new("kid");
    let other = Header { kid: Some("k9".to_owned()), ..Header::new(Algorithm::EdDSA) };
    let token = fixture.sign(&other, &fixture.claims());
    assert_eq!(fixture.verifier().verify(&token, NOW), Err(TokenError::UnknownKid));
    let token = fixture.sign(&Header::new(Algorithm::EdDSA), &fixture.claims());
    assert_eq!(fixture.verifier().verify(&token, NOW), Err(TokenError::MissingKid));
}

#[test]
fn crit_header_is_refused_whatever_it_lists() {
    let fixture = Fixture::new("crit");
    let verifier = fixture.verifier();
    for crit in [vec!["exp2".to_owned()], Vec::new()] {
        let header = Header { crit: Some(crit), ..fixture.ed_header() };
        let token = fixture.sign(&header, &fixture.claims());
        assert_eq!(verifier.verify(&token, NOW), Err(TokenError::CriticalExtension));
    }
    // `"crit": null`, signed: accepted before (jsonwebtoken reads it as no `crit`).
    let mut header = serde_json::to_value(fixture.ed_header()).unwrap();
    header["crit"] = Value::Null;
    let signing_input = format!("{}.{}", b64(&header), b64(&fixture.claims()));
    let key = EncodingKey::from_ed_pem(&fixture.pem).unwrap();
    let signature =
        jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, Algorithm::EdDSA).unwrap();
    let token = format!("{signing_input}.{signature}");
    assert_eq!(verifier.verify(&token, NOW), Err(TokenError::CriticalExtension));
    // The same header without `crit` verifies: only the member makes the difference.
    header.as_object_mut().unwrap().remove("crit");
    let signing_input = format!("{}.{}", b64(&header), b64(&fixture.claims()));
    let signature =
        jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, Algorithm::EdDSA).unwrap();
    assert!(verifier.verify(&format!("{signing_input}.{signature}"), NOW).is_ok());
}

#[test]
fn iat_beyond_the_leeway_and_empty_jti_are_refused() {
    let mut fixture = Fixture::new("iat");
    fixture.config.leeway_s = 5;
    let verifier = fixture.verifier();
    let at = |iat: u64| verifier.verify(&fixture.with("iat", json!(iat)), NOW);
    assert!(at(NOW + 5).is_ok(), "within the leeway");
    assert_eq!(at(NOW + 6), Err(TokenError::IssuedInFuture));
    assert_eq!(at(NOW + 10 * 365 * 86_400), Err(TokenError::IssuedInFuture));
    let token = fixture.with("jti", json!(""));
    assert_eq!(verifier.verify(&token, NOW), Err(TokenError::EmptyJti));
}
