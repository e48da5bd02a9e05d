//! The integration tests, compiled as one test binary (one link instead of one per area). Each
//! module is one area; the ones that talk to the broker and Redis use the services that
//! `scripts/test.sh` starts, each test in its own topic and Redis namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod auth;
mod crash;
mod demo;
mod deploy;
mod eval_movielens;
mod event_contract;
mod export;
mod faults;
mod flags;
mod flush;
mod hardening;
mod http_layers;
mod index_recall;
mod ingest;
mod namespaces;
mod openapi;
mod producers;
mod ratelimit;
mod rebuild;
mod redis_faults;
mod replay_cli;
mod scale_out;
mod service;
mod sessions;
