//! Issue 11, item 3 (the rebuild part): `embedstream rebuild` consumes a topic into a new
//! namespace headless (no HTTP server, no JWKS configured), verifies the read-back and prints
//! the digest of a file replay of the same records.

use serde_json::Value;

use crate::common;
use common::infra::{
    create_topics, movielens_records, produce, replay_digest, test_config, unique,
};

#[test]
fn rebuild_consumes_to_the_end_headless_and_prints_the_replay_digest() {
    let config = test_config(&unique("rebuild"));
    create_topics(&[(&config.kafka.topic, 2), (&config.kafka.dead_letter_topic, 1)]);
    let records = movielens_records();
    produce(&config, &records);

    // No EMBEDSTREAM_AUTH__* at all: the default configuration has auth on and no JWKS, which
    // `run` refuses; a rebuild serves nothing and needs none.
    let session_timeout = config.kafka.session_timeout_ms.to_string();
    let summary: Value = common::run_json(
        &[
            "rebuild",
            "--from",
            "earliest",
            "--namespace",
            &config.store.namespace,
            "--topic",
            &config.kafka.topic,
        ],
        &[
            ("EMBEDSTREAM_KAFKA__BROKERS", &config.kafka.brokers),
            ("EMBEDSTREAM_KAFKA__DEAD_LETTER_TOPIC", &config.kafka.dead_letter_topic),
            ("EMBEDSTREAM_KAFKA__SESSION_TIMEOUT_MS", &session_timeout),
            ("EMBEDSTREAM_STORE__URL", &config.store.url),
            ("EMBEDSTREAM_INGEST__FLUSH_INTERVAL_MS", "100"),
        ],
    );
    assert_eq!(summary["namespace"], config.store.namespace.as_str());
    assert_eq!(summary["verified"], true);
    assert_eq!(summary["events_applied"], 100_000);
    assert_eq!(summary["digest"], replay_digest(&config, &records, 2).as_str());
    let stored = embedstream::app::load_stored_model(&config).unwrap();
    assert_eq!(stored.digest(), summary["digest"].as_str().unwrap());
}

/// `run --exit-when-caught-up` and `rebuild` stop at the end of the topic; they used to wait for
/// the idle timeout to close the last window first. With a ten-minute idle timeout the rebuild
/// must still end within a minute, and give the replay's digest (the end-of-input drain of a
/// file replay).
#[test]
fn rebuild_closes_the_last_windows_at_the_end_of_the_topic_not_after_the_idle_timeout() {
    let config = test_config(&unique("rebuild-drain"));
    create_topics(&[(&config.kafka.topic, 2), (&config.kafka.dead_letter_topic, 1)]);
    let records: Vec<_> = movielens_records().into_iter().take(2_000).collect();
    produce(&config, &records);
    let session_timeout = config.kafka.session_timeout_ms.to_string();
    let started = std::time::Instant::now();
    let mut child = std::process::Command::new(common::embedstream_bin())
        .args(["rebuild", "--from", "earliest", "--namespace", &config.store.namespace])
        .args(["--topic", &config.kafka.topic])
        .envs([
            ("EMBEDSTREAM_KAFKA__BROKERS", config.kafka.brokers.as_str()),
            ("EMBEDSTREAM_KAFKA__DEAD_LETTER_TOPIC", &config.kafka.dead_letter_topic),
            ("EMBEDSTREAM_KAFKA__SESSION_TIMEOUT_MS", &session_timeout),
            ("EMBEDSTREAM_STORE__URL", &config.store.url),
            ("EMBEDSTREAM_WINDOW__IDLE_TIMEOUT_MS", "600000"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("embedstream runs");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the rebuild was still waiting after 60 s (idle timeout 600 s)");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(status.success(), "rebuild failed: {status}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let summary: Value = serde_json::from_str(&stdout).expect("stdout is one JSON object");
    assert_eq!(summary["events_applied"], 2_000);
    assert_eq!(summary["digest"], replay_digest(&config, &records, 2).as_str());
}
