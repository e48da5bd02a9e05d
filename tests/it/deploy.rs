//! Issue 11, items 1 and 2: the operator files under `deploy/` hold. `promtool` checks the
//! Prometheus configuration and alert rules and runs their unit tests; the Grafana dashboard is
//! a dashboard model whose panels all query the provisioned data source; every metric a panel
//! or an alert names is one the service really exports (checked against the `/metrics` of the
//! MovieLens service test, see [`check_exported`]); every pulled image of docker-compose.yml is pinned to a version.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(deploy("prometheus"))
        .output()
        .expect("promtool runs (scripts/test.sh installs Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn promtool_checks_the_config_and_rules_and_passes_their_unit_tests() {
    assert!(promtool(&["check", "rules", "alerts.yml"]).contains("SUCCESS: 5 rules found"));
    promtool(&["check", "config", "prometheus.yml"]);
    assert!(promtool(&["test", "rules", "alerts_test.yml"]).contains("SUCCESS"));
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(deploy("grafana/dashboards/embedstream.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_model_on_the_provisioned_data_source() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "embedstream");
    assert!(dashboard["title"].is_string());
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let provisioned =
        std::fs::read_to_string(deploy("grafana/provisioning/datasources/prometheus.yml")).unwrap();
    assert!(provisioned.contains("uid: prometheus") && provisioned.contains("type: prometheus"));
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 12, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "{title}: duplicate id");
        assert_eq!(panel["type"], "timeseries", "{title}");
        for field in ["x", "y", "w", "h"] {
            assert!(panel["gridPos"][field].is_u64(), "{title}: gridPos.{field}");
        }
        assert_eq!(panel["datasource"]["uid"], "prometheus", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert!(target["refId"].is_string(), "{title}");
            assert!(!target["expr"].as_str().unwrap().is_empty(), "{title}");
        }
    }
}

/// Metric names (`embedstream_*`, `process_*`) in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["embedstream_", "process_"] {
        for (start, _) in text.match_indices(prefix) {
            if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
                continue;
            }
            let end = text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(text.len(), |offset| start + offset);
            names.insert(text[start..end].to_owned());
        }
    }
    names
}

/// Every metric the dashboard's queries and the alert rules name is a sample name in
/// `exported`, the text of a live service's `/metrics`.
pub fn check_exported(exported: &str) {
    let missing = missing_exported(exported);
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
}

/// The metrics the dashboard's queries and the alert rules name that `exported` lacks.
pub fn missing_exported(exported: &str) -> Vec<String> {
    let samples: BTreeSet<&str> = exported
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let mut queried = BTreeSet::new();
    for panel in dashboard()["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queried.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    let alerts = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    queried.extend(metric_names(&alerts));
    assert!(queried.len() >= 20, "{queried:?}");
    queried.into_iter().filter(|name| !samples.contains(name.as_str())).collect()
}

#[test]
fn the_metric_name_scanner_finds_names_and_only_names() {
    let names = metric_names(
        "sum by (le) (rate(embedstream_a_bucket{x=\"1\"}[5m])) / process_threads + my_embedstream_b",
    );
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["embedstream_a_bucket", "process_threads"]);
}

#[test]
fn every_compose_image_is_pinned_to_a_version() {
    let compose = std::fs::read_to_string(deploy("../docker-compose.yml")).unwrap();
    let images: Vec<&str> = compose
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("image:"))
        .map(str::trim)
        .collect();
    assert!(images.len() >= 5, "{images:?}");
    // embedstream:local is built from this repository (`build:`), not pulled.
    for image in images.into_iter().filter(|image| !image.starts_with("embedstream:")) {
        let (_, tag) = image.rsplit_once(':').unwrap_or_else(|| panic!("{image}: no tag"));
        assert!(tag.chars().next().is_some_and(|c| c.is_ascii_digit() || c == 'v'), "{image}");
        assert!(tag.contains('.'), "{image}: not a version");
    }
}

#[test]
fn the_compose_file_validates_against_the_compose_specification() {
    // check-jsonschema (PyPI) carries the Compose specification's schema as a builtin;
    // scripts/test.sh installs a pinned copy and names it in EMBEDSTREAM_CHECK_JSONSCHEMA.
    let tool = std::env::var("EMBEDSTREAM_CHECK_JSONSCHEMA").unwrap_or("check-jsonschema".into());
    let check = |path: &Path| {
        Command::new(&tool)
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(path)
            .output()
            .expect("check-jsonschema runs (scripts/test.sh installs it)")
    };
    let compose = deploy("../docker-compose.yml");
    let output = check(&compose);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    // And the check does reject a file that breaks the specification.
    let broken = std::env::temp_dir().join(format!("compose-{}.yml", std::process::id()));
    let text = std::fs::read_to_string(&compose).unwrap();
    std::fs::write(
        &broken,
        text.replace("    restart: \"no\"", "    restart: \"no\"\n    nonsense: 1"),
    )
    .unwrap();
    assert!(!check(&broken).status.success(), "an unknown service key must fail validation");
    std::fs::remove_file(broken).unwrap();
}

#[test]
fn auth_init_gives_the_service_keys_and_a_demo_client_that_gets_tokens() {
    use crate::common::faults::ServiceProcess;
    use crate::common::infra::{create_topics, test_config, unique};

    let dir = std::env::temp_dir().join(unique("auth-init"));
    let init = || {
        let output = Command::new("sh")
            .arg(deploy("auth-init.sh"))
            .env("EMBEDSTREAM_AUTH_DIR", &dir)
            .env("EMBEDSTREAM_BIN", crate::common::embedstream_bin())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let first = init();
    assert_eq!(init(), first, "a second run keeps the keys and the client");
    let secret = std::fs::read_to_string(dir.join("demo-client-secret")).unwrap();
    let secret = secret.trim();
    assert!(first.contains(secret) && secret.len() == 48, "{first}");
    assert!(!std::fs::read_to_string(dir.join("clients.toml")).unwrap().contains(secret));

    let config = test_config(&unique("auth-init"));
    create_topics(&[(&config.kafka.topic, 1), (&config.kafka.dead_letter_topic, 1)]);
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let (jwks, key, clients) = (path("jwks.json"), path("signing-key.pem"), path("clients.toml"));
    let env = [
        ("EMBEDSTREAM_AUTH__JWKS_PATH", jwks.as_str()),
        ("EMBEDSTREAM_AUTH__SIGNING_KEY_PATH", key.as_str()),
        ("EMBEDSTREAM_AUTH__SIGNING_KID", "compose-1"),
        ("EMBEDSTREAM_AUTH__CLIENTS_PATH", clients.as_str()),
    ];
    let mut service = ServiceProcess::spawn(&config, &env);
    service.wait_listening(Duration::from_secs(60));
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let anonymous = agent.get(service.url("/v1/users/1/recommendations")).call().unwrap();
    assert_eq!(anonymous.status(), 401, "authentication is on");
    let mut token = agent
        .post(service.url("/v1/auth/token"))
        .send_form([
            ("grant_type", "client_credentials"),
            ("client_id", "demo"),
            ("client_secret", secret),
        ])
        .unwrap();
    assert_eq!(token.status(), 200);
    let token: Value = token.body_mut().read_json().unwrap();
    assert_eq!(token["scope"], "recs:read events:write");
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
    let answer = agent
        .get(service.url("/v1/users/1/recommendations"))
        .header("authorization", &bearer)
        .call()
        .unwrap();
    assert_eq!(answer.status(), 200);
    service.kill();
    std::fs::remove_dir_all(dir).unwrap();
}
