//! Issue 11, item 6: producers. `embedstream topics create` (rdkafka's admin client), the
//! Python producer example (confluent-kafka) partitioning exactly as the service's own
//! producers do, `POST /v1/events:batch` with per-event results, and the curl example, all
//! against the real broker.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use embedstream::config::Config;
use embedstream::source::kafka_partition;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};

use crate::common;
use common::auth::{bearer, token};
use common::faults::ServiceProcess;
use common::infra::{create_topics, test_config, unique};

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name).to_str().unwrap().to_owned()
}

/// Every record of `topic`'s `partitions` partitions, read from the start until `expected`
/// arrived (or 30 s passed): (partition, key, value).
fn read_topic(topic: &str, partitions: i32, expected: usize) -> Vec<(i32, String, Value)> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::infra::brokers())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut records = Vec::new();
    while records.len() < expected && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
            let value = serde_json::from_slice(message.payload().unwrap()).unwrap();
            records.push((message.partition(), key, value));
        }
    }
    records
}

fn topics_create(config: &Config, partitions: &str) -> Vec<Value> {
    let output = Command::new(common::embedstream_bin())
        .args(["topics", "create", "--partitions", partitions])
        .env("EMBEDSTREAM_KAFKA__BROKERS", &config.kafka.brokers)
        .env("EMBEDSTREAM_KAFKA__TOPIC", &config.kafka.topic)
        .env("EMBEDSTREAM_KAFKA__DEAD_LETTER_TOPIC", &config.kafka.dead_letter_topic)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn topics_create_then_the_python_example_partitions_like_the_service() {
    let config = test_config(&unique("py-producer"));
    let created = topics_create(&config, "3");
    assert_eq!(created[0]["topic"], config.kafka.topic.as_str());
    assert_eq!((&created[0]["outcome"], &created[0]["partitions"]), (&json!("created"), &json!(3)));
    assert_eq!((&created[1]["outcome"], &created[1]["partitions"]), (&json!("created"), &json!(1)));
    let again = topics_create(&config, "3");
    assert!(again.iter().all(|topic| topic["outcome"] == "exists"), "{again:?}");

    // scripts/test.sh installs confluent-kafka into a venv and names its python here.
    let python = std::env::var("EMBEDSTREAM_EXAMPLES_PYTHON").unwrap_or("python3".into());
    let output = Command::new(python)
        .arg(example("producer.py"))
        .args(["--brokers", &config.kafka.brokers, "--topic", &config.kafka.topic, "--count", "60"])
        .output()
        .expect("python runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((&summary["delivered"], &summary["failed"]), (&json!(60), &json!(0)));

    let records = read_topic(&config.kafka.topic, 3, 60);
    assert_eq!(records.len(), 60);
    for (partition, key, value) in &records {
        assert_eq!(value["user_id"].as_str(), Some(key.as_str()), "keyed by user_id");
        assert_eq!(*partition, kafka_partition(key.as_bytes(), 3), "murmur2 partitioning of {key}");
    }
    // The decoder the service runs accepts every one of them.
    let types = config.events.event_types().unwrap();
    for (_, _, value) in &records {
        let bytes = serde_json::to_vec(value).unwrap();
        embedstream::event::decode(&bytes, &types, &config.events.limits).unwrap();
    }
}

fn post(service: &ServiceProcess, path: &str, authorization: &str, body: &Value) -> (u16, Value) {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut response = agent
        .post(service.url(path))
        .header("authorization", authorization)
        .send_json(body)
        .unwrap();
    (response.status().as_u16(), response.body_mut().read_json().unwrap())
}

/// `body` as it is, with `content_type` (none when `None`), under the service token.
fn send(
    service: &ServiceProcess,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut request = agent.post(service.url(path)).header("authorization", bearer());
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let mut response = request.send(body).unwrap();
    (response.status().as_u16(), response.body_mut().read_json().unwrap())
}

fn event(id: &str, user: &str) -> Value {
    json!({"event_id": id, "user_id": user, "item_id": "i1", "event_type": "click", "ts": 1_700_000_000_000_i64})
}

#[test]
fn a_batch_answers_per_event_and_the_curl_example_publishes() {
    let config = test_config(&unique("batch"));
    create_topics(&[(&config.kafka.topic, 2), (&config.kafka.dead_letter_topic, 1)]);
    let limit = [("EMBEDSTREAM_HTTP__MAX_BATCH_EVENTS", "3")];
    let mut service = ServiceProcess::spawn(&config, &limit);
    service.wait_listening(Duration::from_secs(60));

    let mut invalid = event("b-2", "u2");
    invalid.as_object_mut().unwrap().remove("ts");
    let batch = json!({"events": [event("b-1", "u1"), invalid, event("b-3", "u3")]});
    let (status, answer) = post(&service, "/v1/events:batch", &bearer(), &batch);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (&answer["accepted"], &answer["rejected"], &answer["failed"]),
        (&json!(2), &json!(1), &json!(0))
    );
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.iter().map(|r| r["index"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(results[0]["status"], "accepted");
    assert_eq!(results[0]["event_id"], "b-1");
    assert!(results[0]["offset"].is_i64() && results[2]["partition"].is_i64());
    assert_eq!(results[1]["status"], "rejected");
    assert_eq!(results[1]["error"]["code"], "invalid_event");

    // A user token publishes its own events only; the rest of its batch goes through.
    let user = format!("Bearer {}", token(&config, "u1", "events:write"));
    let (status, answer) = post(
        &service,
        "/v1/events:batch",
        &user,
        &json!({"events": [event("b-4", "u1"), event("b-5", "u9")]}),
    );
    assert_eq!(status, 200);
    assert_eq!(answer["results"][0]["status"], "accepted");
    assert_eq!(answer["results"][1]["error"]["code"], "forbidden");

    // Whole-request errors: a reading token, an empty or too large batch, not an object.
    let reader = format!("Bearer {}", token(&config, "client:reader", "recs:read"));
    assert_eq!(post(&service, "/v1/events:batch", &reader, &batch).0, 403);
    let four = json!({"events": [event("c1", "u1"), event("c2", "u1"), event("c3", "u1"), event("c4", "u1")]});
    for body in [json!({"events": []}), four, json!([event("c5", "u1")])] {
        let (status, answer) = post(&service, "/v1/events:batch", &bearer(), &body);
        assert_eq!((status, &answer["error"]["code"]), (400, &json!("invalid_body")), "{body}");
    }

    // An event with a key given twice is rejected in a batch as it is alone (the decoder
    // refuses it), not read as its last value; the batch's other event goes through.
    let twice = r#"{"events": [{"event_id": "d-1", "user_id": "u1", "item_id": "i1", "event_type": "click", "ts": 1700000000000, "ts": 1}, {"event_id": "d-2", "user_id": "u1", "item_id": "i1", "event_type": "click", "ts": 1700000000000}]}"#;
    let (status, answer) = send(&service, "/v1/events:batch", Some("application/json"), twice);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["error"]["code"], "invalid_event", "{answer}");
    assert_eq!(answer["results"][1]["status"], "accepted", "{answer}");
    let one = r#"{"event_id": "d-3", "user_id": "u1", "item_id": "i1", "event_type": "click", "ts": 1700000000000, "ts": 1}"#;
    let (status, answer) = send(&service, "/v1/events", Some("application/json"), one);
    assert_eq!((status, &answer["error"]["code"]), (400, &json!("invalid_event")), "{answer}");

    // Both routes read JSON only: another Content-Type, or none, is 415 in the error shape.
    let valid = event("d-4", "u1").to_string();
    for route in ["/v1/events", "/v1/events:batch"] {
        for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
            let (status, answer) = send(&service, route, content_type, &valid);
            assert_eq!(
                (status, &answer["error"]["code"]),
                (415, &json!("unsupported_media_type")),
                "{route} with {content_type:?}: {answer}"
            );
        }
    }
    let (status, answer) =
        send(&service, "/v1/events", Some("application/json; charset=utf-8"), &valid);
    assert_eq!(status, 202, "{answer}");

    let token = bearer().trim_start_matches("Bearer ").to_owned();
    let output = Command::new("bash")
        .arg(example("http_events.sh"))
        .arg(service.base())
        .arg(&token)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let answers: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(answers[0]["offset"].is_i64(), "{answers:?}");
    assert_eq!(answers[1]["accepted"], 3, "{answers:?}");

    // On the topic: 2 + 1 from the batches, 1 + 3 from the example, keyed by user.
    let records = read_topic(&config.kafka.topic, 2, 7);
    assert_eq!(records.len(), 7);
    assert!(records
        .iter()
        .all(|(partition, key, _)| *partition == kafka_partition(key.as_bytes(), 2)));
    service.kill();
}
