//! The service end to end against the real broker and Redis started by `scripts/test.sh`:
//! MovieLens-100k through Kafka, state in Redis equal to a file replay, HTTP answers, the
//! dead-letter topic, and a revoke during ingest.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::infra::{self, get_json, post_json, Service};
use embedstream::ingest::StartPosition;
use embedstream::store::SyncStore;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use serde_json::json;

#[test]
fn movielens_through_kafka_equals_replay_and_is_served() {
    let name = infra::unique("e2e");
    let config = infra::test_config(&name);
    infra::create_topics(&[(&config.kafka.topic, 4), (&config.kafka.dead_letter_topic, 1)]);
    let records = infra::movielens_records();
    infra::produce(&config, &records);

    let service = Service::start(config.clone(), StartPosition::Earliest);
    let base = service.url("");
    let ready = infra::wait_caught_up(&base, 100_000, Duration::from_secs(120));
    assert_eq!(ready["ingest"]["applied"], 100_000);
    assert_eq!(ready["ingest"]["rejected"], 0);
    assert_eq!(ready["ready"], true);

    // Every user and item is in Redis with a vector of the model's dimension.
    let mut store = SyncStore::new(&config.store).unwrap();
    let users = store.user_ids().unwrap();
    assert_eq!(users.len(), 943);
    for user in users.iter().take(50) {
        let state = store.load_user(user, 64).unwrap().unwrap();
        assert_eq!(state.vector.len(), 64);
        assert!(state.events > 0);
    }
    assert_eq!(store.load_items(64).unwrap().len(), 1_682);

    // Recommendations: a known user gets the model, ranked, without seen items.
    let (status, body) = get_json(&service.url("/v1/users/196/recommendations?k=10"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["source"], "model");
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 10);
    let scores: Vec<f64> = items.iter().map(|item| item["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|pair| pair[0] >= pair[1]), "not sorted: {scores:?}");
    let seen: Vec<String> = store.load_user("196", 64).unwrap().unwrap().seen;
    for item in items {
        assert!(!seen.contains(&item["item_id"].as_str().unwrap().to_owned()));
    }
    let (_, unknown) = get_json(&service.url("/v1/users/no-such-user/recommendations?k=5"));
    assert_eq!(unknown["source"], "popularity");
    assert_eq!(unknown["items"].as_array().unwrap().len(), 5);

    let (status, scored) =
        post_json(&service.url("/v1/users/196/scores"), &json!({ "item_ids": ["242", "nope"] }));
    assert_eq!(status, 200);
    assert_eq!(scored["unknown_items"], json!(["nope"]));
    assert_eq!(scored["scores"][0]["item_id"], "242");

    let (status, item) = get_json(&service.url("/v1/items/242"));
    assert_eq!(status, 200);
    assert_eq!(item["dim"], 64);
    let (status, similar) = get_json(&service.url("/v1/items/242/similar?k=3"));
    assert_eq!(status, 200, "{similar}");
    assert_eq!(similar["items"].as_array().unwrap().len(), 3);
    assert_eq!(similar["index"], json!({ "ready_list": false, "candidates": 1_681 }));
    // Caught up and quiet: the repeat is answered by the item's ready list, with the same items.
    let (_, again) = get_json(&service.url("/v1/items/242/similar?k=3"));
    assert_eq!(again["index"]["ready_list"], json!(true), "{again}");
    assert_eq!(again["items"], similar["items"]);
    let (status, user) = get_json(&service.url("/v1/users/196"));
    assert_eq!(status, 200);
    assert_eq!(user["vector"].as_array().unwrap().len(), 64);

    // Every metric the Grafana dashboard and the alert rules query is exported. The consumer
    // lag per partition comes from librdkafka's statistics, once a second, and a partition
    // enters them once it has a position: a catch-up of 100,000 events can end before that, so
    // the lag gets a few statistics intervals to appear.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut metrics = ureq::get(service.url("/metrics")).call().unwrap();
        let text = metrics.body_mut().read_to_string().unwrap();
        if crate::deploy::missing_exported(&text).is_empty() || std::time::Instant::now() > deadline
        {
            crate::deploy::check_exported(&text);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }

    service.stop();
    // The durable state is bit-identical to a file replay spread over the same 4 partitions.
    let stored = embedstream::app::load_stored_model(&config).unwrap();
    assert_eq!(stored.events_applied(), 100_000);
    assert_eq!(stored.digest(), infra::replay_digest(&config, &records, 4));
    let served = scored["scores"][0]["score"].as_f64().unwrap();
    crate::export::check_export(&config, "196", "242", served);
}

#[test]
fn bad_records_go_to_the_dead_letter_topic_with_reasons_and_the_rest_is_applied() {
    let name = infra::unique("dlq");
    let config = infra::test_config(&name);
    infra::create_topics(&[(&config.kafka.topic, 2), (&config.kafka.dead_letter_topic, 1)]);
    let corpus: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/invalid.json"))
            .unwrap(),
    )
    .unwrap();
    let mut records = Vec::new();
    let mut expected_reasons: HashMap<Vec<u8>, String> = HashMap::new();
    for (index, case) in corpus.iter().enumerate() {
        let Some(text) = case["input"].as_str() else { continue };
        if case.get("pad_to_bytes").is_some() {
            continue;
        }
        expected_reasons
            .insert(text.as_bytes().to_vec(), case["reason"].as_str().unwrap().to_owned());
        records.push(embedstream::source::Record {
            key: Some(format!("k{index}").into_bytes()),
            value: text.as_bytes().to_vec(),
            line: index as u64,
            ts: Some(1_700_000_000_000),
        });
        let valid = format!(
            r#"{{"event_id":"ok-{index}","user_id":"u{}","item_id":"i{}","event_type":"view","ts":{}}}"#,
            index % 5,
            index % 7,
            1_700_000_000_000u64 + index as u64 * 10
        );
        records.push(embedstream::source::Record {
            key: Some(format!("u{}", index % 5).into_bytes()),
            value: valid.into_bytes(),
            line: index as u64,
            ts: Some(1_700_000_000_000 + index as i64 * 10),
        });
    }
    let bad = expected_reasons.len();
    let good = records.len() - bad;
    infra::produce(&config, &records);

    let service = Service::start(config.clone(), StartPosition::Earliest);
    let ready = infra::wait_caught_up(&service.url(""), good as u64, Duration::from_secs(60));
    assert_eq!(ready["ingest"]["applied"], good as u64);
    assert_eq!(ready["ingest"]["rejected"], bad as u64);
    service.stop();

    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", infra::brokers())
        .set("group.id", infra::unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[&config.kafka.dead_letter_topic]).unwrap();
    let mut seen = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen < bad && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = message.unwrap();
        let payload = message.payload().unwrap_or(&[]).to_vec();
        let headers = message.headers().unwrap();
        let header = |name: &str| {
            headers
                .iter()
                .find(|header| header.key == name)
                .and_then(|header| header.value)
                .map(|value| String::from_utf8_lossy(value).into_owned())
        };
        let expected = expected_reasons.get(&payload).unwrap_or_else(|| {
            panic!("unexpected dead letter {:?}", String::from_utf8_lossy(&payload))
        });
        assert_eq!(header("reason").as_deref(), Some(expected.as_str()));
        assert!(!header("error").unwrap().is_empty());
        assert_eq!(header("source_topic").as_deref(), Some(config.kafka.topic.as_str()));
        seen += 1;
    }
    assert_eq!(seen, bad, "every bad record is in the dead-letter topic");
}

#[test]
fn a_revoke_during_ingest_loses_and_duplicates_nothing() {
    let name = infra::unique("revoke");
    let config = infra::test_config(&name);
    infra::create_topics(&[(&config.kafka.topic, 4), (&config.kafka.dead_letter_topic, 1)]);
    let records = infra::movielens_records();
    infra::produce(&config, &records);
    let mut expected: HashMap<String, u64> = HashMap::new();
    let mut expected_items: HashMap<String, u64> = HashMap::new();
    for record in &records {
        *expected.entry(String::from_utf8(record.key.clone().unwrap()).unwrap()).or_default() += 1;
        let event: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
        *expected_items.entry(event["item_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }

    let mut slow = config.clone();
    // A slower first member, so that the second joins in the middle of the stream.
    slow.ingest.max_poll_records = 200;
    let first = Service::start(slow, StartPosition::Earliest);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, ready) = get_json(&first.url("/readyz"));
        if ready["ingest"]["applied"].as_u64().unwrap_or(0) > 5_000 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "first member never started: {ready}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = Service::start(config.clone(), StartPosition::Earliest);
    // Both members end up caught up on their share of the partitions.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut store = SyncStore::new(&config.store).unwrap();
    loop {
        let (_, a) = get_json(&first.url("/readyz"));
        let (_, b) = get_json(&second.url("/readyz"));
        let both_assigned = !a["ingest"]["assigned_partitions"].as_array().unwrap().is_empty()
            && !b["ingest"]["assigned_partitions"].as_array().unwrap().is_empty();
        let stored: u64 = store
            .user_ids()
            .unwrap()
            .iter()
            .map(|user| store.load_user(user, 64).unwrap().map_or(0, |state| state.events))
            .sum();
        if both_assigned
            && a["ingest"]["caught_up"] == true
            && b["ingest"]["caught_up"] == true
            && stored == 100_000
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not settled: {a} {b} stored {stored}");
        std::thread::sleep(Duration::from_millis(500));
    }
    first.stop();
    second.stop();
    // Exactly once per user: each user's stored event count is its number of events.
    for (user, count) in &expected {
        let state = store.load_user(user, 64).unwrap().unwrap();
        assert_eq!(state.events, *count, "user {user}");
    }
    // And per item, although both members folded events of every item (issue 10).
    let items = store.load_items(64).unwrap();
    assert_eq!(items.len(), expected_items.len());
    for item in items {
        assert_eq!(item.events, expected_items[&item.id], "item {}", item.id);
    }
    assert_eq!(store.load_meta().unwrap().unwrap().events_applied, 100_000);
}

#[test]
fn replay_from_explicit_offsets_and_from_a_timestamp() {
    let name = infra::unique("from");
    let config = infra::test_config(&name);
    infra::create_topics(&[(&config.kafka.topic, 1), (&config.kafka.dead_letter_topic, 1)]);
    let records: Vec<embedstream::source::Record> = (0..100u64)
        .map(|n| {
            let ts = 1_700_000_000_000 + n as i64 * 1_000;
            embedstream::source::Record {
                key: Some(format!("u{}", n % 3).into_bytes()),
                value: format!(
                    r#"{{"event_id":"e{n}","user_id":"u{}","item_id":"i{}","event_type":"view","ts":{ts}}}"#,
                    n % 3,
                    n % 11
                )
                .into_bytes(),
                line: n,
                ts: Some(ts),
            }
        })
        .collect();
    infra::produce(&config, &records);

    // From offset 60: the first 60 records are never read into this namespace.
    let mut offsets = config.clone();
    offsets.store.namespace = format!("{name}-offsets");
    offsets.kafka.group_id = format!("{name}-offsets");
    let start: embedstream::ingest::StartPosition = "offsets:0=60".parse().unwrap();
    let service = Service::start(offsets.clone(), start);
    let ready = infra::wait_caught_up(&service.url(""), 40, Duration::from_secs(60));
    assert_eq!(ready["ingest"]["applied"], 40);
    service.stop();

    // From a timestamp: offsets_for_times finds the first record at or after it. Some brokers
    // answer at batch granularity, so at least the 30 records after it and at most all 100.
    let mut by_time = config.clone();
    by_time.store.namespace = format!("{name}-time");
    by_time.kafka.group_id = format!("{name}-time");
    let start = embedstream::ingest::StartPosition::Timestamp(1_700_000_000_000 + 70_000);
    let service = Service::start(by_time, start);
    let ready = infra::wait_caught_up(&service.url(""), 30, Duration::from_secs(60));
    let applied = ready["ingest"]["applied"].as_u64().unwrap();
    assert!((30..=100).contains(&applied), "applied {applied}");
    service.stop();

    // Stored progress wins over --from: restarting the offsets namespace from 0 reads nothing.
    let service = Service::start(
        offsets,
        "offsets:0=0".parse::<embedstream::ingest::StartPosition>().unwrap(),
    );
    let ready = infra::wait_caught_up(&service.url(""), 40, Duration::from_secs(60));
    assert_eq!(ready["ingest"]["applied"], 40);
    service.stop();
}
