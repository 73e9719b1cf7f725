//! The change feed over real HTTP: `/api/changes` and `/api/stream`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use alohook::feed::sse::Parser;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::sim::{sim_args, simulate};
use crate::support::*;

/// One change as a stream delivered it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub seq: i64,
    pub kind: String,
    pub change: Value,
}

/// A live stream opened with the test token.
pub struct Stream {
    response: reqwest::Response,
    parser: Parser,
    /// The position the server says the stream starts after.
    pub start: Option<i64>,
    pending: Vec<Seen>,
}

impl Stream {
    pub async fn open(base: &str, query: &str, last_event_id: Option<i64>) -> Stream {
        let response = Self::request(base, query, last_event_id).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Stream {
            response,
            parser: Parser::default(),
            start: None,
            pending: Vec::new(),
        }
    }

    /// The stream, or `None` while the server does not answer 200.
    pub async fn try_open(base: &str, query: &str, last_event_id: Option<i64>) -> Option<Stream> {
        let client = reqwest::Client::new();
        let mut request = client
            .get(format!("{base}/api/stream{query}"))
            .bearer_auth(TOKEN);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.ok()?;
        (response.status() == StatusCode::OK).then(|| Stream {
            response,
            parser: Parser::default(),
            start: None,
            pending: Vec::new(),
        })
    }

    pub async fn request(base: &str, query: &str, last_event_id: Option<i64>) -> reqwest::Response {
        let client = reqwest::Client::new();
        let mut request = client
            .get(format!("{base}/api/stream{query}"))
            .bearer_auth(TOKEN);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        request.send().await.unwrap()
    }

    /// The next change, or `None` when none comes within `wait` or the stream ends.
    pub async fn next(&mut self, wait: Duration) -> Option<Seen> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if !self.pending.is_empty() {
                return Some(self.pending.remove(0));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .ok()??;
            for message in self.parser.push(&chunk) {
                let id: i64 = message.id.as_deref().unwrap().parse().unwrap();
                match message.data {
                    None => {
                        assert!(self.start.is_none(), "one starting position");
                        self.start = Some(id);
                    }
                    Some(data) => {
                        assert!(!data.contains('\n'), "one data line");
                        let change: Value = serde_json::from_str(&data).unwrap();
                        assert_eq!(change["seq"], id, "id is the change's seq");
                        assert_eq!(change["type"].as_str(), message.event.as_deref());
                        self.pending.push(Seen {
                            seq: id,
                            kind: message.event.unwrap(),
                            change,
                        });
                    }
                }
            }
        }
    }

    /// Changes until one at `last` or beyond has come, within `wait` overall.
    pub async fn until(&mut self, last: i64, wait: Duration) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut seen = Vec::new();
        while seen.last().is_none_or(|s: &Seen| s.seq < last) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(s) => seen.push(s),
                None => panic!(
                    "the stream stopped at {:?}, waiting for {last}",
                    seen.last().map(|s| s.seq)
                ),
            }
        }
        seen
    }
}

/// Follows `base`'s stream from the start for as long as the receiver is held, reconnecting
/// (with Last-Event-ID: the last change it got) whenever the server goes away.
pub fn follow(base: String) -> tokio::sync::mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut last = 0;
        while !tx.is_closed() {
            let Some(mut stream) = Stream::try_open(&base, "", Some(last)).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            while let Some(seen) = stream.next(Duration::from_secs(60)).await {
                last = seen.seq;
                if tx.send(seen).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// What `follow` delivered, until a change at `last` or beyond.
pub async fn received_until(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
    last: i64,
) -> Vec<Seen> {
    let mut seen: Vec<Seen> = Vec::new();
    while seen.last().is_none_or(|s| s.seq < last) {
        match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
            Ok(Some(s)) => seen.push(s),
            _ => panic!(
                "the reader stopped at {:?} of {last}, after {} changes",
                seen.last().map(|s| s.seq),
                seen.len()
            ),
        }
    }
    seen
}

/// Every change after `since` that matches `query` (`&`-joined filters), paged through
/// `/api/changes`.
pub async fn all_changes(server: &TestServer, since: i64, query: &str) -> Vec<Value> {
    changes_of(&server.base, since, query).await
}

/// [`all_changes`] of the alohook at `base`.
pub async fn changes_of(base: &str, since: i64, query: &str) -> Vec<Value> {
    let client = reqwest::Client::new();
    let mut since = since;
    let mut all = Vec::new();
    loop {
        let response = client
            .get(format!("{base}/api/changes?since={since}&limit=37{query}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let page: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap().clone();
        let next = page["next_since"].as_i64().unwrap();
        if items.is_empty() {
            assert_eq!(next, since, "an empty page gives back since");
            return all;
        }
        assert_eq!(next, items.last().unwrap()["seq"].as_i64().unwrap());
        since = next;
        all.extend(items);
    }
}

/// Strictly increasing positions, each event once.
fn assert_ordered_once(changes: &[Value]) {
    let seqs: Vec<i64> = changes.iter().map(|c| c["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "increasing: {seqs:?}");
    let events: HashSet<i64> = changes
        .iter()
        .map(|c| c["event_id"].as_i64().unwrap())
        .collect();
    assert_eq!(events.len(), changes.len(), "one change per event");
}

fn values(seen: &[Seen]) -> Vec<Value> {
    seen.iter().map(|s| s.change.clone()).collect()
}

fn ringing(call_id: &str) -> Value {
    json!({"call_id": call_id, "call_status": "ringing", "direction": "inbound",
           "caller_number": "0389123456", "destination_number": "888", "hotline": "19001234",
           "starttime": "2024-01-13 15:00:30", "userName": "agent1"})
}

fn missed(call_id: &str) -> Value {
    json!({"call_id": call_id, "call_status": "missed", "direction": "inbound",
           "caller_number": "0389123456", "hotline": "19001234",
           "starttime": "2024-01-13 15:00:30"})
}

crate::on_every_backend! {
/// Every acknowledged new event has exactly one change, with the type its merge deserves;
/// resends have none.
async fn one_change_per_new_event_none_for_resends(db) {
    let server = TestServer::start(&db).await;
    // Out of order: the final event first, then the mid-call one.
    let final_first = server.send(&ended("A1")).await;
    let mid_after = server.send(&in_progress("A1")).await;
    let (status, resend) = server.post(ended("A1").to_string()).await;
    assert_eq!((status, resend["duplicate"].as_bool()), (StatusCode::OK, Some(true)));
    // In order: ringing, answered, ended.
    let r = server.send(&ringing("A2")).await;
    let a = server.send(&json!({"call_id": "A2", "call_status": "answered",
        "starttime": "2024-01-13 15:00:30", "answertime": "2024-01-13 15:00:35"})).await;
    let e = server.send(&json!({"call_id": "A2", "call_status": "answered",
        "starttime": "2024-01-13 15:00:30", "answertime": "2024-01-13 15:00:35",
        "endtime": "2024-01-13 15:01:00"})).await;
    // A missed call is created ended; a late ringing event of it is an update.
    let m = server.send(&missed("A3")).await;
    let late = server.send(&ringing("A3")).await;
    // Not a call event: its payload as sent, on one line.
    let survey_body = "{\"call_id\":\"A4\",\n \"eventType\":\"survey\", \"score\": 5}";
    let (status, survey) = server.post(survey_body).await;
    assert_eq!(status, StatusCode::OK);
    let survey = survey["event_id"].as_i64().unwrap();
    // Quarantined bodies make no change.
    let (status, _) = server.post("{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let changes = all_changes(&server, 0, "").await;
    assert_ordered_once(&changes);
    let got: Vec<(i64, &str)> = changes
        .iter()
        .map(|c| (c["event_id"].as_i64().unwrap(), c["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            (final_first, "call.ended"),
            (mid_after, "call.updated"),
            (r, "call.created"),
            (a, "call.updated"),
            (e, "call.ended"),
            (m, "call.ended"),
            (late, "call.updated"),
            (survey, "event.received"),
        ]
    );
    assert_eq!(changes[0]["seq"], 1);
    for c in &changes {
        let received = c["received_at"].as_str().unwrap();
        assert!(received.ends_with('Z'), "{received}");
    }
    // Each change holds the call right after its event; the last one is the call as it is.
    assert_eq!(changes[0]["call"]["event_count"], 1);
    assert_eq!(changes[0]["call"]["phase"], "ended");
    assert_eq!(changes[1]["call"], server.call("A1").await);
    assert_eq!(changes[4]["call"], server.call("A2").await);
    assert_eq!(changes[3]["call"]["phase"], "in_progress");
    assert_eq!(changes[6]["call"]["call_status"], "missed", "never rolled back");
    assert_eq!(changes[7]["event"], json!({"call_id": "A4", "eventType": "survey", "score": 5}));
    assert!(changes[7].get("call").is_none());

    // Filters: the call as of the change; a call filter leaves out event.received.
    let ended_only = all_changes(&server, 0, "&types=call.ended").await;
    assert_eq!(ended_only.len(), 3);
    let two_types = all_changes(&server, 0, "&types=call.created,event.received").await;
    assert_eq!(two_types.len(), 2);
    let missed_status = all_changes(&server, 0, "&status=MISSED").await;
    assert_eq!(missed_status.len(), 2, "both changes of A3 show it missed");
    let a2 = all_changes(&server, 0, "&call_id=A2&phase=in_progress").await;
    assert_eq!(a2.len(), 1);
    let by_phone = all_changes(&server, 0, "&phone=%2B84389123456&direction=INBOUND&hotline=19001234").await;
    assert_eq!(by_phone.len(), 5, "A2's three (the number stays once known), A3's two");
    let by_transaction = all_changes(&server, 0, "&transaction_id=TRANSID_1111").await;
    assert_eq!(by_transaction.len(), 2, "A1's two events");
    let by_extension = all_changes(&server, 0, "&destination_number=888").await;
    assert_eq!(by_extension.len(), 6, "A1's two, A2's three, A3 once its late ringing named it");
    let by_agent = all_changes(&server, 0, "&user_name=agent1").await;
    assert_eq!(by_agent.len(), 4, "A2's three, and A3 once its late ringing named the agent");
    // Paged from the middle.
    let rest = all_changes(&server, 3, "").await;
    assert_eq!(rest, changes[3..].to_vec());
    server.stop().await;
}

async fn bad_parameters_are_named(db) {
    let server = TestServer::start(&db).await;
    for (query, parameter) in [
        ("since=-1", "since"),
        ("since=abc", "since"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("types=call.created,call.bogus", "types"),
        ("phase=over", "phase"),
        ("direction=sideways", "direction"),
        ("color=red", "color"),
        // Beyond the newest change: a position kept from another database.
        ("since=5000", "since"),
    ] {
        let (status, body) = server.get(&format!("/api/changes?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"], "invalid_parameter");
        assert_eq!(body["parameter"], parameter, "{query}");
        if parameter != "limit" {
            let response = Stream::request(&server.base, &format!("?{query}"), None).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "stream {query}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["parameter"], parameter, "stream {query}");
        }
    }
    let response = Stream::request(&server.base, "", None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);
    for bad in ["x", "-1", "5000"] {
        let response = Stream::request(&server.base, "?since=0", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        drop(response);
        let bad_id = reqwest::Client::new()
            .get(server.url("/api/stream?since=0"))
            .bearer_auth(TOKEN)
            .header("Last-Event-ID", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(bad_id.status(), StatusCode::BAD_REQUEST, "Last-Event-ID {bad}");
        let body: Value = bad_id.json().await.unwrap();
        assert_eq!(body["parameter"], "Last-Event-ID");
    }
    // The newest position is fine, before and after it moves.
    let (status, _) = server.get("/api/changes?since=0").await;
    assert_eq!(status, StatusCode::OK);
    server.send(&ringing("P1")).await;
    let mut at_end = Stream::open(&server.base, "?since=1", None).await;
    assert!(at_end.next(Duration::from_millis(200)).await.is_none());
    server.send(&missed("P1")).await;
    assert_eq!(at_end.next(Duration::from_secs(5)).await.unwrap().seq, 2);
    for path in ["/api/stream", "/api/changes"] {
        let (status, _) = server.get_with_auth(path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    server.stop().await;
}

/// A reader from 0 while the simulator runs (resends and reordering on) sees every change once,
/// in increasing order; the last change of each call is the call as the API shows it.
async fn a_stream_from_zero_sees_every_change_once_while_the_simulator_runs(db) {
    let server = TestServer::start(&db).await;
    let stream = Stream::open(&server.base, "?since=0", None).await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut stream = stream;
        while let Some(s) = stream.next(Duration::from_secs(60)).await {
            if seen_tx.send(s).is_err() {
                break;
            }
        }
    });
    let (ok, report) = simulate(sim_args(
        &server.base,
        400,
        &["--duplicates", "0.2", "--reorder", "0.3", "--concurrency", "32"],
    ))
    .await;
    assert!(ok, "{report:#}");
    let changes = all_changes(&server, 0, "").await;
    let last = changes.last().unwrap()["seq"].as_i64().unwrap();
    let mut seen = Vec::new();
    while seen.last().is_none_or(|s: &Seen| s.seq < last) {
        let next = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv()).await;
        seen.push(next.expect("the stream keeps up").expect("the stream is open"));
    }
    reader.abort();
    assert_eq!(
        changes.len() as u64,
        report["acknowledged"].as_u64().unwrap(),
        "one change per distinct event acknowledged"
    );
    assert_ordered_once(&changes);
    assert_eq!(values(&seen), changes, "the stream and /api/changes agree");
    let mut last: BTreeMap<String, Value> = BTreeMap::new();
    for c in &changes {
        last.insert(c["call"]["call_id"].as_str().unwrap().to_string(), c["call"].clone());
    }
    assert_eq!(last.len(), 400);
    for (call_id, call) in last {
        assert_eq!(call, server.call(&call_id).await, "{call_id}");
    }
    server.stop().await;
}

/// Disconnect mid-stream; reconnect with Last-Event-ID (and the since=0 an EventSource was opened
/// with, which the header beats): nothing missed, nothing twice.
async fn a_reconnect_with_last_event_id_resumes_exactly(db) {
    let server = TestServer::start(&db).await;
    for i in 0..30 {
        server.send(&ringing(&format!("R{i}"))).await;
    }
    let mut stream = Stream::open(&server.base, "?since=0", None).await;
    let mut seen = Vec::new();
    for _ in 0..12 {
        seen.push(stream.next(Duration::from_secs(5)).await.unwrap());
    }
    assert_eq!(stream.start, Some(0));
    drop(stream);
    for i in 0..30 {
        server.send(&missed(&format!("R{i}"))).await;
    }
    let resume = seen.last().unwrap().seq;
    let mut stream = Stream::open(&server.base, "?since=0", Some(resume)).await;
    assert_eq!(stream.start, None);
    seen.extend(stream.until(60, Duration::from_secs(10)).await);
    assert_eq!(stream.start, Some(resume));
    assert_eq!(values(&seen), all_changes(&server, 0, "").await);
    // Live from there: a new event arrives on the open stream.
    server.send(&ended("R0")).await;
    let live = stream.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!((live.seq, live.kind.as_str()), (61, "call.updated"));
    server.stop().await;
}

/// Without a position a stream starts at the end; filters match live as they do in a replay.
async fn a_new_stream_sees_only_new_changes_and_filters_agree_with_a_replay(db) {
    let server = TestServer::start(&db).await;
    for i in 0..5 {
        server.send(&ringing(&format!("N{i}"))).await;
    }
    let mut everything = Stream::open(&server.base, "", None).await;
    let mut missed_only = Stream::open(&server.base, "?status=missed&types=call.ended,call.updated", None).await;
    // Both name where they start.
    assert!(everything.next(Duration::from_millis(300)).await.is_none());
    assert_eq!(everything.start, Some(5));
    for i in 0..5 {
        server.send(&missed(&format!("N{i}"))).await;
        server.send(&ringing(&format!("M{i}"))).await;
    }
    let live = everything.until(15, Duration::from_secs(10)).await;
    assert_eq!(live.first().unwrap().seq, 6);
    assert_eq!(values(&live), all_changes(&server, 5, "").await);
    let filtered = missed_only.until(14, Duration::from_secs(10)).await;
    assert_eq!(missed_only.start, Some(5));
    let replay = all_changes(&server, 5, "&status=missed&types=call.ended,call.updated").await;
    assert_eq!(replay.len(), 5);
    assert_eq!(values(&filtered), replay);
    server.stop().await;
}

/// `--max-streams` streams at once; the next is 503 with Retry-After until one closes.
async fn streams_beyond_the_limit_are_503(db) {
    let mut settings = settings(&db);
    settings.max_streams = Some(2);
    let server = TestServer::start_with(settings, None).await;
    let first = Stream::open(&server.base, "", None).await;
    let _second = Stream::open(&server.base, "", None).await;
    let refused = Stream::request(&server.base, "", None).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "unavailable");
    assert!(body["detail"].as_str().unwrap().contains("--max-streams"), "{body}");
    // Reads do not count against streams.
    let (status, _) = server.get("/api/changes").await;
    assert_eq!(status, StatusCode::OK);
    drop(first);
    let mut reopened = None;
    // Until the server has seen the first stream go, a request is refused (and counted) too.
    let mut refused_meanwhile = 0;
    for _ in 0..100 {
        let response = Stream::request(&server.base, "", None).await;
        if response.status() == StatusCode::OK {
            reopened = Some(response);
            break;
        }
        refused_meanwhile += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reopened.is_some(), "a place frees when a stream closes");
    let metrics = server.metrics().await;
    let refused = format!("alohook_streams_refused_total {}", 1 + refused_meanwhile);
    assert!(metrics.contains(&refused), "{refused} in {metrics}");
    server.stop().await;
}

/// A stream that is listened to is not an idle connection, even past the client timeout; a
/// shutdown ends it cleanly.
async fn streams_outlive_the_client_timeout_and_end_on_shutdown(db) {
    let mut settings = settings(&db);
    settings.client_timeout = Some(1);
    let server = TestServer::start_with(settings, None).await;
    let mut stream = Stream::open(&server.base, "", None).await;
    assert!(stream.next(Duration::from_secs(3)).await.is_none());
    server.send(&ringing("T1")).await;
    let seen = stream.next(Duration::from_secs(5)).await.expect("still open");
    assert_eq!(seen.kind, "call.created");
    let stopped = tokio::time::timeout(Duration::from_secs(10), server.stop()).await;
    assert!(stopped.is_ok(), "shutdown does not wait for open streams");
    assert!(stream.next(Duration::from_secs(5)).await.is_none(), "the stream ended");
}
}

/// An idle stream sends a keep-alive comment at least every 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_sends_keep_alives() {
    let db = Db::sqlite();
    let server = TestServer::start(&db).await;
    let mut response = Stream::request(&server.base, "", None).await;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(17);
    while !text.contains(": keep-alive\n\n") {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("no keep-alive within 17 s: {other:?}; got {text:?}"),
        }
    }
    assert!(text.starts_with("retry: "), "{text:?}");
    server.stop().await;
}

const BIN: &str = env!("CARGO_BIN_EXE_alohook");

/// `alohook tail` or `listen` with the test token, its output captured.
fn client_command(command: &str, base: &str, extra: &[&str]) -> tokio::process::Command {
    let mut child = tokio::process::Command::new(BIN);
    child
        .args([command, "--api-url", base, "--api-token", TOKEN])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    child
}

async fn finished(child: tokio::process::Child, within: Duration) -> std::process::Output {
    let output = tokio::time::timeout(within, child.wait_with_output())
        .await
        .expect("it stops after --count changes")
        .unwrap();
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

crate::on_every_backend! {
/// `alohook tail --count`: prints every change once, in order, live ones too, and goes on across
/// a server that is killed and started again (resuming after the last change it printed).
async fn tail_prints_every_change_once_across_a_server_restart(db) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let database = db.database();
    let extra: Vec<&str> = match &database {
        Some(url) => vec!["--database", url],
        None => vec![],
    };
    let mut server = serve_process(db.path(), port, &extra);
    let client = reqwest::Client::new();
    let send = |body: Value| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let r = client
                .post(format!("{base}/webhooks/alohub"))
                .header("authorization", KEY)
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }
    };
    for i in 0..4 {
        send(ringing(&format!("T{i}"))).await;
    }
    let tail = client_command(
        "tail",
        &base,
        &["--from-start", "--count", "12", "--format", "json"],
    )
    .spawn()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..4 {
        send(missed(&format!("T{i}"))).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill().unwrap();
    server.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server = serve_process(db.path(), port, &extra);
    for i in 0..4 {
        send(ended(&format!("T{i}"))).await;
    }
    let output = finished(tail, Duration::from_secs(30)).await;
    let printed: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("reconnecting"), "{stderr}");
    let all = changes_of(&base, 0, "").await;
    assert_eq!(all.len(), 12);
    assert_eq!(printed, all);

    // The readable form: one line per change, from a given position.
    let output = finished(
        client_command("tail", &base, &["--since", "10", "--count", "2"])
            .spawn()
            .unwrap(),
        Duration::from_secs(15),
    )
    .await;
    let lines: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("call.updated") && lines[0].contains("T2"),
        "{lines:?}"
    );
    // A wrong token stops it at once, saying why.
    let output = tokio::process::Command::new(BIN)
        .args(["tail", "--api-url", &base, "--from-start"])
        .env("ALOHOOK_API_TOKEN", "wrong")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("401"), "{stderr}");

    // `tail | head -1`: once its reader is gone, tail is done (not reconnecting forever).
    let mut piped = client_command("tail", &base, &["--from-start", "--format", "json"])
        .spawn()
        .unwrap();
    let mut out = piped.stdout.take().unwrap();
    let mut first = [0u8; 10];
    tokio::io::AsyncReadExt::read_exact(&mut out, &mut first)
        .await
        .unwrap();
    drop(out);
    server.kill().unwrap();
    server.wait().unwrap();
    server = serve_process(db.path(), port, &extra);
    send(ringing("T9")).await;
    let status = tokio::time::timeout(Duration::from_secs(20), piped.wait())
        .await
        .expect("tail stops once its output is closed")
        .unwrap();
    assert!(status.success(), "{status:?}");
    server.kill().unwrap();
    server.wait().unwrap();
}
}

/// What the test's handler was sent: every request's body and content type, in order.
#[derive(Default)]
struct Handled {
    requests: Vec<(String, String, StatusCode)>,
    answered: usize,
    /// The `X-Api-Key` header of each request.
    api_keys: Vec<String>,
}

/// A handler that fails its first `failures` requests (500), then acknowledges (200).
async fn failing_handler(failures: usize) -> (String, std::sync::Arc<std::sync::Mutex<Handled>>) {
    use axum::http::HeaderMap;
    let handled = std::sync::Arc::new(std::sync::Mutex::new(Handled::default()));
    let state = handled.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let state = state.clone();
            async move {
                let mut handled = state.lock().unwrap();
                handled.answered += 1;
                let status = if handled.answered <= failures {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                };
                let content_type = headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                let api_key = headers
                    .get("x-api-key")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                handled.api_keys.push(api_key);
                handled.requests.push((body, content_type, status));
                status
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, handled)
}

crate::on_every_backend! {
/// `alohook listen`: every change reaches the handler, in order, as the change JSON exactly,
/// after the handler's failures stop; the state file lets a restart resume after the last
/// change the handler acknowledged.
async fn listen_forwards_every_change_in_order_past_a_failing_handler(db) {
    let server = TestServer::start(&db).await;
    let (hook, handled) = failing_handler(4).await;
    for i in 0..6 {
        server.send(&ringing(&format!("L{i}"))).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("listen.state");
    let state_arg = state.to_str().unwrap();
    let listen = client_command(
        "listen",
        &server.base,
        &[
            "--forward-to",
            &hook,
            "--from-start",
            "--count",
            "9",
            "--state",
            state_arg,
            "--forward-header",
            "X-Api-Key: handler-secret",
        ],
    )
    .spawn()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        server.send(&missed(&format!("L{i}"))).await;
    }
    let output = finished(listen, Duration::from_secs(30)).await;
    let all = all_changes(&server, 0, "").await;
    assert_eq!(all.len(), 9);
    let requests = std::mem::take(&mut handled.lock().unwrap().requests);
    // The first change was tried until the failures stopped; nothing went past it meanwhile.
    let seqs: Vec<i64> = requests
        .iter()
        .map(|(body, _, _)| {
            serde_json::from_str::<Value>(body).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(&seqs[..5], &[1, 1, 1, 1, 1], "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "in order: {seqs:?}");
    let acknowledged: Vec<Value> = requests
        .iter()
        .filter(|(_, _, status)| *status == StatusCode::OK)
        .map(|(body, content_type, _)| {
            assert_eq!(content_type, "application/json");
            serde_json::from_str(body).unwrap()
        })
        .collect();
    assert!(
        handled
            .lock()
            .unwrap()
            .api_keys
            .iter()
            .all(|k| k == "handler-secret")
    );
    assert_eq!(
        acknowledged, all,
        "each change once acknowledged, as the stream shows it"
    );
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(printed.contains("500 Internal Server Error"), "{printed}");
    assert!(printed.contains("200 OK"), "{printed}");
    assert_eq!(std::fs::read_to_string(&state).unwrap().trim(), "9");

    // Started again with the state file (and no position): only what came since.
    for i in 3..5 {
        server.send(&missed(&format!("L{i}"))).await;
    }
    let output = finished(
        client_command(
            "listen",
            &server.base,
            &["--forward-to", &hook, "--count", "2", "--state", state_arg],
        )
        .spawn()
        .unwrap(),
        Duration::from_secs(20),
    )
    .await;
    let requests = std::mem::take(&mut handled.lock().unwrap().requests);
    let seqs: Vec<i64> = requests
        .iter()
        .map(|(body, _, _)| {
            serde_json::from_str::<Value>(body).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        seqs,
        vec![10, 11],
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read_to_string(&state).unwrap().trim(), "11");

    // A first run with a state file keeps where the stream started, before any change: what is
    // committed before it runs again is not skipped.
    let fresh = dir.path().join("fresh.state");
    let mut first_run = client_command(
        "listen",
        &server.base,
        &["--forward-to", &hook, "--state", fresh.to_str().unwrap()],
    )
    .spawn()
    .unwrap();
    for _ in 0..100 {
        if fresh.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first_run.kill().await.unwrap();
    assert_eq!(std::fs::read_to_string(&fresh).unwrap().trim(), "11");
    server.send(&ended("L0")).await;
    finished(
        client_command(
            "listen",
            &server.base,
            &["--forward-to", &hook, "--count", "1", "--state", fresh.to_str().unwrap()],
        )
        .spawn()
        .unwrap(),
        Duration::from_secs(20),
    )
    .await;
    let requests = std::mem::take(&mut handled.lock().unwrap().requests);
    assert_eq!(requests.len(), 1);
    assert!(requests[0].0.starts_with("{\"seq\":12,"), "{}", requests[0].0);

    // Mistakes are refused at start, not after the first change.
    for (args, says) in [
        (vec!["--forward-to", "ftp://127.0.0.1/x"], "http"),
        (vec!["--forward-to", &hook, "--state", "/nonexistent/dir/state"], "--state"),
        (vec!["--forward-to", &hook, "--forward-header", "no colon"], "Name: value"),
    ] {
        let output = client_command("listen", &server.base, &args).output().await.unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    server.stop().await;
}
}
