//! HTTP calls with a deadline, the time they took, and the headers: the fault tests assert that
//! nothing hangs and read the degradation headers.

use std::time::{Duration, Instant};

use serde_json::Value;

/// One answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Lower-case header names and values.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub json: Value,
    /// The body as text.
    pub text: String,
    pub elapsed: Duration,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(key, _)| *key == name).map(|(_, value)| value.as_str())
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// GET with a global `timeout`; `None` when no answer came in time (or the connection failed).
pub fn get(url: &str, timeout: Duration) -> Option<Reply> {
    let started = Instant::now();
    let request = agent(timeout).get(url).header("authorization", super::auth::bearer());
    let mut response = request.call().ok()?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (name.as_str().to_ascii_lowercase(), String::from_utf8_lossy(value.as_bytes()).into())
        })
        .collect();
    let text = response.body_mut().read_to_string().ok()?;
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Some(Reply { status, headers, json, text, elapsed: started.elapsed() })
}

/// GET that must answer within `bound`: the fault tests' "no request hangs".
pub fn get_within(url: &str, bound: Duration) -> Reply {
    let started = Instant::now();
    let reply = get(url, bound + Duration::from_secs(5));
    let elapsed = started.elapsed();
    let reply = reply.unwrap_or_else(|| panic!("GET {url}: no answer after {elapsed:?}"));
    assert!(elapsed <= bound, "GET {url} took {elapsed:?}, bound {bound:?}: {}", reply.text);
    reply
}

/// The value of one Prometheus sample, e.g.
/// `metric(text, "embedstream_circuit_breaker_state{breaker=\"redis\"}")`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}
