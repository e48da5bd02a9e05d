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
