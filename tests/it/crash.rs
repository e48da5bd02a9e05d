//! kill -9 at several points of ingest, including between the Redis write and the Kafka commit,
//! then restart: the final state is bit-identical to an uninterrupted run.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::infra;
use embedstream::config::Config;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn_service(config: &Config, port: u16, extra: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_embedstream"))
        .args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .env("EMBEDSTREAM_KAFKA__BROKERS", &config.kafka.brokers)
        .env("EMBEDSTREAM_KAFKA__TOPIC", &config.kafka.topic)
        .env("EMBEDSTREAM_KAFKA__DEAD_LETTER_TOPIC", &config.kafka.dead_letter_topic)
        .env("EMBEDSTREAM_KAFKA__GROUP_ID", &config.kafka.group_id)
        .env("EMBEDSTREAM_KAFKA__SESSION_TIMEOUT_MS", config.kafka.session_timeout_ms.to_string())
        .env("EMBEDSTREAM_STORE__URL", &config.store.url)
        .env("EMBEDSTREAM_STORE__NAMESPACE", &config.store.namespace)
        .envs(common::auth::service_env(config))
        .env("EMBEDSTREAM_WINDOW__IDLE_TIMEOUT_MS", config.window.idle_timeout_ms.to_string())
        .env("EMBEDSTREAM_INGEST__FLUSH_INTERVAL_MS", "100")
        .env("EMBEDSTREAM_INGEST__MAX_POLL_RECORDS", "200")
        .env("RUST_LOG", "warn")
        .envs(extra.iter().copied())
        .spawn()
        .unwrap()
}

fn stored_applied(store: &mut embedstream::store::SyncStore) -> u64 {
    store.load_meta().ok().flatten().map_or(0, |meta| meta.events_applied)
}

/// A crashed member stays in the group until its session times out; restarting before that
/// would split the partitions with a ghost, and a split changes the interleaving of windows
/// (still exactly once, but not the same digest as one member).
fn wait_for_ghost_to_leave(config: &Config) {
    std::thread::sleep(Duration::from_millis(config.kafka.session_timeout_ms + 1500));
}

#[test]
fn kill_minus_nine_during_ingest_then_restart_gives_the_uninterrupted_digest() {
    let name = infra::unique("crash");
    let config = infra::test_config(&name);
    infra::create_topics(&[(&config.kafka.topic, 4), (&config.kafka.dead_letter_topic, 1)]);
    let records = infra::movielens_records();
    infra::produce(&config, &records);
    let mut store = embedstream::store::SyncStore::new(&config.store).unwrap();

    // Kill -9 once state has reached each threshold of applied events in Redis.
    for threshold in [1u64, 25_000, 60_000] {
        let mut child = spawn_service(&config, free_port(), &[]);
        let deadline = Instant::now() + Duration::from_secs(90);
        while stored_applied(&mut store) < threshold {
            assert!(Instant::now() < deadline, "never reached {threshold} applied events");
            assert!(child.try_wait().unwrap().is_none(), "service exited early");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let after = stored_applied(&mut store);
        assert!(after >= threshold);
        wait_for_ghost_to_leave(&config);
    }

    // Crash between the Redis transaction and the Kafka commit (fault-injection hook).
    let before = stored_applied(&mut store);
    let mut child = spawn_service(
        &config,
        free_port(),
        &[("EMBEDSTREAM_INGEST__FAULT_CRASH_AFTER_FLUSHES", "2")],
    );
    let status = child.wait().unwrap();
    assert!(!status.success(), "the fault hook aborts the process");
    assert!(stored_applied(&mut store) >= before);
    wait_for_ghost_to_leave(&config);

    // Uninterrupted to the end.
    let port = free_port();
    let mut child = spawn_service(&config, port, &[]);
    infra::wait_caught_up(&format!("http://127.0.0.1:{port}"), 100_000, Duration::from_secs(120));
    child.kill().unwrap();
    child.wait().unwrap();

    let stored = embedstream::app::load_stored_model(&config).unwrap();
    assert_eq!(stored.events_applied(), 100_000, "nothing lost, nothing applied twice");
    assert_eq!(stored.digest(), infra::replay_digest(&config, &records, 4));
}
