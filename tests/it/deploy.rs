//! Issue 11, items 1 and 2: the operator files under `deploy/` hold. `promtool` checks the
//! Prometheus configuration and alert rules and runs their unit tests; the Grafana dashboard is
//! a dashboard model whose panels all query the provisioned data source; every metric a panel
//! or an alert names is one the service really exports (checked against the `/metrics` of the
//! MovieLens service test, see [`check_exported`]); every pulled image of docker-compose.yml is pinned to a version.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    let missing: Vec<&String> =
        queried.iter().filter(|name| !samples.contains(name.as_str())).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
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
