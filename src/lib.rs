//! embedstream: a real-time stateful embedding stream processor.
//!
//! Interaction events (view, click, like, cart, buy) are decoded and validated, grouped into
//! event-time tumbling windows, and folded in a deterministic order into learned user and item
//! embeddings.
//!
//! # Layout
//! - [`event`]: wire types of one event and the validating decoder (pure).
//! - [`window`]: event-time tumbling windows and watermarks (pure, time passed in).
//! - [`model`]: the online BPR matrix-factorisation model and its state digest (pure).
//! - [`fold`]: decode, window and model wired into one deterministic pipeline.
//! - [`replay`]: folding a whole file, with a summary.
//! - [`source`]: readers of MovieLens `u.data` and JSON-lines files.
//! - [`eval`]: the prequential (test-then-learn) evaluation on MovieLens-100k.
//! - [`ingest`]: Kafka consumer group, rebalance handshake, DLQ, effectively-once progress.
//! - [`store`]: Redis key layout, vector codec, atomic flush and restore.
//! - [`index`]: HNSW snapshot, fresh tier and exact re-rank.
//! - [`serve`]: the HTTP API (axum).
//! - [`http_error`]: the JSON error of the HTTP API and its stable codes (a leaf).
//! - [`session`]: server-side sessions in Redis and session-vector blending.
//! - [`auth`]: JWT verification (JWKS, scopes, revocation) and token issuance for clients.
//! - [`ratelimit`]: admission control of the HTTP side: rate limits (Redis GCRA) and load
//!   shedding.
//! - [`produce`]: publishing a dataset to Kafka in event-time order.
//! - [`metrics`]: every Prometheus metric.
//! - [`resilience`]: circuit breakers, retries with backoff.
//! - [`flags`]: feature flags (kill switches, rollouts, A/B variant), cached from Redis.
//! - [`app`]: wires ingest, store, index and serve into the `run` service.
//! - [`config`]: layered configuration (defaults, file, environment).

pub mod app;
pub mod auth;
pub mod config;
pub mod eval;
pub mod event;
pub mod export;
pub mod flags;
pub mod fold;
pub mod http_error;
pub mod index;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod produce;
pub mod ratelimit;
pub mod replay;
pub mod resilience;
pub mod serve;
pub mod session;
pub mod source;
pub mod store;
pub mod topics;
pub mod window;
