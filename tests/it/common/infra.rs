//! The real broker and Redis that `scripts/test.sh` starts, and an in-process service.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use embedstream::config::Config;
use embedstream::ingest::StartPosition;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde_json::Value;

/// Broker address from the test command; missing infrastructure is a failure, not a skip.
pub fn brokers() -> String {
    std::env::var("EMBEDSTREAM_TEST_BROKERS")
        .expect("EMBEDSTREAM_TEST_BROKERS is not set: run the tests with scripts/test.sh")
}

/// Redis URL from the test command.
pub fn redis_url() -> String {
    std::env::var("EMBEDSTREAM_TEST_REDIS")
        .expect("EMBEDSTREAM_TEST_REDIS is not set: run the tests with scripts/test.sh")
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    format!("{prefix}-{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Configuration for one test: its own topic, dead-letter topic, group and namespace, short
/// timers, on the test infrastructure.
pub fn test_config(name: &str) -> Config {
    let mut config = Config::default();
    config.kafka.brokers = brokers();
    config.kafka.topic = format!("{name}-events");
    config.kafka.dead_letter_topic = format!("{name}-dlq");
    config.kafka.group_id = format!("{name}-group");
    config.kafka.session_timeout_ms = 6000;
    config.store.url = redis_url();
    config.store.namespace = name.to_owned();
    config.window.idle_timeout_ms = 1000;
    config.ingest.flush_interval_ms = 200;
    config.http.listen = "127.0.0.1:0".to_owned();
    // The shared test Redis serves every test at once on two loaded cores: a request-path
    // budget of 50 ms would turn scheduling delays into fallbacks the tests do not expect.
    // hardening::a_frozen_redis_... runs with the default budget.
    config.http.redis_timeout_ms = 2000;
    super::auth::shared_keys().configure(&mut config);
    config
}

/// Creates topics (name, partitions) and waits until the broker knows them.
pub fn create_topics(topics: &[(&str, i32)]) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin: AdminClient<DefaultClientContext> =
            rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        let results = admin.create_topics(&new_topics, &AdminOptions::new()).await.unwrap();
        for result in results {
            result.unwrap();
        }
    });
}

/// Deletes topics and waits until the broker's metadata no longer lists them.
pub fn delete_topics(topics: &[&str]) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin: AdminClient<DefaultClientContext> =
            rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
        for result in admin.delete_topics(topics, &AdminOptions::new()).await.unwrap() {
            result.unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let metadata =
                admin.inner().fetch_metadata(None, std::time::Duration::from_secs(5)).unwrap();
            if !metadata.topics().iter().any(|topic| topics.contains(&topic.name())) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "topics {topics:?} still listed");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
}

/// A service running in-process on its own runtime.
pub struct Service {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    pub fn start(config: Config, start: StartPosition) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&config.http.listen).await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let shutdown = async move {
                    let _ = stop_rx.await;
                };
                embedstream::app::run(config, start, listener, shutdown).await.unwrap();
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        Self { addr, stop: Some(stop_tx), thread: Some(thread) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the service (final flush included) and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// GET with the tests' service token, returning status and JSON body.
pub fn get_json(url: &str) -> (u16, Value) {
    let mut response =
        agent().get(url).header("authorization", super::auth::bearer()).call().unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_json().unwrap())
}

/// POST a JSON body with the tests' service token, returning status and JSON body.
pub fn post_json(url: &str, body: &Value) -> (u16, Value) {
    let mut response =
        agent().post(url).header("authorization", super::auth::bearer()).send_json(body).unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_json().unwrap())
}

/// Polls `/readyz` until the ingest reports caught up with `applied` at least `min_applied`.
pub fn wait_caught_up(base: &str, min_applied: u64, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let last = agent()
            .get(&format!("{base}/readyz"))
            .call()
            .ok()
            .and_then(|mut response| response.body_mut().read_json::<Value>().ok());
        if let Some(body) = &last {
            let ingest = &body["ingest"];
            if ingest["caught_up"] == true && ingest["applied"].as_u64() >= Some(min_applied) {
                return body.clone();
            }
        }
        assert!(Instant::now() < deadline, "not caught up within {timeout:?}: {last:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Publishes records with the library's producer.
pub fn produce(config: &Config, records: &[embedstream::source::Record]) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let summary = runtime
        .block_on(embedstream::produce::produce(
            records,
            &config.kafka,
            &config.kafka.topic,
            embedstream::produce::Pace::Unlimited,
            &indicatif::ProgressBar::hidden(),
        ))
        .unwrap();
    assert_eq!(summary.produced as usize, records.len());
    assert_eq!(summary.failed, 0);
}

/// MovieLens-100k as records, in publication order.
pub fn movielens_records() -> Vec<embedstream::source::Record> {
    embedstream::source::read_records(&super::movielens(), embedstream::source::Format::Movielens)
        .unwrap()
}

/// The digest `replay --partitions N` gives for these records under `config`.
pub fn replay_digest(
    config: &Config,
    records: &[embedstream::source::Record],
    partitions: i32,
) -> String {
    let (summary, _) =
        embedstream::replay::replay(records, config, partitions, &indicatif::ProgressBar::hidden())
            .unwrap();
    summary.digest
}
