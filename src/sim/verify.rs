//! `--verify`: read every simulated call back through the read API and compare it with the
//! record it must be.

use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;

use super::scenario::{Expected, SimCall};

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub checked: usize,
    pub mismatches: usize,
    /// The first mismatches, one line each.
    pub examples: Vec<String>,
}

const MAX_EXAMPLES: usize = 20;

pub async fn verify(
    client: &reqwest::Client,
    api_url: &str,
    token: &str,
    calls: &[SimCall],
    concurrency: usize,
) -> VerifyReport {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(calls.len());
    for call in calls {
        let permit = permits.clone().acquire_owned().await;
        let client = client.clone();
        let base = api_url.trim_end_matches('/').to_string();
        let token = token.to_string();
        let call_id = call.call_id.clone();
        let expected = call.expected.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            check_call(&client, &base, &token, &call_id, &expected).await
        }));
    }
    let mut problems = Vec::new();
    for task in tasks {
        match task.await {
            Ok(found) => problems.extend(found),
            Err(e) => problems.push(format!("verification task failed: {e}")),
        }
    }
    for line in problems.iter().take(MAX_EXAMPLES) {
        eprintln!("mismatch: {line}");
    }
    VerifyReport {
        checked: calls.len(),
        mismatches: problems.len(),
        examples: problems.into_iter().take(MAX_EXAMPLES).collect(),
    }
}

async fn get_json(client: &reqwest::Client, url: &str, token: &str) -> Result<Value, String> {
    let mut last = String::new();
    // The read API may be briefly unavailable (a restart during a crash test): try a few times.
    for attempt in 0..5 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
        }
        match client.get(url).bearer_auth(token).send().await {
            Ok(r) if r.status().is_success() => {
                return r.json().await.map_err(|e| format!("{url}: bad JSON: {e}"));
            }
            Ok(r) if r.status().is_client_error() => {
                return Err(format!("{url}: HTTP {}", r.status()));
            }
            Ok(r) => last = format!("{url}: HTTP {}", r.status()),
            Err(e) => last = format!("{url}: {e}"),
        }
    }
    Err(last)
}

async fn check_call(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    call_id: &str,
    expected: &Expected,
) -> Vec<String> {
    let url = format!("{base}/api/calls/{call_id}");
    let call = match get_json(client, &url, token).await {
        Ok(v) => v,
        Err(e) => return vec![format!("call {call_id}: {e}")],
    };
    let mut problems = Vec::new();
    let mut check = |field: &str, want: Value| {
        let got = call.get(field).cloned().unwrap_or(Value::Null);
        let equal = match (&want, &got) {
            // Times compare as instants, whatever offset the server writes them with.
            (Value::Number(w), Value::String(g)) if field.ends_with("_time") => {
                g.parse::<Timestamp>().ok().map(|t| t.as_second()) == w.as_i64()
            }
            _ => want == got,
        };
        if !equal {
            problems.push(format!(
                "call {call_id}: {field}: expected {want}, got {got}"
            ));
        }
    };
    let e = expected;
    check("call_status", e.call_status.clone().into());
    check("phase", e.phase.into());
    check("direction", e.direction.clone().into());
    check("caller_number", e.caller_number.clone().into());
    check("destination_number", e.destination_number.clone().into());
    check("hotline", e.hotline.clone().into());
    check("user_name", e.user_name.clone().into());
    check("transaction_id", e.transaction_id.clone().into());
    check("start_time", e.start_time.into());
    check("answer_time", e.answer_time.into());
    check("end_time", e.end_time.into());
    check("hangup_by", e.hangup_by.clone().into());
    check("total_duration", e.total_duration.into());
    check("holding_duration", e.holding_duration.into());
    check("ring_seconds", e.ring_seconds.into());
    check("talk_seconds", e.talk_seconds.into());
    check("event_count", e.event_count.into());

    // Every event stored once: as many stored events as distinct events sent.
    match get_json(client, &format!("{url}/events"), token).await {
        Ok(events) => {
            let stored = events["items"].as_array().map_or(0, |a| a.len()) as i64;
            if stored != e.event_count {
                problems.push(format!(
                    "call {call_id}: {stored} events stored, {} sent",
                    e.event_count
                ));
            }
        }
        Err(err) => problems.push(format!("call {call_id}: events: {err}")),
    }
    problems
}
