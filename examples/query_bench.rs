//! The two halves of `bench/query`.
//!
//! `load`: fills a store with `--calls` simulated calls (90 days of a contact centre's shape,
//! 200 agents, 20 hotlines, 35 % of inbound calls missed, a third of calls from returning
//! customers) through the store's own write path (`Store::commit`, in batches of 2 000 events),
//! not over HTTP: each call's final event, as Alohub sends it, in the order of the calls' start
//! times, as a live contact centre sends them.
//!
//! `run`: measures a running alohook over HTTP: the latency of each query shape of issue 11's
//! table (a warm-up, then `--iterations` requests one at a time), an export's rows per second,
//! and the webhook's acknowledgement latency at `--ack-rate` events/s alone and under a read mix
//! of `--readers` clients. Prints one JSON object.
//!
//! ```text
//! cargo run --release --example query_bench -- load --database sqlite:///tmp/q/alohook.db --calls 1000000
//! cargo run --release --example query_bench -- run --url http://127.0.0.1:8080 --token T --key K
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use alohook::model::parse_body;
use alohook::sim::scenario::{ScenarioOptions, generate_call};
use alohook::store::postgres::PgStore;
use alohook::store::sqlite::SqliteStore;
use alohook::store::{Incoming, MergeSettings, Store};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Events per commit while loading.
const LOAD_BATCH: usize = 2000;
/// The scenario's seed: the same calls every time, so a cached store is the same store.
const SEED: u64 = 90;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn number(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} takes a number"))
    })
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("load") => load(&args).await,
        Some("run") => run(&args).await,
        _ => {
            eprintln!(
                "usage: query_bench load --database URL --calls N | run --url URL --token T --key K"
            );
            std::process::exit(2);
        }
    }
}

fn scenario(calls: u64) -> ScenarioOptions {
    ScenarioOptions {
        seed: SEED,
        duplicates: 0.0,
        reorder: 0.0,
        timezone: jiff::tz::TimeZone::get("Asia/Ho_Chi_Minh").unwrap(),
        days: 90,
        repeat_callers: 0.3,
        callers_pool: (calls / 20).max(1) as u32,
        agents: 200,
        hotlines: 20,
    }
}

/// The scenario's call indexes in the order of their start times, as a live contact centre
/// sends them (roughly; Alohub's reorders are minutes, not the 90 days a random order spans):
/// loading the calls in index order would insert every start-time index at random places,
/// which no real store sees, and takes SQLite hours at 10 million calls. Two threads.
fn start_order(calls: usize, options: &ScenarioOptions) -> Vec<u32> {
    let half = calls / 2;
    let starts = |range: std::ops::Range<usize>| {
        range
            .map(|i| (generate_call(i, options).expected.start_time, i as u32))
            .collect::<Vec<_>>()
    };
    let mut order = std::thread::scope(|s| {
        let first = s.spawn(|| starts(0..half));
        let mut second = starts(half..calls);
        let mut all = first.join().expect("the ordering thread");
        all.append(&mut second);
        all
    });
    order.sort_unstable();
    order.into_iter().map(|(_, i)| i).collect()
}

async fn load(args: &[String]) {
    let database = arg(args, "--database").expect("--database URL");
    let calls = number(args, "--calls", 10_000_000);
    let store: Arc<dyn Store> = if database.starts_with("sqlite:") {
        Arc::new(SqliteStore::open_url(&database, MergeSettings::default()).unwrap())
    } else {
        Arc::new(
            PgStore::open(&database, MergeSettings::default())
                .await
                .unwrap(),
        )
    };
    let options = scenario(calls);
    let tz = options.timezone.clone();
    let started = Instant::now();
    let order = start_order(calls as usize, &options);
    eprintln!(
        "ordered {calls} calls by start time in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // Generating and parsing on a thread of their own, a few batches ahead of the commits.
    let (batches, mut ready) = tokio::sync::mpsc::channel::<Vec<Incoming>>(4);
    std::thread::spawn(move || {
        let mut batch = Vec::with_capacity(LOAD_BATCH);
        for i in order {
            let call = generate_call(i as usize, &options);
            let last = call.events.last().expect("a call has events");
            let event = parse_body(&last.body, &tz).expect("the simulator's bodies parse");
            let received_at = (call.expected.end_time + 1) * 1_000_000;
            batch.push(Incoming::Event {
                event: Box::new(event),
                received_at,
            });
            if batch.len() == LOAD_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(LOAD_BATCH));
                if batches.blocking_send(full).is_err() {
                    return;
                }
            }
        }
        if !batch.is_empty() {
            let _ = batches.blocking_send(batch);
        }
    });
    let started = Instant::now();
    let mut done = 0u64;
    let mut next_report = calls / 20;
    let mut commits = tokio::task::JoinSet::new();
    let at_once = store.concurrent_commits().max(1);
    while let Some(batch) = ready.recv().await {
        done += batch.len() as u64;
        let store = store.clone();
        commits.spawn(async move { store.commit(batch).await });
        while commits.len() >= at_once {
            commits.join_next().await.unwrap().unwrap().unwrap();
        }
        if done >= next_report {
            let rate = done as f64 / started.elapsed().as_secs_f64();
            eprintln!("loaded {done} of {calls} calls ({rate:.0}/s)");
            next_report += calls / 20;
        }
    }
    while let Some(committed) = commits.join_next().await {
        committed.unwrap().unwrap();
    }
    eprintln!(
        "loaded {calls} calls in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    drop(store);
    if let Some(path) = database
        .strip_prefix("sqlite://")
        .or_else(|| database.strip_prefix("sqlite:"))
    {
        // The load outran the checkpointer: copy the WAL into the database and empty it, so
        // that every run starts from the state a served store is in, not with a catch-up.
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Client {
    /// The answer to `GET path` and how long it took; a failed request (a 408 past the time
    /// limit, say) is reported on stderr and answers `null`.
    async fn get(&self, path: &str) -> (Duration, Value) {
        let started = Instant::now();
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await;
        let took = started.elapsed();
        match response {
            Ok(r) if r.status().is_success() => (took, r.json().await.unwrap_or(Value::Null)),
            Ok(r) => {
                eprintln!("GET {path}: {} after {took:?}", r.status());
                (took, Value::Null)
            }
            Err(e) => {
                eprintln!("GET {path}: {e} after {took:?}");
                (took, Value::Null)
            }
        }
    }

    /// The `page`th page of `path` (1 = the first), by following `next_cursor`.
    async fn page_path(&self, path: &str, page: usize) -> String {
        let mut at = path.to_string();
        for _ in 1..page {
            let (_, body) = self.get(&at).await;
            let Some(next) = body["next_cursor"].as_str() else {
                break;
            };
            let sep = if path.contains('?') { '&' } else { '?' };
            at = format!("{path}{sep}cursor={next}");
        }
        at
    }
}

fn summary(h: &Histogram<u64>) -> Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({"n": h.len(), "p50_ms": ms(0.5), "p95_ms": ms(0.95), "p99_ms": ms(0.99), "max_ms": h.max() as f64 / 1000.0})
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).unwrap()
}

/// Values to query with, read from the store's newest calls: a day, a hotline, an agent, an
/// extension, a busy caller, a transaction id.
struct Sample {
    day: String,
    first_day: String,
    hotline: String,
    user_name: String,
    extension: String,
    phone: String,
    transaction_id: String,
}

async fn sample(client: &Client) -> Sample {
    let (_, page) = client.get("/api/calls?limit=1000").await;
    // Not the calls of an earlier run's acknowledgement test (before they started in 2000).
    let calls: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["user_name"] != "ack.bench")
        .collect();
    let text = |c: &Value, f: &str| c[f].as_str().unwrap_or("").to_string();
    let first = |f: &str| {
        calls
            .iter()
            .map(|c| text(c, f))
            .find(|v| !v.is_empty())
            .unwrap_or_default()
    };
    let mut callers: HashMap<String, usize> = HashMap::new();
    for c in &calls {
        let n = text(c, "caller_number");
        if !n.contains('x') {
            *callers.entry(n).or_default() += 1;
        }
    }
    let phone = callers
        .into_iter()
        .max_by_key(|(n, count)| (*count, n.clone()))
        .map(|(n, _)| n)
        .unwrap();
    let day = first("start_time")[..10].to_string();
    // The scenario's 90 days end on the newest call's.
    let first_day = day
        .parse::<jiff::civil::Date>()
        .unwrap()
        .checked_sub(jiff::Span::new().days(89))
        .unwrap()
        .to_string();
    Sample {
        day,
        first_day,
        hotline: first("hotline"),
        user_name: first("user_name"),
        extension: first("destination_number"),
        phone,
        transaction_id: first("transaction_id"),
    }
}

async fn time(client: &Client, path: &str, iterations: u64) -> Histogram<u64> {
    for _ in 0..3 {
        client.get(path).await;
    }
    let mut h = histogram();
    for _ in 0..iterations {
        let (took, _) = client.get(path).await;
        h.record(took.as_micros() as u64).unwrap();
    }
    h
}

async fn run(args: &[String]) {
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
        url: arg(args, "--url").expect("--url"),
        token: arg(args, "--token").expect("--token"),
    });
    let key = arg(args, "--key").expect("--key");
    let iterations = number(args, "--iterations", 40);
    let export_rows = number(args, "--export-rows", 1_000_000);
    let ack_rate = number(args, "--ack-rate", 1000);
    let ack_seconds = number(args, "--ack-seconds", 15);
    let readers = number(args, "--readers", 8) as usize;
    let s = sample(&client).await;
    let enc = |v: &str| {
        percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let (day, hotline, user) = (&s.day, enc(&s.hotline), enc(&s.user_name));
    let national = format!(
        "0{}",
        s.phone.trim_start_matches("+84").trim_start_matches('0')
    );
    let mut results = serde_json::Map::new();
    let mut measure = async |name: &str, path: String, target_ms: f64, deep: bool| {
        // The long reports a tenth as often (their p95 is then their second slowest).
        let iterations = if target_ms >= 1000.0 {
            (iterations / 4).max(5)
        } else {
            iterations
        };
        let first = time(&client, &path, iterations).await;
        let mut entry =
            json!({"query": path, "target_p95_ms": target_ms, "first_page": summary(&first)});
        if deep {
            let deep_path = client.page_path(&path, 21).await;
            entry["page_21"] = summary(&time(&client, &deep_path, iterations).await);
        }
        eprintln!("{name}: {entry}");
        results.insert(name.to_string(), entry);
    };
    let listing = [
        ("calls", "/api/calls".to_string()),
        ("status", "/api/calls?status=missed".to_string()),
        ("phase", "/api/calls?phase=ended".to_string()),
        ("direction", "/api/calls?direction=outbound".to_string()),
        ("hotline", format!("/api/calls?hotline={hotline}")),
        ("user_name", format!("/api/calls?user_name={user}")),
        ("agent", format!("/api/calls?agent={user}")),
        (
            "destination_number",
            format!("/api/calls?destination_number={}", s.extension),
        ),
        (
            "transaction_id",
            format!("/api/calls?transaction_id={}", enc(&s.transaction_id)),
        ),
        ("day", format!("/api/calls?from={day}&to={day}")),
        (
            "status_hotline_day",
            format!("/api/calls?status=missed&hotline={hotline}&from={day}&to={day}"),
        ),
        (
            "rare_status_direction",
            "/api/calls?status=missed&direction=outbound".to_string(),
        ),
        (
            "rare_hotline_direction",
            format!("/api/calls?hotline={hotline}&direction=outbound"),
        ),
        (
            "rare_status_direction_90_days",
            format!(
                "/api/calls?status=missed&direction=outbound&from={}&to={day}",
                s.first_day
            ),
        ),
        (
            "gone_user_name",
            "/api/calls?user_name=no.such.agent".to_string(),
        ),
    ];
    for (name, path) in listing {
        measure(name, path, 50.0, true).await;
    }
    for (name, form) in [
        ("phone_national", national.clone()),
        ("phone_84", format!("84{}", &national[1..])),
        ("phone_e164", format!("+84{}", &national[1..])),
        ("phone_extension", s.extension.clone()),
    ] {
        measure(
            name,
            format!("/api/calls?phone={}", enc(&form)),
            20.0,
            false,
        )
        .await;
    }
    measure(
        "stats_day_by_agent",
        format!("/api/stats?from={day}&to={day}&group_by=agent"),
        100.0,
        false,
    )
    .await;
    let range = format!("from={}&to={day}", s.first_day);
    measure(
        "stats_90_days_by_day",
        format!("/api/stats?{range}&group_by=day"),
        1000.0,
        false,
    )
    .await;
    measure(
        "stats_90_days_by_agent",
        format!("/api/stats?{range}&group_by=agent"),
        1000.0,
        false,
    )
    .await;
    measure(
        "callbacks_open",
        "/api/callbacks?state=open".to_string(),
        50.0,
        false,
    )
    .await;

    // An export: rows per second over the first `export_rows` rows.
    let started = Instant::now();
    let mut response = client
        .http
        .get(format!("{}/api/export/calls?format=csv", client.url))
        .bearer_auth(&client.token)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let mut rows = 0u64;
    while let Some(chunk) = response.chunk().await.unwrap() {
        rows += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        if rows > export_rows {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(response);
    let export = json!({"rows": rows.min(export_rows), "seconds": seconds, "rows_per_second": rows.min(export_rows) as f64 / seconds, "target_rows_per_second": 100000});
    eprintln!("export: {export}");
    results.insert("export_calls_csv".into(), export);

    // The webhook's acknowledgement latency, alone, then beside readers of the typical mix.
    let mix: Vec<String> = vec![
        "/api/calls".into(),
        "/api/calls?status=missed".into(),
        format!("/api/calls?hotline={hotline}"),
        format!("/api/calls?phone={}", enc(&national)),
        format!("/api/calls?from={day}&to={day}&status=missed&hotline={hotline}"),
        "/api/callbacks?state=open".into(),
        format!("/api/stats?from={day}&to={day}&group_by=agent"),
    ];
    let alone = acks(&client, &key, ack_rate, ack_seconds, 0, &mix, "alone").await;
    let with_readers = acks(&client, &key, ack_rate, ack_seconds, readers, &mix, "reads").await;
    results.insert("ack_alone".into(), alone.0);
    results.insert(
        "ack_with_readers".into(),
        json!({"ack": with_readers.0, "readers": readers, "reads_answered": with_readers.1, "mix": mix, "target_p99_ms": 20}),
    );
    println!("{}", Value::Object(results));
}

/// Posts new events at `rate`/s for `seconds` (each on its own schedule, not waiting for the
/// previous answer) while `readers` clients loop over `mix`; the acknowledgements' latency, and
/// how many reads were answered.
async fn acks(
    client: &Arc<Client>,
    key: &str,
    rate: u64,
    seconds: u64,
    readers: usize,
    mix: &[String],
    tag: &str,
) -> (Value, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut reading = tokio::task::JoinSet::new();
    for r in 0..readers {
        let (client, stop, mix) = (client.clone(), stop.clone(), mix.to_vec());
        reading.spawn(async move {
            let mut answered = 0u64;
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                client.get(&mix[i % mix.len()]).await;
                answered += 1;
                i += 1;
            }
            answered
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let run = format!("{tag}{}", std::process::id());
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut sends = tokio::task::JoinSet::new();
    let started = tokio::time::Instant::now();
    // Long before the scenario's calls: they list after them and fall in none of the
    // measured ranges, so the next run's samples are the scenario's.
    let start_time = "2000-01-01 09:00:00";
    for i in 0..total {
        tokio::time::sleep_until(started + interval * i as u32).await;
        let body = json!({"call_id": format!("ACK{run}{i:08}"), "call_status": "missed", "direction": "inbound",
            "caller_number": format!("09{:08}", i % 100_000_000), "destination_number": "101", "starttime": start_time,
            "answertime": "", "endtime": start_time, "hangup_by": "customer", "hotline": "19001234",
            "total_duration": "5", "holding_duration": "0", "recording_url": "", "objectId": 1,
            "transactionID": "", "userName": "ack.bench", "eventType": "call"})
        .to_string();
        let (http, url, key) = (client.http.clone(), client.url.clone(), key.to_string());
        sends.spawn(async move {
            let t = Instant::now();
            let r = http
                .post(format!("{url}/webhooks/alohub"))
                .header("authorization", key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let ok = r.is_ok_and(|r| r.status().is_success());
            (t.elapsed(), ok)
        });
    }
    let mut h = histogram();
    let mut failed = 0u64;
    while let Some(sent) = sends.join_next().await {
        let (took, ok) = sent.unwrap();
        if !ok {
            failed += 1;
        }
        h.record(took.as_micros() as u64).unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut reads = 0;
    while let Some(answered) = reading.join_next().await {
        reads += answered.unwrap();
    }
    let mut out = summary(&h);
    out["failed"] = json!(failed);
    out["events_per_second"] = json!(total as f64 / elapsed);
    eprintln!("acks ({tag}, {readers} readers): {out}");
    (out, reads)
}
