//! Processes the fault-injection tests start, break and restart themselves: the service binary,
//! a Redis of their own, a Redis that never answers, and a whole dev stack with a durable broker
//! (`scripts/dev-up.sh` with `EMBEDSTREAM_KAFKA_STORAGE=s3`). The shared Redis and broker of
//! `scripts/test.sh` are never stopped: other tests use them.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use embedstream::config::Config;

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Sends `signal` (e.g. "TERM", "KILL", "STOP") to `pid` with kill(1).
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
    assert!(status.unwrap().success(), "kill -{signal} {pid}");
}

/// Resident set size of `pid` in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Events applied according to the namespace's stored meta (0 before the first flush or when
/// Redis does not answer).
pub fn stored_applied(config: &Config) -> u64 {
    embedstream::store::SyncStore::new(&config.store)
        .ok()
        .and_then(|mut store| store.load_meta().ok().flatten())
        .map_or(0, |meta| meta.events_applied)
}

/// `embedstream run` as a child process (so it can be SIGKILLed and its RSS read), configured
/// from `config` through `EMBEDSTREAM_*` variables, HTTP on a free loopback port.
pub struct ServiceProcess {
    pub child: Child,
    pub port: u16,
}

impl ServiceProcess {
    pub fn spawn(config: &Config, extra: &[(&str, &str)]) -> Self {
        Self::spawn_with(config, extra, Stdio::inherit())
    }

    /// As [`ServiceProcess::spawn`], with the child's stderr going to `stderr`.
    pub fn spawn_with(config: &Config, extra: &[(&str, &str)], stderr: Stdio) -> Self {
        let port = free_port();
        let child = Command::new(super::embedstream_bin())
            .args(["run", "--listen", &format!("127.0.0.1:{port}")])
            .env("EMBEDSTREAM_KAFKA__BROKERS", &config.kafka.brokers)
            .env("EMBEDSTREAM_KAFKA__TOPIC", &config.kafka.topic)
            .env("EMBEDSTREAM_KAFKA__DEAD_LETTER_TOPIC", &config.kafka.dead_letter_topic)
            .env("EMBEDSTREAM_KAFKA__GROUP_ID", &config.kafka.group_id)
            .env(
                "EMBEDSTREAM_KAFKA__SESSION_TIMEOUT_MS",
                config.kafka.session_timeout_ms.to_string(),
            )
            .env("EMBEDSTREAM_STORE__URL", &config.store.url)
            .env("EMBEDSTREAM_STORE__CLUSTER", config.store.cluster.to_string())
            .env("EMBEDSTREAM_STORE__NAMESPACE", &config.store.namespace)
            .envs(super::auth::service_env(config))
            .env("EMBEDSTREAM_WINDOW__IDLE_TIMEOUT_MS", config.window.idle_timeout_ms.to_string())
            .env("EMBEDSTREAM_INGEST__FLUSH_INTERVAL_MS", "100")
            .env("RUST_LOG", std::env::var("EMBEDSTREAM_FAULT_LOG").unwrap_or("warn".to_owned()))
            .envs(extra.iter().copied())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Self { child, port }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    pub fn assert_running(&mut self) {
        let exited = self.child.try_wait().unwrap();
        assert!(exited.is_none(), "the service exited: {exited:?}");
    }

    /// Waits for the service to exit by itself, polling every `poll`; fails the test with
    /// `what` when it still runs after `timeout`.
    pub fn wait_exit(
        &mut self,
        timeout: Duration,
        poll: Duration,
        what: &str,
    ) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(poll);
        }
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        self.child.wait().unwrap();
    }

    /// SIGTERM (final flush, leave the group) and wait up to `timeout`, then SIGKILL.
    pub fn terminate(mut self, timeout: Duration) -> bool {
        signal(self.pid(), "TERM");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().unwrap();
        false
    }

    /// `infra::wait_caught_up`, failing at once if the service exits.
    pub fn wait_caught_up(&mut self, min_applied: u64, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            let reply = super::http::get(&self.url("/readyz"), Duration::from_secs(5));
            if let Some(body) = reply.as_ref().map(|reply| &reply.json) {
                let ingest = &body["ingest"];
                if ingest["caught_up"] == true && ingest["applied"].as_u64() >= Some(min_applied) {
                    return body.clone();
                }
            }
            let last = reply.map(|reply| reply.text);
            assert!(Instant::now() < deadline, "not caught up within {timeout:?}: {last:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until `/healthz` answers 200.
    pub fn wait_listening(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            if super::http::get(&self.url("/healthz"), Duration::from_secs(2))
                .is_some_and(|reply| reply.status == 200)
            {
                return;
            }
            assert!(Instant::now() < deadline, "/healthz not 200 within {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A crashed member stays in the group until its session times out; restarting before that
/// would split the partitions with a ghost, and a split changes the interleaving of windows
/// (still exactly once, but not the same digest as one member).
pub fn wait_for_ghost_to_leave(config: &Config) {
    std::thread::sleep(Duration::from_millis(config.kafka.session_timeout_ms + 1500));
}

/// A redis-server of the test's own on a free port, append-only file fsynced on every write, so
/// that a SIGKILL loses nothing acknowledged and a restart on the same directory has it all.
pub struct OwnRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start(name: &str) -> Self {
        let dir = root().join(format!(".dev-fault-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self { port: free_port(), dir, child: None };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's process id, for SIGSTOP and SIGCONT.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis is running").id()
    }

    /// Starts redis-server (again) on the same port and directory and waits for PONG.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis is already running");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/dev-up.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ping(self.port) {
            assert!(Instant::now() < deadline, "redis on {} never answered PING", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, delete its data, start again: a Redis restarted without persistence.
    pub fn restart_empty(&mut self, down: Duration) {
        self.kill();
        std::fs::remove_dir_all(&self.dir).unwrap();
        std::fs::create_dir_all(&self.dir).unwrap();
        std::thread::sleep(down);
        self.restart();
    }

    /// SIGSTOP: the server keeps its port and its kernel accepts connections and buffers
    /// requests, but nothing answers until [`OwnRedis::thaw`].
    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT after [`OwnRedis::freeze`].
    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    /// SIGKILL: the server is gone at once, connections are reset.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait().unwrap();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of the test's own: three masters (Debian's redis-server with
/// `--cluster-enabled yes`) on free ports, slots spread by `redis-cli --cluster create`, no
/// replicas, no persistence.
pub struct OwnRedisCluster {
    pub ports: Vec<u16>,
    dir: PathBuf,
    children: Vec<Child>,
}

impl OwnRedisCluster {
    pub fn start(name: &str) -> Self {
        let dir = root().join(format!(".dev-fault-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cluster = Self { ports: Vec::new(), dir, children: Vec::new() };
        for _ in 0..3 {
            let port = cluster_node_port();
            let node_dir = cluster.dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server is installed (scripts/dev-up.sh installs it)");
            cluster.children.push(child);
            cluster.ports.push(port);
        }
        for port in &cluster.ports {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !ping(*port) {
                assert!(Instant::now() < deadline, "redis on {port} never answered PING");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let nodes: Vec<String> =
            cluster.ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli is installed");
        assert!(status.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.ports.iter().all(|port| cluster.info(*port).contains("cluster_state:ok")) {
            assert!(Instant::now() < deadline, "the cluster never reached cluster_state:ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// The seed nodes, as `store.url` takes them with `store.cluster`.
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}/"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn connection(port: u16) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }

    fn info(&self, port: u16) -> String {
        redis::cmd("CLUSTER").arg("INFO").query(&mut Self::connection(port)).unwrap_or_default()
    }

    fn node_id(port: u16) -> String {
        redis::cmd("CLUSTER").arg("MYID").query(&mut Self::connection(port)).unwrap()
    }

    /// The port of the master that owns `slot`.
    pub fn owner(&self, slot: u16) -> u16 {
        let ranges: Vec<(u16, u16, (String, u16))> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query::<Vec<redis::Value>>(&mut Self::connection(self.ports[0]))
            .unwrap()
            .into_iter()
            .map(|range| {
                let fields: Vec<redis::Value> = redis::from_redis_value(range).unwrap();
                let start: u16 = redis::from_redis_value_ref(&fields[0]).unwrap();
                let end: u16 = redis::from_redis_value_ref(&fields[1]).unwrap();
                let node: Vec<redis::Value> = redis::from_redis_value_ref(&fields[2]).unwrap();
                let host: String = redis::from_redis_value_ref(&node[0]).unwrap();
                let port: u16 = redis::from_redis_value_ref(&node[1]).unwrap();
                (start, end, (host, port))
            })
            .collect();
        ranges
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .expect("slot covered")
            .2
             .1
    }

    /// Moves `slot` to the master on port `to` while clients keep writing, the way
    /// `redis-cli --cluster reshard` does: IMPORTING on the target, MIGRATING on the source,
    /// `MIGRATE` its keys `batch` at a time (clients meanwhile get `ASK` for keys already moved
    /// and `TRYAGAIN` for commands whose keys are split), then the slot's new owner announced
    /// to every master. Returns the number of keys moved.
    pub fn migrate_slot(&self, slot: u16, to: u16, batch: usize) -> usize {
        let from = self.owner(slot);
        assert_ne!(from, to, "slot {slot} is already on {to}");
        let (from_id, to_id) = (Self::node_id(from), Self::node_id(to));
        let (mut source, mut target) = (Self::connection(from), Self::connection(to));
        let () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&from_id)
            .query(&mut target)
            .unwrap();
        let () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&to_id)
            .query(&mut source)
            .unwrap();
        let mut moved = 0;
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(batch)
                .query(&mut source)
                .unwrap();
            if keys.is_empty() {
                break;
            }
            let () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(10_000)
                .arg("KEYS")
                .arg(&keys)
                .query(&mut source)
                .unwrap();
            moved += keys.len();
            std::thread::sleep(Duration::from_millis(2));
        }
        for port in [to, from] {
            let () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&to_id)
                .query(&mut Self::connection(port))
                .unwrap();
        }
        for port in &self.ports {
            if *port != to && *port != from {
                let () = redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("NODE")
                    .arg(&to_id)
                    .query(&mut Self::connection(*port))
                    .unwrap();
            }
        }
        moved
    }
}

/// A free port for a cluster node whose bus port (port + 10000, which Redis Cluster opens
/// too) is valid and free as well: an ephemeral port from the kernel may be above 55535.
fn cluster_node_port() -> u16 {
    loop {
        let Ok(listener) = TcpListener::bind("127.0.0.1:0") else { continue };
        let port = listener.local_addr().unwrap().port();
        if port > 55_535 {
            // Try the range below instead: a port picked at random there, checked free.
            let candidate = 20_000 + port % 30_000;
            if TcpListener::bind(("127.0.0.1", candidate)).is_ok()
                && TcpListener::bind(("127.0.0.1", candidate + 10_000)).is_ok()
            {
                return candidate;
            }
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl Drop for OwnRedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ping(port: u16) -> bool {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(500)))
        .and_then(|mut connection| redis::cmd("PING").query::<String>(&mut connection))
        .is_ok()
}

/// A Redis of the test's own, a configuration pointing at it, and a 4-partition topic holding
/// MovieLens-100k (returned too, for replay digests).
pub fn movielens_on_own_redis(
    prefix: &str,
) -> (OwnRedis, Config, Vec<embedstream::source::Record>) {
    let name = super::infra::unique(prefix);
    let redis = OwnRedis::start(&name);
    let mut config = super::infra::test_config(&name);
    config.store.url = redis.url();
    super::infra::create_topics(&[(&config.kafka.topic, 4), (&config.kafka.dead_letter_topic, 1)]);
    let records = super::infra::movielens_records();
    super::infra::produce(&config, &records);
    (redis, config, records)
}

/// A "Redis" that accepts connections and reads whatever it is sent, but never writes a byte.
/// Its threads live as long as the test process.
pub fn mute_redis() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink), Ok(read) if read > 0) {}
            });
        }
    });
    port
}

/// A whole dev stack of the test's own (`scripts/dev-up.sh` in `.dev-fault-NAME/`, ports of its
/// own), with the broker's storage in moto's S3 so that the broker survives a restart.
pub struct DurableStack {
    pub redis_port: u16,
    pub kafka_port: u16,
    env: Vec<(String, String)>,
    dir: PathBuf,
}

impl DurableStack {
    pub fn up(name: &str) -> Self {
        let dir = root().join(format!(".dev-fault-{name}"));
        let (redis_port, kafka_port, s3_port) = (free_port(), free_port(), free_port());
        let env = vec![
            ("EMBEDSTREAM_DEV_DIR".to_owned(), dir.display().to_string()),
            ("EMBEDSTREAM_REDIS_PORT".to_owned(), redis_port.to_string()),
            ("EMBEDSTREAM_KAFKA_PORT".to_owned(), kafka_port.to_string()),
            ("EMBEDSTREAM_S3_PORT".to_owned(), s3_port.to_string()),
            ("EMBEDSTREAM_KAFKA_STORAGE".to_owned(), "s3".to_owned()),
        ];
        let stack = Self { redis_port, kafka_port, env, dir };
        stack.script("dev-up.sh", &[]);
        stack
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.redis_port)
    }

    /// SIGKILL the broker, keep it down `down`, start it again with the same arguments and wait
    /// until it serves metadata (`scripts/dev-restart-broker.sh`).
    pub fn restart_broker(&self, down: Duration) {
        self.script("dev-restart-broker.sh", &[&format!("{:.1}", down.as_secs_f64())]);
    }

    fn script(&self, name: &str, args: &[&str]) {
        let output = Command::new(root().join("scripts").join(name))
            .args(args)
            .envs(self.env.iter().map(|(key, value)| (key.as_str(), value.as_str())))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "scripts/{name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for DurableStack {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/dev-down.sh"))
            .envs(self.env.iter().map(|(key, value)| (key.as_str(), value.as_str())))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates topics (name, partitions) on `brokers` (infra::create_topics is for the shared
/// broker).
pub fn create_topics_on(brokers: &str, topics: &[(&str, i32)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        for result in admin.create_topics(&new_topics, &AdminOptions::new()).await.unwrap() {
            result.unwrap();
        }
    });
}

/// A TCP proxy in front of a Redis that, once, holds every reply for `hold` right after it
/// forwarded the `nth` `EXEC` (all connections counted): the transaction runs, its answer comes
/// after the client's deadline, as when Redis freezes between `EXEC` and its reply.
pub struct ReplyHoldingProxy {
    pub port: u16,
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
    execs: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ReplyHoldingProxy {
    pub fn start(upstream: std::net::SocketAddr, nth: usize, hold: Duration) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = Arc::new(AtomicBool::new(false));
        let execs = Arc::new(AtomicUsize::new(0));
        let until: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let held_flag = Arc::clone(&held);
        let execs_seen = Arc::clone(&execs);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(upstream) else { continue };
                let (mut from_client, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut from_server, mut to_client) = (server, client);
                let (execs, until_in, held) =
                    (Arc::clone(&execs), Arc::clone(&until), Arc::clone(&held_flag));
                std::thread::spawn(move || {
                    use std::io::Write;
                    let mut buffer = [0u8; 65536];
                    while let Ok(read) = from_client.read(&mut buffer) {
                        if read == 0 || to_server.write_all(&buffer[..read]).is_err() {
                            break;
                        }
                        let chunk = &buffer[..read];
                        let seen = chunk.windows(10).filter(|w| *w == b"$4\r\nEXEC\r\n").count();
                        if seen > 0
                            && execs.fetch_add(seen, Ordering::SeqCst) + seen >= nth
                            && !held.swap(true, Ordering::SeqCst)
                        {
                            *until_in.lock().unwrap() = Some(Instant::now() + hold);
                        }
                    }
                    let _ = to_server.shutdown(std::net::Shutdown::Both);
                });
                let until_out = Arc::clone(&until);
                std::thread::spawn(move || {
                    use std::io::Write;
                    let mut buffer = [0u8; 65536];
                    while let Ok(read) = from_server.read(&mut buffer) {
                        if read == 0 {
                            break;
                        }
                        let wait = until_out
                            .lock()
                            .unwrap()
                            .and_then(|at| at.checked_duration_since(Instant::now()));
                        if let Some(wait) = wait {
                            std::thread::sleep(wait);
                        }
                        if to_client.write_all(&buffer[..read]).is_err() {
                            break;
                        }
                    }
                    let _ = to_client.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Self { port, held, execs: execs_seen }
    }

    /// `EXEC`s seen so far.
    pub fn execs(&self) -> usize {
        self.execs.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Whether it has held the replies.
    pub fn held(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }
}
