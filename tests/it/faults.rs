//! Fault injection against real processes (issue 4, item 9). Each test breaks something while
//! events flow and asserts that nothing is lost: the final state digest in Redis equals the
//! fault-free replay of the same events over the same partitions.
//!
//! - the broker SIGKILLed and restarted mid-ingest (durable broker: tansu on moto's S3);
//! - 1% poison records of 30 kinds: every one in the dead-letter topic with its reason;
//! - the service SIGKILLed five times during ingest;
//! - a Redis that accepts connections and never answers: timeouts, the breaker opens, no hang;
//! - Redis down for 20 s mid-ingest: stale answers, bounded memory, every event applied once.
//!
//! Tests that only break their own processes use the shared broker and Redis of
//! `scripts/test.sh`; the ones that stop Redis or the broker start their own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::faults::{
    self, rss_kib, stored_applied, wait_for_ghost_to_leave, DurableStack, OwnRedis, ServiceProcess,
};
use common::http::{get_within, metric};
use common::infra;
use common::poison;
use embedstream::config::Config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use serde_json::Value;

/// Polls stored progress until `threshold` events are applied, the service still running.
fn wait_stored(config: &Config, service: &mut ServiceProcess, threshold: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while stored_applied(config) < threshold {
        assert!(Instant::now() < deadline, "never reached {threshold} applied events");
        service.assert_running();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The durable state equals the replay of `records` over 4 partitions, each applied once.
/// The last `/readyz` body with the late and duplicate counters of `/metrics`: what explains a
/// digest that differs.
fn diagnostics(service: &ServiceProcess) -> Value {
    let bound = Duration::from_secs(5);
    let mut body = get_within(&service.url("/readyz"), bound).json;
    let metrics = get_within(&service.url("/metrics"), bound).text;
    for name in
        ["embedstream_ingest_events_late_total", "embedstream_ingest_events_duplicate_total"]
    {
        body[name] = metric(&metrics, name).into();
    }
    body
}

/// `context` (see [`diagnostics`]) goes into the failure message.
fn assert_digest_equals_replay(
    config: &Config,
    records: &[embedstream::source::Record],
    context: &Value,
) {
    let stored = embedstream::app::load_stored_model(config).unwrap();
    assert_eq!(stored.events_applied(), records.len() as u64, "nothing lost: {context}");
    let replay = infra::replay_digest(config, records, 4);
    assert_eq!(stored.digest(), replay, "digest differs from the replay; last /readyz: {context}");
}

#[test]
fn broker_killed_and_restarted_mid_ingest_loses_nothing() {
    let name = infra::unique("fault-broker");
    let stack = DurableStack::up(&name);
    let mut config = infra::test_config(&name);
    config.kafka.brokers = stack.brokers();
    config.store.url = stack.redis_url();
    faults::create_topics_on(
        &config.kafka.brokers,
        &[(&config.kafka.topic, 4), (&config.kafka.dead_letter_topic, 1)],
    );
    let records = infra::movielens_records();
    infra::produce(&config, &records);

    let slow = [("EMBEDSTREAM_INGEST__MAX_POLL_RECORDS", "200")];
    let mut service = ServiceProcess::spawn(&config, &slow);
    wait_stored(&config, &mut service, 20_000, Duration::from_secs(90));
    let before = stored_applied(&config);
    stack.restart_broker(Duration::from_secs(3));
    assert!(before < records.len() as u64, "ingest ended before the broker went down");

    service.wait_caught_up(records.len() as u64, Duration::from_secs(120));
    let context = diagnostics(&service);
    assert!(service.terminate(Duration::from_secs(30)), "clean shutdown after the restart");
    assert_digest_equals_replay(&config, &records, &context);
}

/// The broker lost the topic (deleted and re-created here; a broker without persistence that
/// restarts does the same) while the namespace's stored progress points past the new log's end.
/// The service used to wait at the stored offset and then skip every new record below it as
/// already applied, silently (attack run of 2026-12-07: 20,000 events lost). Now it halts with
/// its own exit status and says why, having written nothing.
#[test]
fn a_topic_the_broker_lost_halts_the_service_instead_of_skipping_its_new_records() {
    let name = infra::unique("fault-topic-lost");
    let config = infra::test_config(&name);
    let topics = [(config.kafka.topic.as_str(), 2), (config.kafka.dead_letter_topic.as_str(), 1)];
    infra::create_topics(&topics);
    let records = infra::movielens_records();
    infra::produce(&config, &records[..4000]);
    let mut service = ServiceProcess::spawn(&config, &[]);
    service.wait_caught_up(4000, Duration::from_secs(120));
    assert!(service.terminate(Duration::from_secs(30)), "clean shutdown");
    assert_eq!(stored_applied(&config), 4000);

    // A new log of 1,000 records over the same two partitions: both end below the ~2,000
    // offsets stored for them.
    infra::delete_topics(&[&config.kafka.topic]);
    infra::create_topics(&topics[..1]);
    infra::produce(&config, &records[4000..5000]);

    let mut service = ServiceProcess::spawn_with(&config, &[], std::process::Stdio::piped());
    let status = service.wait_exit(
        Duration::from_secs(60),
        Duration::from_millis(50),
        "the service went on past the log's end",
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut service.child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(
        status.code(),
        Some(embedstream::ingest::EXIT_PROGRESS_PAST_LOG_END),
        "{status:?}\n{stderr}"
    );
    assert!(stderr.contains(") is past the end of its log ("), "{stderr}");
    assert_eq!(stored_applied(&config), 4000, "nothing was written after the loss");

    // A typo is refused, never a silent no-op that looks like a reset.
    for (namespace, topic) in
        [(config.store.namespace.as_str(), "no-such-topic"), ("no-such-ns", "t")]
    {
        let output = std::process::Command::new(common::embedstream_bin())
            .args(["namespace", "reset-progress", namespace, "--topic", topic])
            .env("EMBEDSTREAM_STORE__URL", &config.store.url)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{namespace} {topic}: {stderr}");
        assert!(stderr.contains("holds no"), "{stderr}");
    }

    // The operator keeps the learned state and reads the new log from its start.
    let reset = common::run_json(
        &["namespace", "reset-progress", &config.store.namespace, "--topic", &config.kafka.topic],
        &[("EMBEDSTREAM_STORE__URL", &config.store.url)],
    );
    let removed = reset["removed"].as_object().unwrap();
    assert_eq!(removed.len(), 2, "{reset}");
    let resumed: i64 = removed.values().map(|resume| resume.as_i64().unwrap()).sum();
    assert_eq!(resumed, 4000, "{reset}");
    wait_for_ghost_to_leave(&config);
    let mut service = ServiceProcess::spawn(&config, &[]);
    service.wait_caught_up(5000, Duration::from_secs(120));
    assert!(service.terminate(Duration::from_secs(30)), "clean shutdown");
    assert_eq!(stored_applied(&config), 5000, "every record of the new log applied once");
}

#[test]
fn one_percent_poison_of_thirty_kinds_goes_to_the_dead_letter_topic_and_nothing_stalls() {
    // The table is right about the decoder before it is used against the service (the last
    // kind is refused by the window stage, not the decoder).
    let types = embedstream::event::EventTypes::default();
    let limits = embedstream::event::DecodeLimits::default();
    for (index, kind) in poison::KINDS.iter().enumerate().take(poison::KINDS.len() - 1) {
        let value = (kind.make)(7, 1_700_000_000_000);
        let reason = embedstream::event::decode(&value, &types, &limits).map(|_| ()).unwrap_err();
        assert_eq!(reason.reason().as_str(), kind.reason, "kind {index} ({})", kind.name);
    }

    let name = infra::unique("fault-poison");
    let config = infra::test_config(&name);
    infra::create_topics(&[(&config.kafka.topic, 4), (&config.kafka.dead_letter_topic, 1)]);
    let valid = infra::movielens_records();
    let (stream, counts) = poison::interleave(&valid, 100);
    let poisoned = counts.iter().sum::<u64>();
    assert_eq!(poisoned, valid.len() as u64 / 100);
    assert!(counts.iter().all(|count| *count > 0), "every kind is in the stream");
    infra::produce(&config, &stream);

    let mut service = ServiceProcess::spawn(&config, &[]);
    service.wait_caught_up(valid.len() as u64, Duration::from_secs(90));
    let context = diagnostics(&service);
    assert_eq!(context["ingest"]["applied"], valid.len() as u64);
    assert_eq!(context["ingest"]["rejected"], poisoned);
    assert!(service.terminate(Duration::from_secs(30)));

    let (seen, problems) = read_dead_letters(&config, poisoned);
    assert!(problems.is_empty(), "bad dead letters: {problems:#?}");
    for (index, kind) in poison::KINDS.iter().enumerate() {
        assert_eq!(seen[index], counts[index], "dead letters of kind {index} ({})", kind.name);
    }
    assert_digest_equals_replay(&config, &valid, &context);
}

/// Reads `expected` dead letters; returns the count per poison kind and every header problem.
fn read_dead_letters(config: &Config, expected: u64) -> ([u64; 30], Vec<String>) {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", infra::unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[&config.kafka.dead_letter_topic]).unwrap();
    let (mut seen, mut problems) = ([0u64; 30], Vec::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.iter().sum::<u64>() + (problems.len() as u64) < expected {
        assert!(Instant::now() < deadline, "only {seen:?} dead letters within 60 s");
        let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = message.unwrap();
        let header = |name: &str| {
            message.headers().and_then(|headers| {
                headers.iter().find(|header| header.key == name).and_then(|header| header.value)
            })
        };
        let text = |name: &str| header(name).map(|value| String::from_utf8_lossy(value));
        let Some(kind) = message.key().and_then(poison::kind_of_key) else {
            problems.push(format!("not a poison record: key {:?}", message.key()));
            continue;
        };
        let want = poison::KINDS[kind].reason;
        if text("reason").as_deref() != Some(want)
            || text("error").is_none_or(|error| error.is_empty())
            || text("source_topic").as_deref() != Some(config.kafka.topic.as_str())
            || ["source_partition", "source_offset", "source_timestamp"]
                .iter()
                .any(|name| header(name).is_none())
        {
            problems.push(format!(
                "kind {kind} ({}): want reason {want}, headers reason={:?} error={:?}",
                poison::KINDS[kind].name,
                text("reason"),
                text("error")
            ));
            continue;
        }
        seen[kind] += 1;
    }
    (seen, problems)
}

#[test]
fn kill_minus_nine_five_times_during_ingest_gives_the_uninterrupted_digest() {
    let name = infra::unique("fault-kill");
    let config = infra::test_config(&name);
    infra::create_topics(&[(&config.kafka.topic, 4), (&config.kafka.dead_letter_topic, 1)]);
    let records = infra::movielens_records();
    infra::produce(&config, &records);

    let slow = [("EMBEDSTREAM_INGEST__MAX_POLL_RECORDS", "200")];
    for threshold in [1u64, 15_000, 35_000, 55_000, 75_000] {
        let mut service = ServiceProcess::spawn(&config, &slow);
        wait_stored(&config, &mut service, threshold, Duration::from_secs(90));
        service.kill();
        wait_for_ghost_to_leave(&config);
    }
    assert!(stored_applied(&config) < records.len() as u64, "the last kill was mid-ingest");

    let mut service = ServiceProcess::spawn(&config, &[]);
    service.wait_caught_up(records.len() as u64, Duration::from_secs(120));
    let context = diagnostics(&service);
    service.kill();
    assert_digest_equals_replay(&config, &records, &context);
}

/// The state of breaker `name` in a `/readyz` body: an object under any key named `name`
/// with a `state`, or a string value, anywhere in the document.
fn breaker_in_readyz(body: &Value, name: &str) -> Option<String> {
    match body {
        Value::Object(map) => map.iter().find_map(|(key, value)| {
            let direct = match value {
                Value::String(state) if key == name => Some(state.clone()),
                Value::Object(inner) if key == name => {
                    inner.get("state").and_then(Value::as_str).map(str::to_owned)
                }
                _ => None,
            };
            direct.or_else(|| breaker_in_readyz(value, name))
        }),
        Value::Array(values) => values.iter().find_map(|value| breaker_in_readyz(value, name)),
        _ => None,
    }
}

#[test]
fn a_redis_that_never_answers_times_out_opens_the_breaker_and_hangs_nothing() {
    let name = infra::unique("fault-mute");
    let mut config = infra::test_config(&name);
    config.store.url = format!("redis://127.0.0.1:{}/", faults::mute_redis());
    infra::create_topics(&[(&config.kafka.topic, 4), (&config.kafka.dead_letter_topic, 1)]);
    infra::produce(&config, &infra::movielens_records()[..1_000]);
    let (connect_ms, command_ms) = (500u64, 500u64);
    let bound = Duration::from_millis(connect_ms + command_ms + 1_000);
    let mut service = ServiceProcess::spawn(
        &config,
        &[
            ("EMBEDSTREAM_STORE__CONNECT_TIMEOUT_MS", &connect_ms.to_string()),
            ("EMBEDSTREAM_STORE__COMMAND_TIMEOUT_MS", &command_ms.to_string()),
            ("EMBEDSTREAM_STORE__BREAKER__OPEN_MS", "60000"),
        ],
    );

    service.wait_listening(Duration::from_secs(15));
    // Every contract point is checked, and every broken one reported, in one run.
    let mut problems = Vec::new();
    let ready = common::http::get(&service.url("/readyz"), bound + Duration::from_secs(10));
    match &ready {
        Some(ready) if ready.elapsed <= bound && ready.json.get("ingest").is_some() => {}
        _ => problems.push(format!("/readyz slow or without detail (bound {bound:?}): {ready:?}")),
    }

    // A burst of concurrent calls: none waits behind the others for longer than one timeout.
    let burst: Vec<_> = (0..16)
        .map(|user| {
            let url = service.url(&format!("/v1/users/u-{user}/recommendations?k=5"));
            std::thread::spawn(move || common::http::get(&url, bound + Duration::from_secs(10)))
        })
        .collect();
    for (user, call) in burst.into_iter().enumerate() {
        match call.join().unwrap() {
            Some(reply)
                if reply.elapsed <= bound && (reply.status < 500 || reply.status == 503) => {}
            Some(reply) => problems.push(format!(
                "burst u-{user}: {} after {:?} (bound {bound:?})",
                reply.status, reply.elapsed
            )),
            None => problems.push(format!("burst u-{user}: no answer")),
        }
    }

    let open_series = "embedstream_circuit_breaker_state{breaker=\"redis\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut opened = false;
    while !opened && Instant::now() < deadline {
        let scraped = common::http::get(&service.url("/metrics"), bound);
        opened = scraped.is_some_and(|scraped| metric(&scraped.text, open_series) == Some(1.0));
        let _ = common::http::get(&service.url("/v1/users/u-1/recommendations?k=5"), bound);
        std::thread::sleep(Duration::from_millis(200));
    }
    if opened {
        let ready = get_within(&service.url("/readyz"), bound);
        if breaker_in_readyz(&ready.json, "redis").as_deref() != Some("open") {
            problems.push(format!("/readyz does not show the redis breaker open: {}", ready.text));
        }
        // An open breaker refuses without I/O: answers come at once, not after a timeout.
        let fast = get_within(&service.url("/v1/users/u-2/recommendations?k=5"), bound);
        if fast.elapsed > Duration::from_millis(250) {
            problems.push(format!("with the breaker open a call still took {:?}", fast.elapsed));
        }
    } else {
        problems.push(format!("{open_series} never 1 within 20 s"));
    }
    assert!(problems.is_empty(), "a mute Redis: {problems:#?}");
    service.assert_running();
}

#[test]
fn redis_down_for_twenty_seconds_mid_ingest_serves_stale_and_applies_everything_once() {
    let name = infra::unique("fault-redis");
    let mut redis = OwnRedis::start(&name);
    let mut config = infra::test_config(&name);
    config.store.url = redis.url();
    infra::create_topics(&[(&config.kafka.topic, 4), (&config.kafka.dead_letter_topic, 1)]);
    let records = infra::movielens_records();
    infra::produce(&config, &records);
    let bound = Duration::from_millis(500 + 500 + 1_000);
    let mut service = ServiceProcess::spawn(
        &config,
        &[
            ("EMBEDSTREAM_INGEST__MAX_POLL_RECORDS", "200"),
            ("EMBEDSTREAM_STORE__CONNECT_TIMEOUT_MS", "500"),
            ("EMBEDSTREAM_STORE__COMMAND_TIMEOUT_MS", "500"),
            ("EMBEDSTREAM_STORE__BREAKER__OPEN_MS", "1000"),
        ],
    );
    wait_stored(&config, &mut service, 20_000, Duration::from_secs(90));
    // The first user in event time has been applied by now.
    let user = String::from_utf8(records[0].key.clone().unwrap()).unwrap();
    let recommendations = service.url(&format!("/v1/users/{user}/recommendations?k=10"));
    let before = get_within(&recommendations, bound);
    assert_eq!(before.status, 200, "{}", before.text);
    let rss_before = rss_kib(service.pid());

    redis.kill();
    let outage = Instant::now();
    let (mut rss_max, mut problems) = (rss_before, Vec::new());
    while outage.elapsed() < Duration::from_secs(20) {
        service.assert_running();
        rss_max = rss_max.max(rss_kib(service.pid()));
        let at = outage.elapsed();
        let reply = get_within(&recommendations, bound);
        let stale = reply.json["stale"] == true && reply.header("x-embedstream-stale").is_some();
        // Detection takes a failed call or two; after that every answer says it is stale.
        if reply.status != 200 || (at > Duration::from_secs(5) && !stale) {
            problems.push(format!("{at:.1?}: {} {:?} {}", reply.status, reply.headers, reply.text));
        }
        get_within(&service.url("/readyz"), bound);
        std::thread::sleep(Duration::from_millis(500));
    }
    redis.restart();
    assert!(problems.is_empty(), "answers during the outage: {problems:#?}");
    let rss_bound = rss_before + 256 * 1024;
    assert!(rss_max <= rss_bound, "RSS {rss_max} KiB during the outage, {rss_before} KiB before");

    service.wait_caught_up(records.len() as u64, Duration::from_secs(120));
    let after = get_within(&recommendations, bound);
    let context = diagnostics(&service);
    assert!(after.status == 200 && after.json["stale"] != true, "{after:?}; {context}");
    assert!(service.terminate(Duration::from_secs(30)));
    assert_digest_equals_replay(&config, &records, &context);
}
