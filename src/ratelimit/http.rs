//! The rate-limit middleware of the `/v1` routes.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{headers, RateLimiter, RouteClass};
use crate::auth::Principal;
use crate::http_error::{ApiError, ErrorCode};

/// The verified token subject of `request`: authentication ([`crate::auth::http::authenticate`],
/// the layer outside this one) stores the [`Principal`] in the request extensions. With
/// authentication disabled every request carries the principal `anonymous`, one shared bucket.
fn token_subject(request: &Request) -> Option<&str> {
    request.extensions().get::<Principal>().map(|principal| principal.sub.as_str())
}

/// Whose budget `request` spends: `sub:<token subject>`; else `ip:<address>` (the last
/// `X-Forwarded-For` entry when `trust_forwarded_for`, else the peer address when the server
/// records it); else `anonymous`, one bucket shared by every unidentified client. The prefixes
/// keep a token whose subject is "anonymous" out of the shared bucket.
pub fn subject(request: &Request, trust_forwarded_for: bool) -> String {
    if let Some(sub) = token_subject(request) {
        return format!("sub:{sub}");
    }
    if trust_forwarded_for {
        // Only the last entry: the one the trusted proxy appended. Earlier entries are
        // whatever the client sent.
        let forwarded = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .and_then(|entry| entry.trim().parse::<IpAddr>().ok());
        if let Some(address) = forwarded {
            return format!("ip:{address}");
        }
    }
    if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        return format!("ip:{}", peer.ip());
    }
    "anonymous".to_owned()
}

/// Counts the request against its subject's budget for its route class: 429 `rate_limited`
/// with `Retry-After` past the budget; the RateLimit headers on every response of a limited
/// route. Routes without a class (health, readiness, metrics) pass untouched.
pub async fn enforce(State(limiter): State<RateLimiter>, request: Request, next: Next) -> Response {
    if !limiter.config().enabled {
        return next.run(request).await;
    }
    let Some(class) = RouteClass::of_path(request.uri().path()) else {
        return next.run(request).await;
    };
    let service =
        request.extensions().get::<Principal>().is_some_and(|principal| principal.service);
    let class = class.for_subject(service);
    let who = subject(&request, limiter.config().trust_forwarded_for);
    let decision = limiter.check(class, &who).await;
    let mut response = if decision.outcome.allowed {
        next.run(request).await
    } else {
        let seconds = headers::retry_after_value(&decision.outcome);
        let message =
            format!("rate limit of route class {} exceeded; retry in {seconds} s", class.as_str());
        ApiError::new(ErrorCode::RateLimited, message).into_response()
    };
    headers::apply(response.headers_mut(), class, &decision.limit, &decision.outcome);
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    fn request(forwarded: &[&str]) -> Request {
        let mut builder = Request::builder().uri("/v1/users/u1");
        for value in forwarded {
            builder = builder.header("x-forwarded-for", *value);
        }
        builder.body(Body::empty()).expect("valid request")
    }

    #[test]
    fn forwarded_for_is_used_only_when_trusted_and_its_last_entry_wins() {
        let forwarded = request(&["203.0.113.9, 10.0.0.1", "198.51.100.7"]);
        assert_eq!(subject(&forwarded, true), "ip:198.51.100.7");
        assert_eq!(subject(&forwarded, false), "anonymous");
        assert_eq!(subject(&request(&["not an address"]), true), "anonymous");
        let spoofed_tail = request(&["198.51.100.7, garbage"]);
        assert_eq!(subject(&spoofed_tail, true), "anonymous", "never an earlier entry");
    }

    #[test]
    fn the_token_subject_wins_over_addresses() {
        let mut authenticated = request(&["198.51.100.7"]);
        authenticated.extensions_mut().insert(Principal {
            sub: "anonymous".to_owned(),
            scopes: crate::auth::Scopes::of(&[]),
            jti: "j1".to_owned(),
            exp: u64::MAX,
            service: false,
        });
        // Prefixed, so a user named "anonymous" does not share the unidentified bucket.
        assert_eq!(subject(&authenticated, true), "sub:anonymous");
    }

    #[test]
    fn peer_address_when_recorded() {
        let mut with_peer = request(&[]);
        with_peer.extensions_mut().insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 4000))));
        assert_eq!(subject(&with_peer, false), "ip:192.0.2.1");
    }
}
