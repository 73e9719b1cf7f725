//! `alohook tail` and `alohook listen`: follow a running alohook's live stream from anywhere
//! (a laptop against production), resuming from the last change they handled after any
//! disconnect, for as long as they run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use super::sse::Parser;

/// Where to connect and what to follow: the options `tail` and `listen` share.
#[derive(clap::Args, Clone, Debug)]
pub struct StreamArgs {
    /// The alohook to follow: its base URL (`http://host:8080`), or the stream's URL itself
    #[arg(
        long,
        env = "ALOHOOK_API_URL",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub api_url: String,
    /// The API token of that alohook (`alohook keys show` prints it)
    #[arg(
        long,
        env = "ALOHOOK_API_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub api_token: String,
    /// Start after this position (a change's `seq`) [default: only changes from now on]
    #[arg(long, value_name = "SEQ", conflicts_with = "from_start",
          value_parser = clap::value_parser!(i64).range(0..))]
    pub since: Option<i64>,
    /// Start from the first change alohook holds
    #[arg(long)]
    pub from_start: bool,
    /// Only these change types, comma-separated: call.created, call.updated, call.ended,
    /// event.received
    #[arg(long, value_name = "LIST")]
    pub types: Option<String>,
    /// Only this call
    #[arg(long, alias = "call_id", value_name = "ID")]
    pub call_id: Option<String>,
    /// Only calls with this status (any case), as of the change
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,
    /// Only calls in this phase: ringing, in_progress, ended
    #[arg(long, value_name = "PHASE")]
    pub phase: Option<String>,
    /// Only inbound or outbound calls
    #[arg(long, value_name = "DIRECTION")]
    pub direction: Option<String>,
    /// Only calls of this hotline
    #[arg(long, value_name = "NUMBER")]
    pub hotline: Option<String>,
    /// Only calls of this agent account
    #[arg(long, alias = "user_name", value_name = "NAME")]
    pub user_name: Option<String>,
    /// Only calls started with this transactionID (makeCall, click-to-call, a campaign)
    #[arg(long, alias = "transaction_id", value_name = "ID")]
    pub transaction_id: Option<String>,
    /// Only calls to or from this agent extension or number
    #[arg(long, alias = "destination_number", value_name = "NUMBER")]
    pub destination_number: Option<String>,
    /// Only calls with this caller or destination number, in any form
    #[arg(long, value_name = "NUMBER")]
    pub phone: Option<String>,
    /// Stop after this many changes (for scripts)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One readable line per change
    Pretty,
    /// The change JSON, one per line
    Json,
}

/// `alohook tail`.
#[derive(clap::Args, Clone, Debug)]
pub struct TailArgs {
    #[command(flatten)]
    pub stream: StreamArgs,
    /// How to print each change
    #[arg(long, value_enum, default_value_t = Format::Pretty)]
    pub format: Format,
}

/// `alohook listen`.
#[derive(clap::Args, Clone, Debug)]
pub struct ListenArgs {
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Your handler: each change is POSTed to it as JSON, in order; a change is retried until the
    /// handler answers 2xx
    #[arg(long, value_name = "URL")]
    pub forward_to: String,
    /// Keep the position of the last change the handler acknowledged in this file, and resume
    /// from it at the next start (`--since` / `--from-start` override it)
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Seconds the handler has to answer one change
    #[arg(long, value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub forward_timeout: u64,
    /// A header to send the handler with every change, `Name: value` (repeatable), e.g. its
    /// own token
    #[arg(long = "forward-header", value_name = "HEADER", value_parser = parse_header)]
    pub forward_headers: Vec<(String, String)>,
}

/// `Name: value`.
fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not `Name: value`"))?;
    let name = name.trim();
    reqwest::header::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a header name"))?;
    reqwest::header::HeaderValue::from_str(value.trim())
        .map_err(|_| format!("the value of {name} is not a header value"))?;
    Ok((name.to_string(), value.trim().to_string()))
}

/// A change as received: its position and its JSON, exactly as sent.
struct Received {
    seq: i64,
    kind: String,
    json: String,
}

/// What to do with each change; `Ok` when it is handled and the stream may move on. An error
/// ends the command (it is the handler's own failure, not the stream's).
trait Handler {
    async fn handle(&mut self, change: &Received) -> anyhow::Result<()>;

    /// The stream named where it starts, before any change: the position from which a restart
    /// must resume if no change comes first.
    fn started(&mut self, _position: i64) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Why reading a stream stopped.
enum Stopped {
    /// The connection failed or the server went away: reconnect and resume.
    Connection(anyhow::Error),
    /// The handler failed: stop.
    Handler(anyhow::Error),
}

/// Whether `error` is a write to a closed pipe (`alohook tail | head -1` once head has exited).
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// `url` without a password, for messages.
fn shown(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

/// Follows the stream from `start` (`None`: from now on) until `count` changes were handled,
/// reconnecting with backoff and resuming after the last handled change.
async fn follow(
    args: &StreamArgs,
    start: Option<i64>,
    handler: &mut impl Handler,
) -> anyhow::Result<()> {
    let url = stream_url(&args.api_url)?;
    let url_shown = shown(&url);
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        // The server sends a keep-alive comment at least every 15 s: this much silence is a
        // dead connection.
        .read_timeout(Duration::from_secs(45))
        .user_agent(concat!("alohook/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let mut position = start;
    let mut handled = 0u64;
    let mut backoff = Duration::from_millis(250);
    let mut failed = false;
    loop {
        let mut request = client
            .get(url.clone())
            .bearer_auth(&args.api_token)
            .header("accept", "text/event-stream")
            .query(&filters(args));
        if let Some(p) = position {
            request = request.header("last-event-id", p.to_string());
        }
        let connected = Instant::now();
        let outcome = match request.send().await {
            Ok(response) => {
                let status = response.status();
                if status == reqwest::StatusCode::UNAUTHORIZED {
                    bail!(
                        "{url_shown} answered 401: --api-token (ALOHOOK_API_TOKEN) is not that alohook's API token"
                    );
                }
                if status.is_client_error() {
                    let body = response.text().await.unwrap_or_default();
                    bail!("{url_shown} answered {status}: {body}");
                }
                if !status.is_success() {
                    Err(anyhow::anyhow!("{url_shown} answered {status}"))
                } else {
                    if failed {
                        eprintln!(
                            "alohook: connected again{}",
                            position.map_or(String::new(), |p| format!(", resuming after {p}"))
                        );
                    }
                    match read_stream(response, &mut position, &mut handled, args.count, handler)
                        .await
                    {
                        Ok(()) => Ok(()),
                        Err(Stopped::Connection(error)) => Err(error),
                        // `alohook tail | head` once head has what it wants: done.
                        Err(Stopped::Handler(error)) if is_broken_pipe(&error) => return Ok(()),
                        Err(Stopped::Handler(error)) => return Err(error),
                    }
                }
            }
            Err(error) => Err(anyhow::Error::from(error.without_url())
                .context(format!("cannot reach {url_shown}"))),
        };
        if args.count.is_some_and(|n| handled >= n) {
            return Ok(());
        }
        failed = true;
        match outcome {
            Ok(()) => eprintln!("alohook: the stream ended; reconnecting"),
            Err(error) => eprintln!(
                "alohook: {:#}; reconnecting in {:.1} s{}",
                error,
                backoff.as_secs_f64(),
                position.map_or(String::new(), |p| format!(" (resuming after {p})"))
            ),
        }
        // A connection that lasted was healthy: start the backoff over.
        if connected.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(250);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn read_stream(
    mut response: reqwest::Response,
    position: &mut Option<i64>,
    handled: &mut u64,
    count: Option<u64>,
    handler: &mut impl Handler,
) -> Result<(), Stopped> {
    let mut parser = Parser::default();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(()),
            Err(error) => return Err(Stopped::Connection(error.without_url().into())),
        };
        for message in parser.push(&chunk) {
            let Some(seq) = message.id.as_deref().and_then(|id| id.parse::<i64>().ok()) else {
                continue;
            };
            let Some(json) = message.data else {
                // The stream names its starting position (an `id:` without data) before any
                // change: a reconnect resumes there even when no change came.
                if position.is_none() {
                    *position = Some(seq);
                    handler.started(seq).map_err(Stopped::Handler)?;
                }
                continue;
            };
            if position.is_some_and(|p| seq <= p) {
                continue;
            }
            let received = Received {
                seq,
                kind: message.event.unwrap_or_default(),
                json,
            };
            handler.handle(&received).await.map_err(Stopped::Handler)?;
            *position = Some(seq);
            *handled += 1;
            if count.is_some_and(|n| *handled >= n) {
                return Ok(());
            }
        }
    }
}

/// The stream's URL from a base URL (`http://host:8080`, `host:8080`) or the stream URL itself.
fn stream_url(given: &str) -> anyhow::Result<reqwest::Url> {
    let given = given.trim();
    let with_scheme = if given.contains("://") {
        given.to_string()
    } else {
        format!("http://{given}")
    };
    let mut url = reqwest::Url::parse(&with_scheme).with_context(|| {
        format!("--api-url {given:?} is not a URL such as http://127.0.0.1:8080")
    })?;
    let path = url.path().trim_end_matches('/').to_string();
    let base = path
        .strip_suffix("/api/stream")
        .unwrap_or(&path)
        .to_string();
    url.set_path(&format!("{base}/api/stream"));
    url.set_query(None);
    Ok(url)
}

fn filters(args: &StreamArgs) -> Vec<(&'static str, String)> {
    [
        ("types", &args.types),
        ("call_id", &args.call_id),
        ("status", &args.status),
        ("phase", &args.phase),
        ("direction", &args.direction),
        ("hotline", &args.hotline),
        ("user_name", &args.user_name),
        ("transaction_id", &args.transaction_id),
        ("destination_number", &args.destination_number),
        ("phone", &args.phone),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.clone().map(|v| (name, v)))
    .collect()
}

fn start_position(args: &StreamArgs) -> Option<i64> {
    if args.from_start { Some(0) } else { args.since }
}

/// `alohook tail`: prints changes as they happen.
pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    struct Printer(Format);
    impl Handler for Printer {
        async fn handle(&mut self, change: &Received) -> anyhow::Result<()> {
            let line = match self.0 {
                Format::Json => change.json.clone(),
                Format::Pretty => pretty(change),
            };
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()?;
            Ok(())
        }
    }
    follow(
        &args.stream,
        start_position(&args.stream),
        &mut Printer(args.format),
    )
    .await
}

/// `alohook listen`: POSTs each change to the partner's handler, in order, never moving past one
/// the handler has not acknowledged.
pub async fn listen(args: ListenArgs) -> anyhow::Result<()> {
    let target = reqwest::Url::parse(&args.forward_to)
        .with_context(|| format!("--forward-to {:?} is not a URL", args.forward_to))?;
    if !matches!(target.scheme(), "http" | "https") {
        bail!("--forward-to {target} must be an http:// or https:// URL");
    }
    if let Some(path) = &args.state {
        check_writable(path)?;
    }
    let start = match (start_position(&args.stream), &args.state) {
        (Some(p), _) => Some(p),
        (None, Some(path)) => read_state(path)?,
        (None, None) => None,
    };
    if let Some(p) = start {
        eprintln!("alohook: forwarding changes after {p} to {target}");
    } else {
        eprintln!("alohook: forwarding new changes to {target}");
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(args.forward_timeout.max(1)))
        .user_agent(concat!("alohook/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let mut forwarder = Forwarder {
        client,
        target,
        headers: args.forward_headers.clone(),
        state: args.state.clone(),
    };
    follow(&args.stream, start, &mut forwarder).await
}

struct Forwarder {
    client: reqwest::Client,
    target: reqwest::Url,
    headers: Vec<(String, String)>,
    state: Option<PathBuf>,
}

impl Handler for Forwarder {
    async fn handle(&mut self, change: &Received) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(250);
        loop {
            let started = Instant::now();
            let mut request = self
                .client
                .post(self.target.clone())
                .header("content-type", "application/json");
            for (name, value) in &self.headers {
                request = request.header(name, value);
            }
            let sent = request.body(change.json.clone()).send().await;
            let took = started.elapsed().as_millis();
            let failure = match sent {
                Ok(response) if response.status().is_success() => {
                    println!(
                        "{} {} {} -> {} ({took} ms)",
                        change.seq,
                        change.kind,
                        call_id(&change.json),
                        response.status()
                    );
                    break;
                }
                Ok(response) => format!("{}", response.status()),
                Err(error) => format!("{:#}", anyhow::Error::from(error.without_url())),
            };
            println!(
                "{} {} {} -> {failure} ({took} ms); retrying in {:.1} s",
                change.seq,
                change.kind,
                call_id(&change.json),
                backoff.as_secs_f64()
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        if let Some(path) = &self.state {
            write_state(path, change.seq)?;
        }
        Ok(())
    }

    /// A first run (no state yet) keeps where the stream started, so that a restart before the
    /// first change misses nothing committed in between.
    fn started(&mut self, position: i64) -> anyhow::Result<()> {
        match &self.state {
            Some(path) if !path.exists() => write_state(path, position),
            _ => Ok(()),
        }
    }
}

/// The position kept in a state file, if the file exists.
fn read_state(path: &Path) -> anyhow::Result<Option<i64>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let seq = text.trim().parse::<i64>().with_context(|| {
                format!(
                    "{} does not hold a position (a seq): {text:?}",
                    path.display()
                )
            })?;
            Ok(Some(seq))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Fails at start, rather than after the first change, when the state file cannot be written.
fn check_writable(path: &Path) -> anyhow::Result<()> {
    let mut probe = path.as_os_str().to_owned();
    probe.push(".tmp");
    let probe = PathBuf::from(probe);
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| format!("--state {}: cannot write beside it", path.display()))
}

/// Replaces the state file whole (a new file renamed over the old), so that a crash leaves the
/// old position or the new one, never a torn one.
fn write_state(path: &Path, seq: i64) -> anyhow::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, format!("{seq}\n"))
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

fn call_id(json: &str) -> String {
    serde_json::from_str::<Value>(json)
        .ok()
        .and_then(|v| v["call"]["call_id"].as_str().map(str::to_string))
        .unwrap_or_else(|| "-".into())
}

/// `#12  2026-11-25 15:00:35+07:00  call.ended  C1  answered ended  0389… → 888  agent  ring 5s talk 295s`:
/// the position (what `--since` takes), when alohook received the event (in this machine's
/// zone), what happened, and the call as of the change.
fn pretty(change: &Received) -> String {
    let Ok(value) = serde_json::from_str::<Value>(&change.json) else {
        return change.json.clone();
    };
    let received = value["received_at"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M:%S%:z")
                .to_string()
        })
        .unwrap_or_default();
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    if change.kind == "event.received" {
        let kind = value["event"]["eventType"].as_str().unwrap_or("?");
        return format!(
            "#{}  {received}  {:<14} {} (eventType {kind})",
            change.seq,
            change.kind,
            value["event"]["call_id"].as_str().unwrap_or("-")
        );
    }
    let call = &value["call"];
    let mut durations = Vec::new();
    for (label, field) in [
        ("ring", "ring_seconds"),
        ("talk", "talk_seconds"),
        ("hold", "holding_duration"),
        ("total", "total_duration"),
    ] {
        if let Some(n) = call[field].as_i64() {
            durations.push(format!("{label} {n}s"));
        }
    }
    format!(
        "#{}  {received}  {:<14} {}  {} {}  {} → {}  {}  {}",
        change.seq,
        change.kind,
        text(&call["call_id"]),
        text(&call["call_status"]),
        text(&call["phase"]),
        text(&call["caller_number"]),
        text(&call["destination_number"]),
        text(&call["user_name"]),
        durations.join(" ")
    )
    .trim_end()
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_urls_in_every_form() {
        for (given, expected) in [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080/api/stream"),
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/api/stream"),
            ("127.0.0.1:8080", "http://127.0.0.1:8080/api/stream"),
            (
                "https://hooks.example.com/alohook/api/stream?since=3",
                "https://hooks.example.com/alohook/api/stream",
            ),
        ] {
            assert_eq!(stream_url(given).unwrap().as_str(), expected, "{given}");
        }
    }

    #[test]
    fn a_state_file_round_trips_and_a_bad_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("listen.state");
        assert_eq!(read_state(&path).unwrap(), None);
        write_state(&path, 41).unwrap();
        write_state(&path, 42).unwrap();
        assert_eq!(read_state(&path).unwrap(), Some(42));
        std::fs::write(&path, "garbage").unwrap();
        assert!(read_state(&path).is_err());
    }

    #[test]
    fn a_pretty_line_says_what_happened_to_the_call() {
        let change = Received {
            seq: 3,
            kind: "call.ended".into(),
            json: r#"{"seq":3,"type":"call.ended","event_id":9,"received_at":"2024-01-13T08:05:31Z","call":{"call_id":"C1","call_status":"answered","phase":"ended","caller_number":"0389","destination_number":"888","user_name":"agent1","ring_seconds":5,"talk_seconds":295,"holding_duration":0}}"#.into(),
        };
        let line = pretty(&change);
        for part in [
            "call.ended",
            "C1",
            "answered ended",
            "0389 → 888",
            "agent1",
            "ring 5s talk 295s hold 0s",
        ] {
            assert!(line.contains(part), "{part:?} in {line:?}");
        }
    }
}
