//! Replay: a destination's changes queued again, every one a filter matches (not a page), by a
//! background job whose progress is kept in the store. A replayed change keeps its
//! `webhook-id`: receivers (and JetStream, within its duplicate window) know it for a repeat.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value, json};

use super::destination::{FieldError, Ordering, parse_filter, parse_types};
use crate::model::time::{now_micros, parse_range_bound};
use crate::store::deliveries::{JOB_HEARTBEAT, Job, ReplayScope};
use crate::store::{Store, StoreError, StoredDestination};

/// Positions queued per transaction: short enough not to hold the writer from ingest.
const POSITIONS_PER_STEP: i64 = 5_000;

/// The fields of a replay's filter.
const REPLAY_FIELDS: &[&str] = &["from", "to", "types", "state"];

/// A replay asked for: which changes, as the store selects them.
pub fn scope(
    destination: &StoredDestination,
    body: &Value,
    tz: &jiff::tz::TimeZone,
) -> Result<ReplayScope, FieldError> {
    let empty = Map::new();
    let object = match body {
        Value::Null => &empty,
        Value::Object(o) => o,
        _ => {
            return Err(field(
                "body",
                "must be a JSON object (a filter; every field optional)",
            ));
        }
    };
    let mut filter = Map::new();
    for (key, value) in object {
        if super::destination::FILTER_KEYS.contains(&key.as_str()) {
            filter.insert(key.clone(), value.clone());
        } else if !REPLAY_FIELDS.contains(&key.as_str()) {
            let mut known: Vec<&str> = REPLAY_FIELDS.to_vec();
            known.extend(super::destination::FILTER_KEYS);
            return Err(field(
                key,
                format!("unknown field; known: {}", known.join(", ")),
            ));
        }
    }
    // Each filter on its own, so that a bad one is named.
    let mut filters = std::collections::BTreeMap::new();
    for (key, value) in filter {
        let mut single = Map::new();
        single.insert(key.clone(), value);
        let one = parse_filter(&Value::Object(single)).map_err(|e| field(&key, e.detail))?;
        filters.extend(one);
    }
    let mut replay = destination.spec.clone();
    replay.filter = filters;
    if let Some(types) = object.get("types") {
        replay.types = parse_types(types)?;
    }
    let bound = |name: &str, end_of_day: bool| -> Result<Option<i64>, FieldError> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => parse_range_bound(text, tz, end_of_day)
                .map(Some)
                .ok_or_else(|| field(name, "must be an RFC 3339 time or a date YYYY-MM-DD")),
            Some(_) => Err(field(name, "must be an RFC 3339 time or a date YYYY-MM-DD")),
        }
    };
    let dead_only = match object.get("state") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "dead" => true,
        Some(_) => {
            return Err(field(
                "state",
                "the only state a replay selects by is \"dead\" (leave it out for every state)",
            ));
        }
    };
    Ok(ReplayScope {
        // What the destination receives, and of that what the replay asks for.
        filters: vec![destination.spec.change_filter(), replay.change_filter()],
        from: bound("from", false)?,
        to: bound("to", true)?,
        dead_only,
    })
}

fn field(name: &str, detail: impl Into<String>) -> FieldError {
    FieldError {
        field: name.to_string(),
        detail: detail.into(),
    }
}

/// Counts what a replay matches now and starts its job; answers the job as it starts.
pub async fn start(
    store: Arc<dyn Store>,
    destination: &StoredDestination,
    scope: ReplayScope,
) -> Result<Job, StoreError> {
    let upto = store.last_seq().await?;
    let matched = store.replay_matches(&destination.id, &scope, upto).await?;
    let now = now_micros();
    let job = Job {
        id: new_job_id(),
        kind: "replay".into(),
        destination_id: Some(destination.id.clone()),
        state: "running".into(),
        matched,
        queued: 0,
        error: None,
        created_at: now,
        updated_at: now,
    };
    store.save_job(&job).await?;
    let per_call = destination.spec.ordering == Ordering::PerCall;
    tokio::spawn(run(store, job.clone(), scope, upto, per_call));
    Ok(job)
}

async fn run(store: Arc<dyn Store>, mut job: Job, scope: ReplayScope, upto: i64, per_call: bool) {
    let destination = job.destination_id.clone().unwrap_or_default();
    let mut after = 0;
    let mut saved = Instant::now();
    while after < upto {
        let to = (after + POSITIONS_PER_STEP).min(upto);
        match store
            .queue_replay(&destination, &scope, after, to, per_call, to == upto)
            .await
        {
            Ok(queued) => job.queued += queued,
            Err(error) => {
                tracing::warn!(job = %job.id, %destination, %error, "a replay failed");
                job.state = "failed".into();
                job.error = Some(error.to_string());
                break;
            }
        }
        after = to;
        if saved.elapsed() >= JOB_HEARTBEAT / 5 && after < upto {
            job.updated_at = now_micros();
            if store.save_job(&job).await.is_ok() {
                saved = Instant::now();
            }
        }
    }
    if job.state == "running" {
        job.state = "done".into();
        tracing::info!(job = %job.id, %destination, matched = job.matched, queued = job.queued, "replay queued");
    }
    job.updated_at = now_micros();
    // The job's outcome is what GET /api/jobs/{id} answers: worth a few tries.
    for _ in 0..5 {
        match store.save_job(&job).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(job = %job.id, %error, "cannot save a job's outcome; trying again");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// A job as `GET /api/jobs/{id}` shows it. A running job that has not written for three
/// heartbeats stopped with the instance that ran it: failed.
pub fn view(job: &Job, now: i64) -> Value {
    let stale =
        job.state == "running" && now - job.updated_at > 3 * JOB_HEARTBEAT.as_micros() as i64;
    let (state, error) = if stale {
        (
            "failed",
            Some(
                "the instance running it stopped; replay again (a repeat keeps its webhook-id)"
                    .to_string(),
            ),
        )
    } else {
        (job.state.as_str(), job.error.clone())
    };
    json!({
        "id": job.id,
        "kind": job.kind,
        "destination_id": job.destination_id,
        "state": state,
        "matched": job.matched,
        "queued": job.queued,
        "error": error,
        "created_at": crate::model::time::format_utc_micros(job.created_at),
        "updated_at": crate::model::time::format_utc_micros(job.updated_at),
    })
}

fn new_job_id() -> String {
    let mut bytes = [0u8; 12];
    let _ = getrandom::fill(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("job_{hex}")
}
