//! Ingest hardening (issue 9) against the real broker and Redis: the far-future attack over
//! Kafka and over HTTP, and a namespace poisoned by an older version.

use std::time::{Duration, Instant};

use embedstream::config::Config;
use embedstream::ingest::StartPosition;
use embedstream::source::Record;
use serde_json::{json, Value};

use crate::common::http::metric;
use crate::common::infra::{self, get_json, post_json, Service};

/// 95617584000000 ms: the year 5000.
const YEAR_5000_MS: i64 = 95_617_584_000_000;

fn now_ms() -> i64 {
    embedstream::ingest::wall_ms()
}

fn event(user: &str, item: &str, ts: i64, id: &str) -> Value {
    json!({"event_id": id, "user_id": user, "item_id": item, "event_type": "click", "ts": ts})
}

/// A record as `embedstream produce` writes it: the record timestamp is the event's own `ts`
/// (`CreateTime`), which is exactly what the attacker controls.
fn record(event: &Value) -> Record {
    Record {
        key: Some(event["user_id"].as_str().unwrap().as_bytes().to_vec()),
        value: serde_json::to_vec(event).unwrap(),
        line: 1,
        ts: event["ts"].as_i64(),
    }
}

fn readyz(service: &Service) -> Value {
    get_json(&service.url("/readyz")).1
}

fn applied(service: &Service) -> u64 {
    readyz(service)["ingest"]["applied"].as_u64().unwrap()
}

fn one_partition_config(name: &str) -> Config {
    let config = infra::test_config(name);
    infra::create_topics(&[(&config.kafka.topic, 1), (&config.kafka.dead_letter_topic, 1)]);
    config
}

/// Sends `count` live events (ts = now) at 4 per second through `send` and returns how many
/// were applied while the stream was still running (read just before the last one is sent).
fn steady_traffic(service: &Service, count: usize, mut send: impl FnMut(Value)) -> u64 {
    let before = applied(service);
    let mut applied_during = 0;
    for index in 0..count {
        if index == count - 1 {
            applied_during = applied(service) - before;
        }
        send(event(
            &format!("live-{}", index % 3),
            &format!("item-{}", index % 7),
            now_ms(),
            &format!("live-{index}"),
        ));
        std::thread::sleep(Duration::from_millis(250));
    }
    applied_during
}

fn wait_rejected(service: &Service, rejected: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while readyz(service)["ingest"]["rejected"].as_u64() < Some(rejected) {
        assert!(Instant::now() < deadline, "not rejected: {}", readyz(service));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn year_5000_event_over_kafka_is_dead_lettered_and_learning_goes_on() {
    let name = infra::unique("future-kafka");
    let config = one_partition_config(&name);
    let service = Service::start(config.clone(), StartPosition::Earliest);
    infra::produce(&config, &[record(&event("attacker", "i1", YEAR_5000_MS, "attack-1"))]);
    wait_rejected(&service, 1);
    // Longer than the idle timeout: every open window closes, as in the attack.
    std::thread::sleep(Duration::from_millis(2 * config.window.idle_timeout_ms as u64));
    let during = steady_traffic(&service, 24, |live| infra::produce(&config, &[record(&live)]));
    assert!(during >= 12, "only {during} of 23 live events applied while traffic went on");
    let metrics = ureq_text(&service.url("/metrics"));
    let reason = "embedstream_ingest_events_rejected_total{reason=\"too_far_in_future\"}";
    assert_eq!(metric(&metrics, reason), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "embedstream_ingest_events_late_total"), Some(0.0));
    assert_eq!(readyz(&service)["degraded"], json!([]));
    service.stop();
}

#[test]
fn year_5000_event_over_http_is_dead_lettered_and_learning_goes_on() {
    let name = infra::unique("future-http");
    let config = one_partition_config(&name);
    let service = Service::start(config.clone(), StartPosition::Earliest);
    let url = service.url("/v1/events");
    let (status, body) = post_json(&url, &event("attacker", "i1", YEAR_5000_MS, "attack-1"));
    assert_eq!(status, 202, "{body}");
    wait_rejected(&service, 1);
    std::thread::sleep(Duration::from_millis(2 * config.window.idle_timeout_ms as u64));
    let during = steady_traffic(&service, 24, |live| {
        let (status, body) = post_json(&url, &live);
        assert_eq!(status, 202, "{body}");
    });
    assert!(during >= 12, "only {during} of 23 live events applied while traffic went on");
    service.stop();
}

/// A namespace whose `closed_until` was pushed to the year 5000 by an older version (which
/// trusted producer timestamps) recovers: live events are on time again.
#[test]
fn namespace_poisoned_by_an_older_version_recovers() {
    let name = infra::unique("future-poisoned");
    let config = one_partition_config(&name);
    let service = Service::start(config.clone(), StartPosition::Earliest);
    infra::produce(&config, &[record(&event("u1", "i1", now_ms(), "first"))]);
    infra::wait_caught_up(&service.url(""), 1, Duration::from_secs(30));
    service.stop();
    let client = redis::Client::open(config.store.url.as_str()).unwrap();
    let mut connection = client.get_connection().unwrap();
    let meta = format!("{}:meta", config.store.namespace);
    let () = redis::cmd("HSET")
        .arg(&meta)
        .arg("closed_until")
        .arg(YEAR_5000_MS + 1000)
        .query(&mut connection)
        .unwrap();

    let service = Service::start(config.clone(), StartPosition::Earliest);
    infra::wait_caught_up(&service.url(""), 1, Duration::from_secs(30));
    let during = steady_traffic(&service, 16, |live| infra::produce(&config, &[record(&live)]));
    assert!(during >= 8, "only {during} of 15 live events applied while traffic went on");
    let metrics = ureq_text(&service.url("/metrics"));
    assert_eq!(metric(&metrics, "embedstream_ingest_events_late_total"), Some(0.0));
    service.stop();
    let closed_until: i64 =
        redis::cmd("HGET").arg(&meta).arg("closed_until").query(&mut connection).unwrap();
    assert!(closed_until < now_ms() + 60_000, "the flush rewrote a sane value: {closed_until}");
}

fn ureq_text(url: &str) -> String {
    ureq::get(url).call().unwrap().body_mut().read_to_string().unwrap()
}
