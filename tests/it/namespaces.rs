//! Issue 11, item 3: namespace aliases. A service follows an alias; a headless rebuild fills
//! a second namespace with another model; `embedstream namespace switch` moves the alias while
//! requests flow, and every answer comes whole from one namespace, the old one before the
//! switch and the new one after, and the live stream goes on into the new one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embedstream::ingest::StartPosition;
use embedstream::model::Model;
use embedstream::source::Record;
use serde_json::{json, Value};

use crate::common::http::metric;
use crate::common::infra::{
    create_topics, get_json, produce, test_config, unique, wait_caught_up, Service,
};
use crate::common::{embedstream_bin, run_json};

const USERS: i64 = 20;
const ITEMS: i64 = 60;

fn records(from: i64, count: i64, start_ms: i64) -> Vec<Record> {
    (from..from + count)
        .map(|n| {
            let user = format!("u{}", n % USERS);
            let item = format!("i{}", (n * 7 + n / USERS) % ITEMS);
            let ts = start_ms + n * 1_000;
            let event = json!({"event_id": format!("e{n}"), "user_id": user,
                "item_id": item, "event_type": "click", "ts": ts});
            Record {
                key: Some(user.into_bytes()),
                value: serde_json::to_vec(&event).unwrap(),
                line: 1,
                ts: Some(ts),
            }
        })
        .collect()
}

fn cli_env(url: &str) -> [(&str, &str); 1] {
    [("EMBEDSTREAM_STORE__URL", url)]
}

/// The CLI's exit status and stderr, for the commands that must be refused.
fn cli_refused(args: &[&str], url: &str) -> String {
    let output = std::process::Command::new(embedstream_bin())
        .args(args)
        .envs(cli_env(url))
        .output()
        .expect("embedstream runs");
    assert!(!output.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

struct Answer {
    namespace: String,
    user: String,
    items: Vec<(String, f32)>,
}

fn rank(base: &str, user: &str) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent
        .get(format!("{base}/v1/users/{user}/recommendations?k=5"))
        .header("authorization", crate::common::auth::bearer())
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let namespace = response
        .headers()
        .get("x-embedstream-namespace")
        .expect("the namespace header")
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.body_mut().read_json().unwrap();
    assert_eq!(body["source"], "model", "{body}");
    let items = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (item["item_id"].as_str().unwrap().to_owned(), item["score"].as_f64().unwrap() as f32)
        })
        .collect();
    Answer { namespace, user: user.to_owned(), items }
}

fn score(model: &Model, user: &str, item: &str) -> f32 {
    model.score(model.user_row(user).unwrap(), model.item_row(item).unwrap())
}

#[test]
fn a_rebuild_then_a_switch_while_requests_flow_serves_each_namespace_whole() {
    let name = unique("alias");
    let v1 = format!("{name}-v1");
    let v2 = format!("{name}-v2");
    let alias = format!("{name}-live");
    let mut config = test_config(&v1);
    config.kafka.topic = format!("{name}-events");
    config.kafka.dead_letter_topic = format!("{name}-dlq");
    config.store.alias = alias.clone();
    config.store.alias_poll_ms = 200;
    create_topics(&[(&config.kafka.topic, 1), (&config.kafka.dead_letter_topic, 1)]);
    let start_ms = embedstream::ingest::wall_ms() - 3_600_000;
    produce(&config, &records(0, 2_000, start_ms));

    // The alias does not exist yet: the service creates it pointing at its namespace, v1.
    let service = Service::start(config.clone(), StartPosition::Earliest);
    let ready = wait_caught_up(&service.url(""), 2_000, Duration::from_secs(120));
    assert_eq!(ready["namespace"], v1.as_str(), "{ready}");
    let url = config.store.url.clone();
    let listed = run_json(&["namespace", "list"], &cli_env(&url));
    assert_eq!(listed["aliases"][&alias], v1.as_str(), "{listed}");

    // A rebuild of the same topic into v2 with another model seed: same events, other vectors.
    let mut rebuild = config.clone();
    rebuild.store.namespace = v2.clone();
    rebuild.store.alias = String::new();
    rebuild.kafka.group_id = format!("{name}-rebuild");
    rebuild.model.seed += 1;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let summary = runtime
        .block_on(embedstream::app::rebuild(rebuild.clone(), StartPosition::Earliest, |_, _| {}))
        .unwrap();
    assert!(summary.verified);
    assert_eq!(summary.events_applied, 2_000);
    let inspected = run_json(&["namespace", "inspect", &v2], &cli_env(&url));
    assert_eq!(inspected["events_applied"], 2_000, "{inspected}");
    assert_eq!(inspected["users"], USERS, "{inspected}");
    assert_eq!(inspected["items"], ITEMS, "{inspected}");
    assert_eq!(inspected["aliases"], json!([]), "{inspected}");
    let refused = cli_refused(&["namespace", "switch", &alias, &format!("{name}-absent")], &url);
    assert!(refused.contains("holds no model"), "{refused}");

    // Requests flow from two clients while the alias moves.
    let answers = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|client| {
            let (answers, stop, base) = (Arc::clone(&answers), Arc::clone(&stop), service.url(""));
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut n = client;
                while !stop.load(Ordering::Relaxed) {
                    seen.push(rank(&base, &format!("u{}", n % USERS)));
                    n += 2;
                }
                answers.lock().unwrap().push(seen);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let switched = run_json(&["namespace", "switch", &alias, &v2], &cli_env(&url));
    assert_eq!(switched["previous"], v1.as_str(), "{switched}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while get_json(&service.url("/readyz")).1["namespace"] != v2.as_str() {
        assert!(Instant::now() < deadline, "no switch: {}", get_json(&service.url("/readyz")).1);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }

    // Every answer is one namespace's, whole: its scores are that namespace's model's.
    let stored = |namespace: &str| {
        let mut of = config.clone();
        of.store.namespace = namespace.to_owned();
        embedstream::app::load_stored_model(&of).unwrap()
    };
    let (m1, m2) = (stored(&v1), stored(&v2));
    assert!(
        (score(&m1, "u1", "i7") - score(&m2, "u1", "i7")).abs() > 1e-3,
        "the two namespaces must score apart for the test to see a mix"
    );
    let answers = answers.lock().unwrap();
    let (mut before, mut after) = (0, 0);
    for client in answers.iter() {
        let mut moved = false;
        for answer in client {
            let model = if answer.namespace == v1 {
                assert!(!moved, "an answer from v1 after one from v2");
                before += 1;
                &m1
            } else {
                assert_eq!(answer.namespace, v2);
                moved = true;
                after += 1;
                &m2
            };
            for (item, got) in &answer.items {
                let expected = score(model, &answer.user, item);
                assert!(
                    (got - expected).abs() <= 1e-4 * expected.abs().max(1.0),
                    "{} {} {item}: served {got}, {} scores {expected}",
                    answer.namespace,
                    answer.user,
                    answer.namespace
                );
            }
        }
    }
    assert!(before > 0 && after > 0, "{before} answers before the switch, {after} after");

    // The live stream goes on into v2; v1 stays as it was.
    produce(&config, &records(2_000, 100, start_ms));
    wait_caught_up(&service.url(""), 100, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v2_now = run_json(&["namespace", "inspect", &v2], &cli_env(&url));
        if v2_now["events_applied"] == 2_100 {
            break;
        }
        assert!(Instant::now() < deadline, "v2 did not get the live events: {v2_now}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let v1_now = run_json(&["namespace", "inspect", &v1], &cli_env(&url));
    assert_eq!(v1_now["events_applied"], 2_000, "{v1_now}");
    let metrics = ureq::get(service.url("/metrics")).call().unwrap().body_mut().read_to_string();
    let metrics = metrics.unwrap();
    let switches = "embedstream_namespace_switches_total{outcome=\"switched\"}";
    assert_eq!(metric(&metrics, switches), Some(1.0));
    service.stop();

    // Dropping: refused while aliased; the other one goes, and only it.
    let refused = cli_refused(&["namespace", "drop", &v2], &url);
    assert!(refused.contains("alias"), "{refused}");
    let dropped = run_json(&["namespace", "drop", &v1], &cli_env(&url));
    assert!(dropped["deleted_keys"].as_u64().unwrap() > 100, "{dropped}");
    cli_refused(&["namespace", "inspect", &v1], &url);
    let listed = run_json(&["namespace", "list"], &cli_env(&url));
    let names: Vec<&str> = listed["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["namespace"].as_str().unwrap())
        .collect();
    assert!(names.contains(&v2.as_str()) && !names.contains(&v1.as_str()), "{listed}");
    let v2_after = stored(&v2);
    assert_eq!(v2_after.events_applied(), 2_100);
    assert_eq!(v2_after.item_count(), ITEMS as usize);
}
