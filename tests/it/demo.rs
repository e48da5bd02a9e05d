//! Issue 11, item 7: the demo page, driven in headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `scripts/test.sh`) through WebDriver with fantoccini. A
//! person signs in, sees a top 10 with MovieLens titles, clicks "like", and the list follows
//! once the event went through HTTP ingestion, Kafka and the fold. A screenshot is saved under
//! the test's output directory (`target/tmp/demo/`).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use embedstream::ingest::StartPosition;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::common::infra::{
    create_topics, get_json, movielens_records, produce, test_config, unique, wait_caught_up,
    Service,
};

/// chromedriver on a free port, stopped on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let binary = std::env::var("EMBEDSTREAM_CHROMEDRIVER")
            .unwrap_or_else(|_| "/usr/bin/chromedriver".to_owned());
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "{binary} does not start ({error}): scripts/test.sh installs chromium-driver"
                )
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let chromium =
        std::env::var("EMBEDSTREAM_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    // No sandbox (tests may run as root); no background networking, which this machine's
    // closed network would refuse at every start.
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,900",
        &format!("--user-data-dir={}", profile.display()),
    ];
    let mut capabilities = serde_json::Map::new();
    capabilities
        .insert("goog:chromeOptions".to_owned(), json!({ "binary": chromium, "args": args }));
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session through chromedriver")
}

async fn listed(client: &Client) -> Vec<String> {
    let ids = client
        .execute(
            "return [...document.querySelectorAll('#items tr')].map(r => r.dataset.itemId)",
            vec![],
        )
        .await
        .unwrap();
    ids.as_array().unwrap().iter().map(|id| id.as_str().unwrap_or_default().to_owned()).collect()
}

async fn text(client: &Client, css: &str) -> String {
    client.find(Locator::Css(css)).await.unwrap().text().await.unwrap()
}

fn output_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_demo_page_shows_titles_and_follows_a_like_in_chromium() {
    let name = unique("demo");
    let mut config = test_config(&name);
    config.http.demo = true;
    config.http.demo_titles_path =
        crate::common::movielens().with_file_name("ml-100k.item").to_string_lossy().into_owned();
    create_topics(&[(&config.kafka.topic, 2), (&config.kafka.dead_letter_topic, 1)]);
    let records: Vec<_> = movielens_records().into_iter().take(20_000).collect();
    let user = String::from_utf8(records[0].key.clone().unwrap()).unwrap();
    produce(&config, &records);
    let service = Service::start(config.clone(), StartPosition::Earliest);
    wait_caught_up(&service.url(""), 20_000, Duration::from_secs(120));
    let user_url = service.url(&format!("/v1/users/{user}"));
    let events_before = get_json(&user_url).1["events"].as_u64().unwrap();
    let titles =
        embedstream::serve::load_titles(std::path::Path::new(&config.http.demo_titles_path))
            .unwrap();

    // The server validates sign-in whatever the page does.
    let (status, body) = crate::common::infra::post_json(
        &service.url("/demo/session"),
        &json!({ "user_id": "two words" }),
    );
    assert_eq!((status, body["error"]["code"].clone()), (400, json!("invalid_parameter")));

    let driver = Driver::start();
    let profile = tempdir(&name);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (liked, elapsed) = runtime.block_on(async {
        let client = browser(&driver, &profile).await;
        client.goto(&service.url("/demo")).await.unwrap();

        // The client validates first: a user id with a space never reaches the server.
        let input = client.find(Locator::Id("user")).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys("no such user").await.unwrap();
        client.find(Locator::Id("signin-button")).await.unwrap().click().await.unwrap();
        assert!(text(&client, "#error").await.contains("without spaces"));

        input.clear().await.unwrap();
        input.send_keys(&user).await.unwrap();
        client.find(Locator::Id("signin-button")).await.unwrap().click().await.unwrap();
        client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css("#items tr"))
            .await
            .expect("the top 10 appears after sign-in");
        let before = listed(&client).await;
        assert_eq!(before.len(), 10, "{before:?}");
        assert_eq!(text(&client, "#meta-source").await, "model");
        assert!(!text(&client, "#meta-variant").await.is_empty());
        let first_title = text(&client, "#items tr:first-child td:nth-child(2)").await;
        assert_eq!(first_title, titles[&before[0]], "the title of item {}", before[0]);
        let stale = client.find(Locator::Id("stale")).await.unwrap();
        assert!(!stale.attr("class").await.unwrap().unwrap_or_default().contains("shown"));
        // The access token is an HTTP-only cookie: the page's script cannot read it.
        let cookies = client.execute("return document.cookie", vec![]).await.unwrap();
        assert!(!cookies.as_str().unwrap_or_default().contains("embedstream_access"));

        // Like the top item: it is marked at once, and leaves the list (seen items are
        // excluded) once the event went through HTTP ingestion, Kafka and the fold.
        let liked = before[0].clone();
        let started = Instant::now();
        client
            .find(Locator::Css("#items tr:first-child button.act-like"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let row = client.find(Locator::Css("#items tr:first-child")).await.unwrap();
        assert!(row.attr("class").await.unwrap().unwrap_or_default().contains("pending"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = listed(&client).await;
            if now.len() == 10 && !now.contains(&liked) {
                break;
            }
            assert!(Instant::now() < deadline, "the list did not follow the like: {now:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let elapsed = started.elapsed();
        let png = client.screenshot().await.unwrap();
        std::fs::write(output_dir().join("demo-after-like.png"), png).unwrap();

        // Redis reads off (the flag that forces the Redis-down path): the banner comes up.
        set_redis_reads(&config, &service, false);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !stale.attr("class").await.unwrap().unwrap_or_default().contains("shown") {
            assert!(Instant::now() < deadline, "no stale banner");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let png = client.screenshot().await.unwrap();
        std::fs::write(output_dir().join("demo-stale.png"), png).unwrap();
        client.close().await.unwrap();
        (liked, elapsed)
    });
    eprintln!("demo: the list followed the like of item {liked} after {elapsed:?}");

    // The like is in the user's state as the API reports it.
    let (status, state): (u16, Value) = get_json(&user_url);
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["events"].as_u64(), Some(events_before + 1), "{state}");
    service.stop();
    let _ = std::fs::remove_dir_all(&profile);
}

#[test]
fn the_demo_is_off_unless_configured() {
    let config = test_config(&unique("demo-off"));
    create_topics(&[(&config.kafka.topic, 1), (&config.kafka.dead_letter_topic, 1)]);
    let service = Service::start(config, StartPosition::Earliest);
    let (status, body) = get_json(&service.url("/demo"));
    assert_eq!((status, body["error"]["code"].clone()), (404, json!("unknown_route")));
    service.stop();
}

/// Turns the `redis_reads` flag on or off through `PUT /v1/admin/flags`.
fn set_redis_reads(config: &embedstream::config::Config, service: &Service, enabled: bool) {
    let admin = crate::common::auth::token(config, "ops", "admin");
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let url = service.url("/v1/admin/flags");
    let authorization = format!("Bearer {admin}");
    let mut current = agent.get(&url).header("authorization", &authorization).call().unwrap();
    let mut flags: Value = current.body_mut().read_json::<Value>().unwrap()["flags"].clone();
    flags["redis_reads"]["enabled"] = json!(enabled);
    let put = agent.put(&url).header("authorization", &authorization).send_json(&flags).unwrap();
    assert_eq!(put.status().as_u16(), 200);
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("embedstream-chromium-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
