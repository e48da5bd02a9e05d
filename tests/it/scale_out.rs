//! Several `embedstream run` processes in one consumer group (issue 10), on a topic of 6
//! partitions fed while they run, on a three-master Redis Cluster: a fourth joins, the
//! namespace's hash slot migrates to another master, one instance is killed -9. Once caught
//! up, every event is applied exactly once to its user and to its item (the counts in Redis
//! equal the events' counts), and every surviving instance holds every item as Redis does.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::faults::{OwnRedisCluster, ServiceProcess};
use crate::common::infra;
use embedstream::store::SyncStore;

const DIM: usize = 64;

fn counts(records: &[embedstream::source::Record]) -> (HashMap<String, u64>, HashMap<String, u64>) {
    let (mut users, mut items) = (HashMap::new(), HashMap::new());
    for record in records {
        let event: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
        *users.entry(event["user_id"].as_str().unwrap().to_owned()).or_default() += 1;
        *items.entry(event["item_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    (users, items)
}

fn stored_item_events(store: &mut SyncStore) -> HashMap<String, u64> {
    store.load_items(DIM).unwrap().into_iter().map(|item| (item.id, item.events)).collect()
}

#[test]
fn instances_joining_and_killed_mid_stream_apply_every_event_once_to_users_and_items() {
    let name = infra::unique("scale");
    let mut config = infra::test_config(&name);
    let cluster = OwnRedisCluster::start(&name);
    config.store.url = cluster.url();
    config.store.cluster = true;
    let slot: u16 = {
        let seed = format!("redis://127.0.0.1:{}/", cluster.ports[0]);
        let mut connection = redis::Client::open(seed).unwrap().get_connection().unwrap();
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("{{{name}}}:meta"))
            .query(&mut connection)
            .unwrap()
    };
    infra::create_topics(&[(&config.kafka.topic, 6), (&config.kafka.dead_letter_topic, 1)]);
    let records = infra::movielens_records();
    let (expected_users, expected_items) = counts(&records);

    // Slow members (small polls), so that the stream is still running when one joins and one
    // dies.
    let slow = [("EMBEDSTREAM_INGEST__MAX_POLL_RECORDS", "100")];
    let mut members: Vec<ServiceProcess> =
        (0..3).map(|_| ServiceProcess::spawn(&config, &slow)).collect();
    let feeder = {
        let config = config.clone();
        let records = records.clone();
        std::thread::spawn(move || {
            for chunk in records.chunks(10_000) {
                infra::produce(&config, chunk);
                std::thread::sleep(Duration::from_millis(400));
            }
        })
    };
    let mut store = SyncStore::new(&config.store).unwrap();
    let wait_for_applied = |store: &mut SyncStore, at_least: u64| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while store.load_meta().ok().flatten().map_or(0, |meta| meta.events_applied) < at_least {
            assert!(Instant::now() < deadline, "never reached {at_least} events applied");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for_applied(&mut store, 20_000);
    members.push(ServiceProcess::spawn(&config, &slow));
    // The namespace's slot moves to another master while the members flush (ASK, TRYAGAIN,
    // then MOVED for every client).
    wait_for_applied(&mut store, 35_000);
    let from = cluster.owner(slot);
    let to = *cluster.ports.iter().find(|port| **port != from).unwrap();
    let moved = cluster.migrate_slot(slot, to, 10);
    assert!(moved > 1000, "only {moved} keys in the namespace's slot");
    assert_eq!(cluster.owner(slot), to);
    wait_for_applied(&mut store, 60_000);
    members.remove(1).kill();
    feeder.join().unwrap();

    // Everything applied once the dead member's partitions have moved (its session times out).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        for member in &mut members {
            member.assert_running();
        }
        let users: u64 = store
            .user_ids()
            .unwrap()
            .iter()
            .map(|user| store.load_user(user, DIM).unwrap().map_or(0, |state| state.events))
            .sum();
        let items: u64 = stored_item_events(&mut store).values().sum();
        let caught_up = members
            .iter()
            .all(|member| infra::get_json(&member.url("/readyz")).1["ingest"]["caught_up"] == true);
        if caught_up && users == 100_000 && items == 100_000 {
            break;
        }
        assert!(Instant::now() < deadline, "not settled: users {users} items {items}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Exactly once per user and per item, and the namespace's counter.
    for (user, count) in &expected_users {
        assert_eq!(store.load_user(user, DIM).unwrap().unwrap().events, *count, "user {user}");
    }
    let stored_items = store.load_items(DIM).unwrap();
    assert_eq!(stored_items.len(), expected_items.len());
    for item in &stored_items {
        assert_eq!(item.events, expected_items[&item.id], "item {}", item.id);
    }
    assert_eq!(store.load_meta().unwrap().unwrap().events_applied, 100_000);
    // The rows are a permutation of 0..n (a restore, and `digest`, read them in order).
    let mut rows: Vec<u32> = stored_items.iter().map(|item| item.row).collect();
    rows.sort_unstable();
    assert!(rows.iter().enumerate().all(|(index, row)| *row as usize == index));
    embedstream::app::load_stored_model(&config).expect("the namespace restores");

    // Every instance ranks over every item, and holds each as Redis does once it has read the
    // change feed (a few feed intervals).
    std::thread::sleep(Duration::from_secs(2));
    for member in &members {
        for item in &stored_items {
            let (status, served) = infra::get_json(&member.url(&format!("/v1/items/{}", item.id)));
            assert_eq!(status, 200, "{} lacks item {}", member.base(), item.id);
            assert_eq!(served["events"], item.events, "{} item {}", member.base(), item.id);
            let vector: Vec<f64> = serde_json::from_value(served["vector"].clone()).unwrap();
            for (served, stored) in vector.iter().zip(&item.vector) {
                assert!(
                    (served - f64::from(*stored)).abs() <= 1e-5,
                    "{} item {}: {served} against {stored} in redis",
                    member.base(),
                    item.id
                );
            }
        }
    }
    for member in members {
        member.kill();
    }
}

/// Two instances with different model configurations cannot share a namespace, also when it
/// is new (no flush has written the configuration yet): the first claims it at start, the
/// second is refused and exits, instead of writing item vectors of another dimension.
#[test]
fn an_instance_with_another_model_configuration_is_refused_on_a_new_namespace() {
    let name = infra::unique("claim");
    let config = infra::test_config(&name);
    infra::create_topics(&[(&config.kafka.topic, 2), (&config.kafka.dead_letter_topic, 1)]);
    let mut first = ServiceProcess::spawn(&config, &[]);
    let mut store = SyncStore::new(&config.store).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.load_meta().unwrap().is_none() {
        first.assert_running();
        assert!(Instant::now() < deadline, "the first instance never claimed the namespace");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(store.load_meta().unwrap().unwrap().dim, 64);
    let mut other = ServiceProcess::spawn(&config, &[("EMBEDSTREAM_MODEL__DIM", "32")]);
    let status = other.wait_exit(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "an instance of another dimension kept running",
    );
    assert!(!status.success());
    first.assert_running();
    first.kill();
}
