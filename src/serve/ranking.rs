//! The ranking routes (recommendations, scores) with their fallbacks, in this order:
//!
//! 1. `personalization` flag off for the user → popularity.
//! 2. The user's state: memory first; when evicted, Redis. Redis unavailable (breaker open,
//!    timeout, `redis_reads` flag off) → the user is treated as unknown and the answer is
//!    marked stale.
//! 3. Unknown or cold user (no events) → popularity (decayed counts).
//! 4. Session blending (`session_id` given, `session_blending` flag on): the session vector is
//!    blended into the query; a session that cannot be read is skipped (stale).
//! 5. `ann` flag off, or no index snapshot yet (restoring, first build) → exact scoring of
//!    every item; otherwise HNSW candidates re-ranked exactly.
//!
//! Every answer carries `stale` (true when Redis is unavailable or the last flush failed, so
//! the served state may be ahead of or behind the durable copy; also sent as the
//! `X-Embedstream-Stale: true` header), the A/B `variant` and the `fallbacks` taken.

use std::collections::HashMap;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::handlers::{check_k, query, SubjectUser, MAX_ID_CHARS};
use super::{ApiError, AppState, ErrorCode, Served};
use crate::flags::Decisions;
use crate::index::{bounded_top_k, Excluded};
use crate::model::{ItemRow, Model, UserState};
use crate::resilience::BreakerState;
use crate::session::{blend, session_vector, valid_session_id, Session};

/// The response header of a stale answer.
pub const STALE_HEADER: HeaderName = HeaderName::from_static("x-embedstream-stale");

/// The response header naming the namespace a ranking or scoring answer was computed from
/// (the target of `store.alias` when one is set).
pub const NAMESPACE_HEADER: HeaderName = HeaderName::from_static("x-embedstream-namespace");

/// A user's state, and whether it may be stale.
pub(super) struct Lookup {
    pub user: Option<UserState>,
    pub stale: bool,
}

/// True when the durable copy is not reachable or behind: the `redis` breaker is not closed,
/// the HTTP side's last failed Redis call is newer than every call that succeeded since, its
/// own and the ingest side's ([`crate::store::evidence`]), or the last flush failed.
pub(super) fn redis_degraded(state: &AppState, served: &Served) -> bool {
    state.redis.breaker().state() != BreakerState::Closed
        || state.redis.evidence().failed_since_any_success([&served.status.redis_evidence])
        || served.status.flush_failing.load(std::sync::atomic::Ordering::Relaxed)
}

/// A user's vector and seen items from memory, or from Redis when evicted. Redis unavailable
/// (or `redis_reads` off) is not an error: the user reads as unknown and the lookup as stale.
pub(super) async fn lookup_user(
    state: &AppState,
    served: &Served,
    user_id: &str,
    redis_reads: bool,
) -> Result<Lookup, ApiError> {
    let stale = redis_degraded(state, served) || !redis_reads;
    {
        let model = served.read();
        if let Some(row) = model.user_row(user_id) {
            return Ok(Lookup { user: Some(model.user_state(row)), stale });
        }
    }
    if !redis_reads {
        return Ok(Lookup { user: None, stale: true });
    }
    if served.absent_users.recently(user_id) {
        return Ok(Lookup { user: None, stale });
    }
    let key = served.keys.user(user_id);
    let mut pipe = redis::pipe();
    pipe.cmd("HGETALL").arg(&key);
    pipe.cmd("LRANGE").arg(served.keys.seen(user_id)).arg(0).arg(-1);
    let (fields, seen): (HashMap<String, Vec<u8>>, Vec<String>) =
        match state.redis.pipeline("load_user", &pipe).await {
            Ok(found) => found,
            Err(error) => {
                tracing::debug!(%error, "user lookup degraded to in-process state");
                return Ok(Lookup { user: None, stale: true });
            }
        };
    if fields.is_empty() {
        served.absent_users.note(user_id);
        return Ok(Lookup { user: None, stale });
    }
    let dim = served.read().dim();
    crate::store::user_with_seen(&key, user_id, &fields, seen, dim)
        .map(|(user, _)| Lookup { user: Some(user), stale })
        .map_err(|error| ApiError::new(ErrorCode::Internal, error.to_string()))
}

/// What ranking needs of a known user: its query ([`Model::query_from_parts`]), the item rows
/// it has seen (oldest first) and its event count.
pub(super) struct Profile {
    pub events: u64,
    pub query: Vec<f32>,
    pub seen: Vec<u32>,
}

/// A user's ranking profile, and whether it may be stale.
pub(super) struct ProfileLookup {
    pub profile: Option<Profile>,
    pub stale: bool,
}

/// The ranking profile of the user at `row` of `model`.
fn profile_in_memory(model: &Model, row: crate::model::UserRow) -> Profile {
    let seen: Vec<ItemRow> = model.user_seen(row).collect();
    Profile {
        events: model.user_events(row),
        query: model.query_from_parts(model.user_vector(row), &seen),
        seen: seen.into_iter().map(|item| item.0).collect(),
    }
}

/// The ranking profile of `user_id`: from memory under one read of the model (no copy of
/// the user's state, no id strings), else from Redis as [`lookup_user`] reads it.
pub(super) async fn lookup_profile(
    state: &AppState,
    served: &Served,
    user_id: &str,
    redis_reads: bool,
) -> Result<ProfileLookup, ApiError> {
    let stale = redis_degraded(state, served) || !redis_reads;
    {
        let model = served.read();
        if let Some(row) = model.user_row(user_id) {
            let profile = profile_in_memory(&model, row);
            return Ok(ProfileLookup { profile: Some(profile), stale });
        }
    }
    let lookup = lookup_user(state, served, user_id, redis_reads).await?;
    let profile = lookup.user.map(|user| {
        let model = served.read();
        Profile {
            events: user.events,
            query: model.query_from_state(&user),
            seen: user.seen.iter().filter_map(|item| model.item_row(item)).map(|r| r.0).collect(),
        }
    });
    Ok(ProfileLookup { profile, stale: lookup.stale })
}

/// A ranking request's `session_id` is 32 lower-case hex digits (the contract's pattern), checked
/// before any flag or lookup: malformed is a bad request (`code`: `invalid_parameter` in a
/// query, `invalid_body` in a body), never a session that does not exist.
fn check_session_id(session_id: Option<&str>, code: ErrorCode) -> Result<(), ApiError> {
    match session_id {
        Some(id) if !valid_session_id(id) => {
            Err(ApiError::new(code, "session_id must be 32 lower-case hex digits"))
        }
        _ => Ok(()),
    }
}

/// The session named by the request, when blending applies. A session of another user, or one
/// that does not exist, is a 404; Redis unavailable skips blending (stale).
async fn load_session(
    state: &AppState,
    user_id: &str,
    session_id: Option<&str>,
    decisions: &Decisions,
    fallbacks: &mut Vec<&'static str>,
) -> Result<(Option<Session>, bool), ApiError> {
    let Some(session_id) = session_id else { return Ok((None, false)) };
    if !decisions.session_blending {
        fallbacks.push("session_blending_off");
        return Ok((None, false));
    }
    if !decisions.redis_reads {
        fallbacks.push("session_unavailable");
        return Ok((None, true));
    }
    match state.sessions.get(session_id).await {
        Ok(Some(session)) if session.user_id == user_id => Ok((Some(session), false)),
        Ok(_) => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no live session {session_id:?} of user {user_id:?}"),
        )),
        Err(error) => {
            tracing::debug!(%error, "session unavailable, ranking without it");
            fallbacks.push("session_unavailable");
            Ok((None, true))
        }
    }
}

/// The user's query blended with the session vector, and the session events it used; `None`
/// when there is no session or none of its events names a known item (query = the user's
/// query, [`Model::query_from_state`]).
fn blended_query(
    state: &AppState,
    model: &Model,
    user: &[f32],
    session: Option<&Session>,
    decisions: &Decisions,
) -> Option<(Vec<f32>, usize)> {
    let session = session?;
    let config = state.sessions.config();
    let s = session_vector(model, &session.events, config.decay)?;
    let lambda = decisions.session_weight.unwrap_or(config.blend_weight);
    Some((blend(user, &s, lambda), session.events.len()))
}

/// `body` as JSON with the namespace header, and the stale header when `stale`.
pub(super) fn respond(body: Value, stale: bool, namespace: &str) -> Response {
    let mut response = Json(body).into_response();
    if let Ok(namespace) = HeaderValue::from_str(namespace) {
        response.headers_mut().insert(NAMESPACE_HEADER, namespace);
    }
    if stale {
        response.headers_mut().insert(STALE_HEADER, HeaderValue::from_static("true"));
    }
    response
}

fn count(state: &AppState, route: &str, source: &str, variant: &str) {
    state.metrics.rankings_total.with_label_values(&[route, source, variant]).inc();
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecommendParams {
    #[serde(default = "default_k")]
    k: usize,
    #[serde(default = "default_true")]
    exclude_seen: bool,
    session_id: Option<String>,
}

pub(super) fn default_k() -> usize {
    10
}

fn default_true() -> bool {
    true
}

pub(super) async fn recommendations(
    State(state): State<AppState>,
    SubjectUser(user_id): SubjectUser,
    params: Result<Query<RecommendParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    check_k(params.k, &state)?;
    check_session_id(params.session_id.as_deref(), ErrorCode::InvalidParameter)?;
    let served = state.served();
    let decisions = state.flags.decide(&user_id);
    let ranking = Ranking {
        state: &state,
        served: &served,
        decisions: &decisions,
        user_id: &user_id,
        params: &params,
    };
    let mut fallbacks = Vec::new();
    // A user in memory and no session (the common request): the profile and the ranking under
    // one read of the model. Each read can queue behind the fold's next chunk (the lock is
    // fair), and under ingest two thirds of a slow request's time was such waits, two per
    // request (BENCHMARKS.md, "Where the slow requests wait").
    if params.session_id.is_none() {
        // Read before the model's lock: it needs no model, and the fold waits for the lock.
        let stale = redis_degraded(&state, &served) || !decisions.redis_reads;
        let answered = {
            let model = served.read();
            model.user_row(&user_id).map(|row| {
                let profile = profile_in_memory(&model, row);
                if stale {
                    fallbacks.push("redis_unavailable");
                }
                ranking.rank(&model, Some(&profile), None, &mut fallbacks)
            })
        };
        if let Some(ranked) = answered {
            return Ok(ranking.answer(ranked, None, stale, fallbacks));
        }
    }
    let lookup = lookup_profile(&state, &served, &user_id, decisions.redis_reads).await?;
    let (session, session_stale) =
        load_session(&state, &user_id, params.session_id.as_deref(), &decisions, &mut fallbacks)
            .await?;
    let stale = lookup.stale || session_stale;
    if lookup.stale {
        fallbacks.push("redis_unavailable");
    }
    let ranked = {
        let model = served.read();
        ranking.rank(&model, lookup.profile.as_ref(), session.as_ref(), &mut fallbacks)
    };
    Ok(ranking.answer(ranked, session.as_ref(), stale, fallbacks))
}

/// One recommendation request: what it ranks with and answers.
struct Ranking<'a> {
    state: &'a AppState,
    served: &'a Served,
    decisions: &'a Decisions,
    user_id: &'a str,
    params: &'a RecommendParams,
}

/// A ranking's answer: where it came from, the items, and how the index answered.
struct Ranked {
    source: &'static str,
    items: Vec<crate::index::ScoredItem>,
    ann: bool,
    candidates: usize,
    session_events: usize,
}

impl Ranking<'_> {
    /// The top k for `profile` (blended with `session`), or popularity for a cold or unknown
    /// user, under the caller's read of the model.
    fn rank(
        &self,
        model: &Model,
        profile: Option<&Profile>,
        session: Option<&Session>,
        fallbacks: &mut Vec<&'static str>,
    ) -> Ranked {
        let (state, served, decisions, params) =
            (self.state, self.served, self.decisions, self.params);
        let excluded = match (profile, params.exclude_seen) {
            (Some(profile), true) => Excluded::from_rows(profile.seen.iter().copied()),
            _ => Excluded::none(),
        };
        let warm = profile.filter(|profile| profile.events > 0);
        let mut session_events = 0;
        let (source, items, ann, candidates) = match warm {
            Some(profile) if decisions.personalization => {
                let blended = blended_query(state, model, &profile.query, session, decisions);
                if let Some((_, used)) = &blended {
                    session_events = *used;
                }
                let query_vector = blended.as_ref().map_or(profile.query.as_slice(), |(q, _)| q);
                if decisions.ann && served.index.serves(model.item_count()) {
                    let result = served.index.top_k(model, query_vector, params.k, &excluded);
                    ("model", result.items, result.used_ann, result.candidates)
                } else {
                    fallbacks.push("exact_scoring");
                    // The exact scan's answer, from the 8-bit copy and the norm bound.
                    let (items, _) = bounded_top_k(model, query_vector, params.k, &excluded);
                    ("model", items, false, model.item_count())
                }
            }
            Some(_) => {
                fallbacks.push("personalization_off");
                (
                    "popularity",
                    served.index.popular_top_k(model, params.k, &excluded),
                    false,
                    model.item_count(),
                )
            }
            None => {
                fallbacks.push("cold_user");
                (
                    "popularity",
                    served.index.popular_top_k(model, params.k, &excluded),
                    false,
                    model.item_count(),
                )
            }
        };
        Ranked { source, items, ann, candidates, session_events }
    }

    /// The recommendation answer.
    fn answer(
        &self,
        ranked: Ranked,
        session: Option<&Session>,
        stale: bool,
        fallbacks: Vec<&'static str>,
    ) -> Response {
        let (params, decisions) = (self.params, self.decisions);
        count(self.state, "recommendations", ranked.source, &decisions.variant);
        respond(
            json!({
                "user_id": self.user_id,
                "source": ranked.source,
                "k": params.k,
                "items": ranked.items,
                "index": { "ann": ranked.ann, "candidates": ranked.candidates },
                "session": session.map(|s| json!({ "session_id": s.session_id, "events_used": ranked.session_events })),
                "stale": stale,
                "variant": decisions.variant,
                "fallbacks": fallbacks,
            }),
            stale,
            &self.served.namespace,
        )
    }
}

/// Every id of a scoring request has 1 to [`MAX_ID_CHARS`] characters, as the contract says:
/// a longer one can name no item, and would only cost hashing and echoing.
fn check_item_ids(item_ids: &[String]) -> Result<(), ApiError> {
    let Some((index, chars)) = item_ids
        .iter()
        .map(|id| id.chars().count())
        .enumerate()
        .find(|(_, chars)| *chars == 0 || *chars > MAX_ID_CHARS)
    else {
        return Ok(());
    };
    Err(ApiError::new(
        ErrorCode::InvalidBody,
        format!("item_ids[{index}] has {chars} characters; ids have 1 to {MAX_ID_CHARS}"),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScoreRequest {
    item_ids: Vec<String>,
    session_id: Option<String>,
}

pub(super) async fn scores(
    State(state): State<AppState>,
    SubjectUser(user_id): SubjectUser,
    body: Result<Json<ScoreRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(super::body_rejection)?;
    if request.item_ids.is_empty() || request.item_ids.len() > state.config.max_score_items {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!("item_ids must hold 1 to {} ids", state.config.max_score_items),
        ));
    }
    check_item_ids(&request.item_ids)?;
    check_session_id(request.session_id.as_deref(), ErrorCode::InvalidBody)?;
    let served = state.served();
    let decisions = state.flags.decide(&user_id);
    let mut fallbacks = Vec::new();
    let lookup = lookup_profile(&state, &served, &user_id, decisions.redis_reads).await?;
    let (session, session_stale) =
        load_session(&state, &user_id, request.session_id.as_deref(), &decisions, &mut fallbacks)
            .await?;
    let stale = lookup.stale || session_stale;
    if lookup.stale {
        fallbacks.push("redis_unavailable");
    }
    let model = served.read();
    let warm = lookup.profile.filter(|profile| profile.events > 0);
    let personal: Option<Vec<f32>> = match warm {
        Some(profile) if decisions.personalization => Some(
            match blended_query(&state, &model, &profile.query, session.as_ref(), &decisions) {
                Some((query, _)) => query,
                None => profile.query,
            },
        ),
        Some(_) => {
            fallbacks.push("personalization_off");
            None
        }
        None => {
            fallbacks.push("cold_user");
            None
        }
    };
    let mut scored = Vec::new();
    let mut unknown = Vec::new();
    for item_id in &request.item_ids {
        let Some(row) = model.item_row(item_id) else {
            unknown.push(item_id.clone());
            continue;
        };
        let score = match &personal {
            Some(query_vector) => {
                crate::model::dot(query_vector, model.item_vector(row)) + model.item_bias(row)
            }
            None => model.popularity_log(row) as f32,
        };
        scored.push(json!({ "item_id": item_id, "score": score }));
    }
    drop(model);
    let source = if personal.is_some() { "model" } else { "popularity" };
    count(&state, "scores", source, &decisions.variant);
    Ok(respond(
        json!({
            "user_id": user_id,
            "source": source,
            "scores": scored,
            "unknown_items": unknown,
            "stale": stale,
            "variant": decisions.variant,
            "fallbacks": fallbacks,
        }),
        stale,
        &served.namespace,
    ))
}
