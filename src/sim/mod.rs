//! `alohook simulate`: an Alohub emulator. It sends realistic call events exactly as the sender
//! does (including its resends on failure), optionally with extra duplicates and reordering,
//! measures acknowledgement latency, and can read every call back to check the result.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use jiff::tz::TimeZone;
use serde::Serialize;
use tokio::sync::Mutex;

pub mod scenario;
pub mod verify;

use scenario::{ScenarioOptions, SimCall};

/// Options of `alohook simulate`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimOptions {
    /// Webhook URL to send to, e.g. http://127.0.0.1:8080/webhooks/alohub. Repeat it to spread
    /// the requests over several instances in turn, as a load balancer would (a resend may then
    /// reach another instance than the first delivery).
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// Authorization key to send (as Alohub does: the key as-is).
    #[arg(long, hide_env_values = true)]
    pub key: String,
    /// Number of calls to simulate.
    #[arg(long, default_value_t = 100)]
    pub calls: usize,
    /// Stop after this many distinct events have been sent (whichever bound comes first).
    #[arg(long)]
    pub events: Option<usize>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Pace sending at this many requests per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop starting new calls after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seed of the generated traffic: the same seed sends the same calls.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share (0 to 1) of acknowledged events that are sent once more.
    #[arg(long, default_value_t = 0.0)]
    pub duplicates: f64,
    /// Share (0 to 1) of answered calls whose final event is sent before the mid-call one.
    #[arg(long, default_value_t = 0.0)]
    pub reorder: f64,
    /// Spread the calls over the business hours (08:00-20:00) of this many days, with the
    /// weekday and hour-of-day shape of a contact centre (mornings and mid-afternoons busiest,
    /// weekends quieter). 1: one day, a call every 7 seconds or so from 08:00 (after 12
    /// hours' worth, 6 170 calls, again from 08:00).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    /// Share (0 to 1) of calls from returning customers (a pool of one number per 20 calls):
    /// repeat misses and call-backs of the same number, as the callback worklist sees them.
    #[arg(long, default_value_t = 0.0)]
    pub repeat_callers: f64,
    /// Resends of an event that got no 200 (error status, refused connection, timeout).
    #[arg(long, default_value_t = 5)]
    pub max_retries: u32,
    /// Time limit of one request, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout: u64,
    /// Longest wait between two resends of one event, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub max_backoff: u64,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// After sending, read every call back through the API and compare it with what it must be.
    #[arg(long)]
    pub verify: bool,
    /// Base URL of the read API [default: the webhook URL's origin]
    #[arg(long)]
    pub api_url: Option<String>,
    /// API token for --verify.
    #[arg(long, hide_env_values = true)]
    pub api_token: Option<String>,
    /// IANA zone the simulated Alohub account writes its local times in.
    #[arg(long, default_value = "Asia/Ho_Chi_Minh")]
    pub timezone: String,
}

/// The summary of a run (printed, and written by `--report`).
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub calls: usize,
    /// Distinct events sent.
    pub events_sent: u64,
    /// Distinct events answered 200.
    pub acknowledged: u64,
    /// Events never acknowledged after every resend.
    pub unacknowledged: u64,
    /// Extra deliveries of acknowledged events (`--duplicates`), and how many alohook recognised.
    pub duplicates_sent: u64,
    pub duplicates_answered: u64,
    /// Extra deliveries answered as new events (each one a dedupe failure).
    pub duplicates_missed: u64,
    /// Sends repeated because an attempt failed.
    pub resends: u64,
    /// Attempts that failed (non-200, refused, timed out).
    pub failures: u64,
    /// All requests answered 200.
    pub requests_ok: u64,
    /// Every attempt's outcome: an HTTP status (`"200"`, `"503"`…) or what went wrong on the
    /// way (`"timeout"`, `"connection failed"`, `"request failed"`).
    pub outcomes: std::collections::BTreeMap<String, u64>,
    pub elapsed_seconds: f64,
    /// Requests answered 200 per second.
    pub events_per_second: f64,
    pub latency_ms: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<verify::VerifyReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl SimReport {
    /// Whether the run proves what it should: everything acknowledged, nothing mismatched.
    pub fn success(&self) -> bool {
        self.unacknowledged == 0
            && self.duplicates_missed == 0
            && self.verify.as_ref().is_none_or(|v| v.mismatches == 0)
    }

    pub fn print(&self) {
        println!("calls                {}", self.calls);
        println!("events sent          {}", self.events_sent);
        println!("acknowledged         {}", self.acknowledged);
        println!("unacknowledged       {}", self.unacknowledged);
        println!(
            "duplicates sent      {} (answered as duplicates: {}, missed: {})",
            self.duplicates_sent, self.duplicates_answered, self.duplicates_missed
        );
        println!("resends              {}", self.resends);
        println!("failed attempts      {}", self.failures);
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(what, n)| format!("{what}: {n}"))
            .collect();
        println!("answers              {}", outcomes.join(", "));
        println!("elapsed              {:.2} s", self.elapsed_seconds);
        println!("events/s             {:.0}", self.events_per_second);
        println!(
            "ack latency ms       p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
            self.latency_ms.p50, self.latency_ms.p90, self.latency_ms.p99, self.latency_ms.max
        );
        if let Some(v) = &self.verify {
            println!(
                "verified calls       {} ({} mismatches)",
                v.checked, v.mismatches
            );
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
    #[error("{0}")]
    Options(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error(
        "the webhook answered 401 Unauthorized: --key is not one of alohook's webhook keys \
         (`alohook keys show` prints them); stopped at the first 401, after {attempts} requests \
         (those already under way when it came)"
    )]
    WebhookUnauthorized { attempts: u64 },
    #[error(
        "the read API answered 401 Unauthorized to --verify: --api-token is not alohook's API \
         token (`alohook keys show` prints it); {events} events were sent and acknowledged"
    )]
    ApiUnauthorized { events: u64 },
    #[error("cannot write the report {path}: {source}")]
    Report {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Default)]
struct Counters {
    events_sent: AtomicU64,
    acknowledged: AtomicU64,
    unacknowledged: AtomicU64,
    duplicates_sent: AtomicU64,
    duplicates_answered: AtomicU64,
    duplicates_missed: AtomicU64,
    resends: AtomicU64,
    failures: AtomicU64,
    requests_ok: AtomicU64,
}

/// Spaces requests evenly at a given rate across all workers.
struct Pacer {
    interval: Duration,
    next: std::sync::Mutex<Instant>,
}

impl Pacer {
    async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}

struct Sender {
    client: reqwest::Client,
    urls: Vec<String>,
    next_url: AtomicUsize,
    key: String,
    max_retries: u32,
    max_backoff: Duration,
    pacer: Option<Pacer>,
    counters: Counters,
    latency: std::sync::Mutex<Histogram<u64>>,
    outcomes: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Set on a 401: every worker stops, there is no point resending with a wrong key.
    unauthorized: AtomicBool,
    progress: ProgressBar,
}

/// How one delivery ended.
struct Delivery {
    acked: bool,
    duplicate: Option<bool>,
}

impl Sender {
    /// Sends `body` until it is answered 200 or the resends are used up.
    async fn deliver(&self, body: &bytes::Bytes) -> Delivery {
        for attempt in 0..=self.max_retries {
            if self.unauthorized.load(Ordering::Relaxed) {
                break;
            }
            if attempt > 0 {
                self.counters.resends.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(self.backoff(attempt)).await;
            }
            if let Some(pacer) = &self.pacer {
                pacer.wait().await;
            }
            let started = Instant::now();
            let sent = self
                .client
                .post(self.url())
                .header(reqwest::header::AUTHORIZATION, &self.key)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            let outcome = match &sent {
                Ok(response) => response.status().as_u16().to_string(),
                Err(e) if e.is_timeout() => "timeout".to_string(),
                Err(e) if e.is_connect() => "connection failed".to_string(),
                Err(_) => "request failed".to_string(),
            };
            if let Ok(mut outcomes) = self.outcomes.lock() {
                *outcomes.entry(outcome).or_default() += 1;
            }
            match sent {
                Ok(response) if response.status() == reqwest::StatusCode::UNAUTHORIZED => {
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                    self.unauthorized.store(true, Ordering::Relaxed);
                    break;
                }
                Ok(response) if response.status() == reqwest::StatusCode::OK => {
                    let answer = response.bytes().await;
                    let elapsed = started.elapsed();
                    if let Ok(mut h) = self.latency.lock() {
                        let _ = h.record(elapsed.as_micros().max(1) as u64);
                    }
                    self.counters.requests_ok.fetch_add(1, Ordering::Relaxed);
                    self.progress.inc(1);
                    let duplicate = answer
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .and_then(|v| v.get("duplicate").and_then(|d| d.as_bool()));
                    return Delivery {
                        acked: true,
                        duplicate,
                    };
                }
                Ok(_) | Err(_) => {
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Delivery {
            acked: false,
            duplicate: None,
        }
    }

    /// The URL of the next request, in turn.
    fn url(&self) -> &str {
        let i = self.next_url.fetch_add(1, Ordering::Relaxed);
        &self.urls[i % self.urls.len()]
    }

    /// 50 ms doubling per attempt, capped, with ±25 % jitter.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = Duration::from_millis(50).saturating_mul(1 << attempt.min(16).saturating_sub(1));
        let capped = base.min(self.max_backoff);
        capped.mul_f64(0.75 + fastrand::f64() * 0.5)
    }
}

/// Runs a simulation and returns its summary.
pub async fn run(options: SimOptions) -> Result<SimReport, SimError> {
    let timezone = TimeZone::get(&options.timezone)
        .map_err(|_| SimError::TimeZone(options.timezone.clone()))?;
    for (name, value) in [
        ("--duplicates", options.duplicates),
        ("--reorder", options.reorder),
    ] {
        if !(0.0..=1.0).contains(&value) {
            return Err(SimError::Options(format!("{name} must be between 0 and 1")));
        }
    }
    if options.concurrency == 0 {
        return Err(SimError::Options("--concurrency must be at least 1".into()));
    }
    if options.verify && options.api_token.is_none() {
        return Err(SimError::Options("--verify needs --api-token".into()));
    }
    let calls = Arc::new(scenario::generate(
        options.calls,
        &ScenarioOptions {
            seed: options.seed,
            duplicates: options.duplicates,
            reorder: options.reorder,
            timezone: timezone.clone(),
            days: options.days,
            repeat_callers: options.repeat_callers,
            callers_pool: (options.calls / 20).max(1) as u32,
            agents: scenario::AGENTS,
            hotlines: scenario::HOTLINES.len() as u32,
        },
    ));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(options.timeout))
        .connect_timeout(Duration::from_millis(options.timeout))
        .pool_max_idle_per_host(options.concurrency)
        .build()?;
    let total_events: u64 = calls.iter().map(|c| c.events.len() as u64).sum();
    let progress = ProgressBar::new(options.events.map_or(total_events, |e| e as u64));
    progress.set_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} acknowledged  {per_sec}  {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let sender = Arc::new(Sender {
        client: client.clone(),
        urls: options.urls.clone(),
        next_url: AtomicUsize::new(0),
        key: options.key.clone(),
        max_retries: options.max_retries,
        max_backoff: Duration::from_millis(options.max_backoff),
        pacer: options.rate.filter(|r| *r > 0.0).map(|rate| Pacer {
            interval: Duration::from_secs_f64(1.0 / rate),
            next: std::sync::Mutex::new(Instant::now()),
        }),
        counters: Counters::default(),
        outcomes: Default::default(),
        unauthorized: AtomicBool::new(false),
        latency: std::sync::Mutex::new(
            Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
        ),
        progress: progress.clone(),
    });

    let started = Instant::now();
    let deadline = options
        .duration
        .map(|d| started + Duration::from_secs_f64(d));
    let work = Arc::new(Work {
        calls: calls.clone(),
        next_call: AtomicUsize::new(0),
        calls_started: AtomicUsize::new(0),
        event_budget: options.events,
        events_claimed: AtomicUsize::new(0),
        resends: Mutex::new(VecDeque::new()),
        deadline,
        stopped: AtomicBool::new(false),
    });
    let mut workers = Vec::with_capacity(options.concurrency);
    for _ in 0..options.concurrency {
        workers.push(tokio::spawn(worker(work.clone(), sender.clone())));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    if sender.unauthorized.load(Ordering::Relaxed) {
        return Err(SimError::WebhookUnauthorized {
            attempts: sender.outcomes.lock().map_or(0, |o| o.values().sum()),
        });
    }

    let c = &sender.counters;
    let h = sender.latency.lock().map(|h| h.clone()).ok();
    let ms = |q: f64| {
        h.as_ref()
            .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
    };
    let calls_started = work.calls_started.load(Ordering::Relaxed);
    let mut report = SimReport {
        calls: calls_started,
        events_sent: c.events_sent.load(Ordering::Relaxed),
        acknowledged: c.acknowledged.load(Ordering::Relaxed),
        unacknowledged: c.unacknowledged.load(Ordering::Relaxed),
        duplicates_sent: c.duplicates_sent.load(Ordering::Relaxed),
        duplicates_answered: c.duplicates_answered.load(Ordering::Relaxed),
        duplicates_missed: c.duplicates_missed.load(Ordering::Relaxed),
        resends: c.resends.load(Ordering::Relaxed),
        failures: c.failures.load(Ordering::Relaxed),
        requests_ok: c.requests_ok.load(Ordering::Relaxed),
        outcomes: sender
            .outcomes
            .lock()
            .map(|o| o.clone())
            .unwrap_or_default(),
        elapsed_seconds: elapsed,
        events_per_second: c.requests_ok.load(Ordering::Relaxed) as f64 / elapsed.max(1e-9),
        latency_ms: Latency {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            max: h.as_ref().map_or(0.0, |h| h.max() as f64 / 1000.0),
        },
        verify: None,
    };
    if options.verify {
        let api_url = options
            .api_url
            .clone()
            .unwrap_or_else(|| origin(&options.urls[0]));
        let token = options.api_token.clone().unwrap_or_default();
        // A wrong token would make every call a "mismatch": say what it is instead.
        let probe = client
            .get(format!(
                "{}/api/calls?limit=1",
                api_url.trim_end_matches('/')
            ))
            .bearer_auth(&token)
            .send()
            .await;
        if probe.is_ok_and(|r| r.status() == reqwest::StatusCode::UNAUTHORIZED) {
            return Err(SimError::ApiUnauthorized {
                events: report.acknowledged,
            });
        }
        // A worker finishes every call it takes, so the calls started are the calls sent whole.
        let sent: Vec<SimCall> = calls.iter().take(calls_started).cloned().collect();
        report.verify = Some(
            verify::verify(
                &client,
                &api_url,
                &token,
                &sent,
                options.concurrency.min(32),
            )
            .await,
        );
    }
    if let Some(path) = &options.report {
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        std::fs::write(path, json).map_err(|source| SimError::Report {
            path: path.clone(),
            source,
        })?;
    }
    Ok(report)
}

/// What the workers share: the calls to send and the queue of duplicates to send again.
struct Work {
    calls: Arc<Vec<SimCall>>,
    next_call: AtomicUsize,
    calls_started: AtomicUsize,
    event_budget: Option<usize>,
    events_claimed: AtomicUsize,
    resends: Mutex<VecDeque<bytes::Bytes>>,
    deadline: Option<Instant>,
    stopped: AtomicBool,
}

impl Work {
    /// The next call to send, unless a bound has been reached.
    fn next(&self) -> Option<&SimCall> {
        if self.stopped.load(Ordering::Relaxed)
            || self.deadline.is_some_and(|d| Instant::now() >= d)
        {
            self.stopped.store(true, Ordering::Relaxed);
            return None;
        }
        let index = self.next_call.fetch_add(1, Ordering::Relaxed);
        let call = self.calls.get(index)?;
        if let Some(budget) = self.event_budget {
            let claimed = self
                .events_claimed
                .fetch_add(call.events.len(), Ordering::Relaxed);
            if claimed >= budget {
                self.stopped.store(true, Ordering::Relaxed);
                return None;
            }
        }
        self.calls_started.fetch_add(1, Ordering::Relaxed);
        Some(call)
    }
}

async fn worker(work: Arc<Work>, sender: Arc<Sender>) {
    loop {
        if sender.unauthorized.load(Ordering::Relaxed) {
            return;
        }
        let duplicate = work.resends.lock().await.pop_front();
        if let Some(body) = duplicate {
            let c = &sender.counters;
            c.duplicates_sent.fetch_add(1, Ordering::Relaxed);
            let delivery = sender.deliver(&body).await;
            match delivery.duplicate {
                Some(true) => c.duplicates_answered.fetch_add(1, Ordering::Relaxed),
                Some(false) => c.duplicates_missed.fetch_add(1, Ordering::Relaxed),
                None => 0,
            };
            continue;
        }
        let Some(call) = work.next() else {
            // Calls are done; leave once no duplicate is waiting either.
            if work.resends.lock().await.is_empty() {
                return;
            }
            continue;
        };
        for event in &call.events {
            let c = &sender.counters;
            c.events_sent.fetch_add(1, Ordering::Relaxed);
            let delivery = sender.deliver(&event.body).await;
            if delivery.acked {
                c.acknowledged.fetch_add(1, Ordering::Relaxed);
                if event.resend {
                    work.resends.lock().await.push_back(event.body.clone());
                }
            } else {
                c.unacknowledged.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// `http://host:port/webhooks/alohub` → `http://host:port`.
fn origin(url: &str) -> String {
    match url.find("://") {
        Some(i) => match url[i + 3..].find('/') {
            Some(j) => url[..i + 3 + j].to_string(),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::origin;

    #[test]
    fn origin_of_a_webhook_url() {
        assert_eq!(
            origin("http://127.0.0.1:8080/webhooks/alohub"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(origin("https://example.com"), "https://example.com");
    }
}
