//! Forwarding: destinations through the API and the command line.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

/// A request to the API with the test token and a JSON body.
async fn send_json(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = server
        .client
        .request(method, server.url(path))
        .bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn missed(call_id: &str) -> Value {
    json!({"call_id": call_id, "call_status": "missed", "direction": "inbound",
           "caller_number": "0389123456", "hotline": "19001234",
           "starttime": "2024-01-13 15:00:30"})
}

crate::on_every_backend! {
/// Create, read, change, rotate the secret of and remove a destination.
async fn a_destinations_life_through_the_api(db) {
    use reqwest::Method;
    let server = TestServer::start(&db).await;
    let (status, created) = send_json(&server, Method::POST, "/api/destinations",
        Some(json!({"url": "https://crm.example.com/hooks/alohub", "types": ["call.ended"],
            "filter": {"hotline": "19001234", "direction": "inbound", "status": "missed"},
            "headers": {"X-Api-Key": "k"}, "ordering": "per_call", "start": "now",
            "timeout_seconds": 15, "max_in_flight": 8, "description": "CRM"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("dst_"));
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(alohook::forward::sign::secret_key(&secret).unwrap().len(), 32);
    assert_eq!(created["types"], json!(["call.ended"]));
    assert_eq!(created["filter"]["status"], "missed");
    assert_eq!(created["enabled"], true);
    assert_eq!(created["disabled_reason"], Value::Null);
    assert_eq!(created["description"], "CRM");
    assert_eq!(created["stats"]["pending"], 0);

    let (status, shown) = server.get(&format!("/api/destinations/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(shown.get("secret").is_none(), "the secret is shown once: {shown}");
    for field in ["url", "types", "filter", "headers", "ordering", "start", "timeout_seconds",
                  "max_in_flight", "description", "enabled", "disabled_reason", "stats"] {
        assert_eq!(shown[field], created[field], "{field}");
    }
    for stat in ["pending", "delivered", "failed_attempts", "dead", "oldest_pending_seconds",
                 "last_success_at", "last_error"] {
        assert!(shown["stats"].get(stat).is_some(), "{stat}");
    }
    let (_, listed) = server.get("/api/destinations").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    let (_, shown_secret) = server.get(&format!("/api/destinations/{id}/secret")).await;
    assert_eq!(shown_secret["secret"], secret);

    // Matching changes count as pending until they are delivered.
    server.send(&missed("D1")).await;
    server.send(&json!({"call_id": "D2", "call_status": "answered"})).await;
    let (_, shown) = server.get(&format!("/api/destinations/{id}")).await;
    assert_eq!(shown["stats"]["pending"], 1, "{shown}");
    assert!(shown["stats"]["oldest_pending_seconds"].as_i64().unwrap() >= 0);

    let (status, changed) = send_json(&server, Method::PATCH, &format!("/api/destinations/{id}"),
        Some(json!({"enabled": false, "max_in_flight": 2, "filter": {"status": "busy"}}))).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["enabled"], false);
    assert!(changed["disabled_reason"].is_string());
    assert_eq!(changed["max_in_flight"], 2);
    assert_eq!(changed["description"], "CRM", "what a patch does not name stays");
    assert_eq!(changed["stats"]["pending"], 0, "the filter follows the patch");
    let (_, enabled) = send_json(&server, Method::PATCH, &format!("/api/destinations/{id}"),
        Some(json!({"enabled": true}))).await;
    assert_eq!((enabled["enabled"].clone(), enabled["disabled_reason"].clone()), (json!(true), Value::Null));

    let (status, rotated) = send_json(&server, Method::POST,
        &format!("/api/destinations/{id}/rotate-secret"), None).await;
    assert_eq!(status, StatusCode::OK);
    let new_secret = rotated["secret"].as_str().unwrap();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);
    let (_, shown_secret) = server.get(&format!("/api/destinations/{id}/secret")).await;
    assert_eq!(shown_secret["secret"], new_secret);

    let (status, _) = send_json(&server, Method::DELETE, &format!("/api/destinations/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for (method, path) in [
        (Method::GET, format!("/api/destinations/{id}")),
        (Method::GET, format!("/api/destinations/{id}/secret")),
        (Method::PATCH, format!("/api/destinations/{id}")),
        (Method::DELETE, format!("/api/destinations/{id}")),
        (Method::POST, format!("/api/destinations/{id}/rotate-secret")),
    ] {
        let (status, body) = send_json(&server, method.clone(), &path, Some(json!({}))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(body["error"], "not_found");
    }
    server.stop().await;
}

/// Each bad field is a 400 naming it; a history backfill starts where asked.
async fn bad_fields_are_named_and_start_backfills(db) {
    use reqwest::Method;
    let server = TestServer::start(&db).await;
    for i in 0..3 {
        server.send(&missed(&format!("S{i}"))).await;
    }
    for (body, parameter) in [
        (json!({}), "url"),
        (json!({"url": "ftp://example.com/x"}), "url"),
        (json!({"url": "https://h/x", "types": ["call.bogus"]}), "types"),
        (json!({"url": "https://h/x", "filter": {"colour": "red"}}), "filter"),
        (json!({"url": "https://h/x", "ordering": "random"}), "ordering"),
        (json!({"url": "https://h/x", "start": 99}), "start"),
        (json!({"url": "https://h/x", "max_in_flight": 0}), "max_in_flight"),
    ] {
        let (status, error) = send_json(&server, Method::POST, "/api/destinations", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error["error"], "invalid_parameter");
        assert_eq!(error["parameter"], parameter, "{body}: {error}");
    }
    let response = server.client.post(server.url("/api/destinations")).bearer_auth(TOKEN)
        .body("{not json").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    for (start, pending) in [(json!("beginning"), 3), (json!(1), 2), (json!("now"), 0)] {
        let (status, created) = send_json(&server, Method::POST, "/api/destinations",
            Some(json!({"url": "http://127.0.0.1:9/hook", "start": start}))).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(created["stats"]["pending"], pending, "start {start}");
        assert_eq!(created["start"], start);
    }
    let (status, _) = server.get_with_auth("/api/destinations", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}
}

crate::on_every_backend! {
/// `alohook destinations add / list / show / remove` against the configured database.
async fn destinations_from_the_command_line(db) {
    let run = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_alohook"));
        command.arg("destinations").arg("--data-dir").arg(db.path());
        if let Some(url) = db.database() {
            command.args(["--database", &url]);
        }
        let output = command.args(args).env("ALOHOOK_LOG", "warn").output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let (ok, out, err) = run(&["list"]);
    assert!(ok, "{err}");
    assert!(out.contains("no destinations"), "{out}");
    let (ok, out, err) = run(&[
        "add", "https://crm.example.com/hook", "--types", "call.ended", "--status", "missed",
        "--header", "X-Api-Key: k", "--start", "beginning", "--description", "CRM",
    ]);
    assert!(ok, "{err}");
    let id = out.lines().find_map(|l| l.strip_prefix("id:")).unwrap().trim().to_string();
    let secret = out.lines().find_map(|l| l.strip_prefix("secret:")).unwrap().trim().to_string();
    assert!(id.starts_with("dst_") && secret.starts_with("whsec_"), "{out}");
    let (ok, out, _) = run(&["list"]);
    assert!(ok && out.contains(&id) && out.contains("(CRM)"), "{out}");
    let (ok, out, _) = run(&["show", &id]);
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["filter"]["status"], "missed");
    assert_eq!(shown["headers"]["X-Api-Key"], "k");
    assert_eq!(shown["start"], "beginning");
    assert!(shown.get("secret").is_none());
    // The server sees what the command line made.
    let server = TestServer::start(&db).await;
    let (status, listed) = server.get("/api/destinations").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["items"][0]["id"], id);
    server.stop().await;
    let (ok, _, err) = run(&["add", "ftp://x/y"]);
    assert!(!ok && err.contains("URL"), "{err}");
    let (ok, _, err) = run(&["add", "https://h/x", "--ordering", "random"]);
    assert!(!ok && err.contains("--ordering"), "{err}");
    let (ok, out, _) = run(&["remove", &id]);
    assert!(ok && out.contains(&id));
    let (ok, _, err) = run(&["show", &id]);
    assert!(!ok && err.contains("no destination"), "{err}");
}
}

/// What a test receiver was sent: each request's headers and body, and what it answered.
#[derive(Default)]
struct Received {
    requests: Vec<(axum::http::HeaderMap, String, u16)>,
}

/// A receiver on loopback that answers each request with `answer(n)` (n counts from 0): a
/// status and, optionally, a Retry-After.
async fn receiver(
    answer: impl Fn(usize) -> (u16, Option<&'static str>) + Send + Sync + 'static,
) -> (String, std::sync::Arc<std::sync::Mutex<Received>>) {
    use axum::http::HeaderMap;
    let received = std::sync::Arc::new(std::sync::Mutex::new(Received::default()));
    let state = received.clone();
    let answer = std::sync::Arc::new(answer);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let (state, answer) = (state.clone(), answer.clone());
            async move {
                let mut received = state.lock().unwrap();
                let (status, retry_after) = answer(received.requests.len());
                received.requests.push((headers, body, status));
                let mut response = axum::response::Response::new(axum::body::Body::from("thanks"));
                *response.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
                if let Some(r) = retry_after {
                    response
                        .headers_mut()
                        .insert("retry-after", axum::http::HeaderValue::from_static(r));
                }
                response
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// Waits until `done` holds of what the receiver got (or 20 s pass).
async fn until_received(
    received: &std::sync::Arc<std::sync::Mutex<Received>>,
    done: impl Fn(&Received) -> bool,
) {
    for _ in 0..400 {
        if done(&received.lock().unwrap()) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let got: Vec<(String, u16)> = received
        .lock()
        .unwrap()
        .requests
        .iter()
        .map(|(h, _, s)| (h["webhook-id"].to_str().unwrap().to_string(), *s))
        .collect();
    panic!("the receiver did not get what was expected within 20 s: {got:?}");
}

/// The destination once its stats satisfy `done` (outcomes are saved a moment after the answers).
async fn until_stats(server: &TestServer, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    until_stats_within(server, id, std::time::Duration::from_secs(10), done).await
}

async fn until_stats_within(
    server: &TestServer,
    id: &str,
    within: std::time::Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut shown = Value::Null;
    for _ in 0..within.as_millis() / 50 {
        shown = server.get(&format!("/api/destinations/{id}")).await.1;
        if done(&shown["stats"]) {
            return shown;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the destination's stats did not come to what was expected: {shown}");
}

async fn create(server: &TestServer, body: Value) -> Value {
    let (status, created) = send_json(
        server,
        reqwest::Method::POST,
        "/api/destinations",
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created
}

fn fast_retries(db: &Db) -> alohook::config::Settings {
    let mut settings = settings(db);
    settings.retry_schedule = Some("200ms,200ms,200ms".into());
    settings
}

crate::on_every_backend! {
/// Every matching change is POSTed once delivered, as the stream shows it, signed so that the
/// Standard Webhooks organisation's own verifier accepts it; what does not match is not sent.
async fn changes_are_delivered_signed_and_filtered(db) {
    let server = TestServer::start(&db).await;
    let (url, received) = receiver(|_| (200, None)).await;
    let created = create(&server, json!({"url": url, "types": ["call.ended"],
        "filter": {"hotline": "19001234"}, "headers": {"X-Api-Key": "crm-key"}})).await;
    let (id, secret) = (created["id"].as_str().unwrap().to_string(),
        created["secret"].as_str().unwrap().to_string());
    for i in 0..5 {
        server.send(&missed(&format!("F{i}"))).await;
    }
    server.send(&json!({"call_id": "other", "call_status": "missed", "hotline": "1800"})).await;
    server.send(&json!({"call_id": "F0", "call_status": "ringing"})).await;
    until_received(&received, |r| r.requests.len() >= 5).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let changes = crate::feed::all_changes(&server, 0, "&types=call.ended&hotline=19001234").await;
    assert_eq!(changes.len(), 5);
    let requests = std::mem::take(&mut received.lock().unwrap().requests);
    assert_eq!(requests.len(), 5, "only what matches, once each");
    let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
    for (headers, body, _) in &requests {
        let change: Value = serde_json::from_str(body).unwrap();
        let seq = change["seq"].as_i64().unwrap();
        assert!(changes.contains(&change), "the change as the stream shows it");
        assert_eq!(headers["webhook-id"], format!("msg_{id}_{seq}").as_str());
        assert_eq!(headers["content-type"], "application/json");
        assert!(headers["user-agent"].to_str().unwrap().starts_with("alohook/"));
        assert_eq!(headers["x-api-key"], "crm-key");
        verifier.verify(body.as_bytes(), headers).expect("the signature verifies");
    }
    until_stats(&server, &id, |stats| stats["delivered"] == 5).await;
    let (_, deliveries) = server.get(&format!("/api/deliveries?destination={id}&state=delivered")).await;
    let items = deliveries["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert_eq!(items[0]["attempts"][0]["status"], 200);
    assert_eq!(items[0]["attempts"][0]["response"], "thanks");
    let shown = until_stats(&server, &id, |stats| stats["delivered"] == 5).await;
    assert_eq!(shown["stats"]["pending"], 0);
    assert!(shown["stats"]["last_success_at"].is_string());
    // A ping goes through the same signing, whatever the filter.
    let (status, ping) = send_json(&server, reqwest::Method::POST,
        &format!("/api/destinations/{id}/ping"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ping["delivered"], true, "{ping}");
    let requests = std::mem::take(&mut received.lock().unwrap().requests);
    let (headers, body, _) = &requests[0];
    let sent: Value = serde_json::from_str(body).unwrap();
    assert_eq!((sent["type"].clone(), sent["seq"].clone()), (json!("test.ping"), Value::Null));
    assert_eq!(sent["destination_id"], id);
    verifier.verify(body.as_bytes(), headers).expect("the ping's signature verifies");
    server.stop().await;
}

/// A receiver that fails for a while: each change is tried again on the schedule with the same
/// webhook-id, a call's later change waits for its earlier one, and all arrive, in order per call.
async fn failures_are_retried_in_order_per_call(db) {
    let server = TestServer::start_with(fast_retries(&db), None).await;
    let (url, received) = receiver(|n| if n < 6 { (500, None) } else { (200, None) }).await;
    let created = create(&server, json!({"url": url, "max_in_flight": 4})).await;
    let id = created["id"].as_str().unwrap().to_string();
    for call in ["R1", "R2"] {
        server.send(&json!({"call_id": call, "call_status": "ringing"})).await;
        server.send(&json!({"call_id": call, "call_status": "answered", "answertime": "2024-01-13 15:00:35"})).await;
        server.send(&missed(call)).await;
    }
    until_received(&received, |r| r.requests.iter().filter(|q| q.2 == 200).count() >= 6).await;
    let requests = std::mem::take(&mut received.lock().unwrap().requests);
    let mut delivered: Vec<(String, i64)> = Vec::new();
    let mut ids: std::collections::HashMap<i64, std::collections::HashSet<String>> = Default::default();
    for (headers, body, status) in &requests {
        let change: Value = serde_json::from_str(body).unwrap();
        let seq = change["seq"].as_i64().unwrap();
        ids.entry(seq).or_default().insert(headers["webhook-id"].to_str().unwrap().to_string());
        if *status == 200 {
            delivered.push((change["call"]["call_id"].as_str().unwrap().to_string(), seq));
        }
    }
    assert!(ids.values().all(|set| set.len() == 1), "one webhook-id per change: {ids:?}");
    for call in ["R1", "R2"] {
        let seqs: Vec<i64> = delivered.iter().filter(|(c, _)| c == call).map(|(_, s)| *s).collect();
        assert_eq!(seqs.len(), 3, "{call}: {delivered:?}");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{call} in order: {seqs:?}");
    }
    // Nothing of a call went out while an earlier change of it was pending.
    for (i, (headers, body, _)) in requests.iter().enumerate() {
        let change: Value = serde_json::from_str(body).unwrap();
        let (call, seq) = (change["call"]["call_id"].clone(), change["seq"].as_i64().unwrap());
        let earlier_undelivered = requests[..i].iter().all(|(_, b, s)| {
            let c: Value = serde_json::from_str(b).unwrap();
            !(c["call"]["call_id"] == call && c["seq"].as_i64().unwrap() < seq && *s == 200)
        });
        let first_of_call = delivered.iter().filter(|(c, _)| *c == call.as_str().unwrap()).map(|(_, s)| *s).min().unwrap();
        if seq != first_of_call {
            assert!(!earlier_undelivered, "{} went out before its call's earlier change was delivered", headers["webhook-id"].to_str().unwrap());
        }
    }
    // Outcomes are saved in batches, a moment after the answers.
    let shown = until_stats(&server, &id, |stats| stats["delivered"] == 6).await;
    assert!(shown["stats"]["failed_attempts"].as_i64().unwrap() >= 6);
    assert!(shown["stats"]["last_error"].as_str().unwrap().contains("500"));
    server.stop().await;
}

/// The last attempt fails: dead. A 410: the destination is disabled with the reason, its change
/// waits, and flows once it is enabled again.
async fn dead_after_the_schedule_and_410_disables(db) {
    let server = TestServer::start_with(fast_retries(&db), None).await;
    let (always_failing, failing) = receiver(|_| (503, None)).await;
    let created = create(&server, json!({"url": always_failing})).await;
    let dead_id = created["id"].as_str().unwrap().to_string();
    server.send(&missed("G1")).await;
    until_received(&failing, |r| r.requests.len() >= 4).await;
    for _ in 0..100 {
        let (_, shown) = server.get(&format!("/api/destinations/{dead_id}")).await;
        if shown["stats"]["dead"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, dead) = server.get(&format!("/api/deliveries?destination={dead_id}&state=dead")).await;
    assert_eq!(dead["items"][0]["attempts"].as_array().unwrap().len(), 4, "{dead}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(failing.lock().unwrap().requests.len(), 4, "no attempt after the last");
    send_json(&server, reqwest::Method::DELETE, &format!("/api/destinations/{dead_id}"), None).await;

    let (gone_url, gone) = receiver(|n| if n == 0 { (410, None) } else { (200, None) }).await;
    let created = create(&server, json!({"url": gone_url})).await;
    let id = created["id"].as_str().unwrap().to_string();
    server.send(&missed("G2")).await;
    until_received(&gone, |r| !r.requests.is_empty()).await;
    let mut shown = Value::Null;
    for _ in 0..100 {
        shown = server.get(&format!("/api/destinations/{id}")).await.1;
        if shown["enabled"] == false {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(shown["enabled"], false, "{shown}");
    assert!(shown["disabled_reason"].as_str().unwrap().contains("410"));
    server.send(&missed("G3")).await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(gone.lock().unwrap().requests.len(), 1, "nothing while disabled");
    send_json(&server, reqwest::Method::PATCH, &format!("/api/destinations/{id}"),
        Some(json!({"enabled": true}))).await;
    until_received(&gone, |r| r.requests.iter().filter(|q| q.2 == 200).count() >= 2).await;
    server.stop().await;
}
}

/// A receiver that takes `delay` to answer 200 and checks that no change is being delivered
/// twice at once (by `webhook-id`).
async fn slow_receiver(
    delay: std::time::Duration,
) -> (String, std::sync::Arc<std::sync::Mutex<SlowReceived>>) {
    use axum::http::HeaderMap;
    let received = std::sync::Arc::new(std::sync::Mutex::new(SlowReceived::default()));
    let state = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let state = state.clone();
            async move {
                let id = headers["webhook-id"].to_str().unwrap().to_string();
                let seq = serde_json::from_str::<Value>(&body).unwrap()["seq"]
                    .as_i64()
                    .unwrap();
                {
                    let mut r = state.lock().unwrap();
                    if !r.active.insert(id.clone()) {
                        r.concurrent_twice += 1;
                    }
                    r.ids.entry(seq).or_default().insert(id.clone());
                }
                // A request whose sender died is dropped half-way: it is no longer under way.
                struct Active(std::sync::Arc<std::sync::Mutex<SlowReceived>>, String);
                impl Drop for Active {
                    fn drop(&mut self) {
                        self.0.lock().unwrap().active.remove(&self.1);
                    }
                }
                let active = Active(state.clone(), id.clone());
                tokio::time::sleep(delay).await;
                drop(active);
                let mut r = state.lock().unwrap();
                r.deliveries += 1;
                *r.times.entry(seq).or_default() += 1;
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

#[derive(Default)]
struct SlowReceived {
    active: std::collections::HashSet<String>,
    concurrent_twice: usize,
    deliveries: usize,
    /// Each change's webhook-ids (one, always) and how many times it was answered.
    ids: std::collections::HashMap<i64, std::collections::HashSet<String>>,
    times: std::collections::HashMap<i64, usize>,
}

async fn until_every_change(
    received: &std::sync::Arc<std::sync::Mutex<SlowReceived>>,
    seqs: &[i64],
    within: std::time::Duration,
) {
    let started = std::time::Instant::now();
    loop {
        let missing: Vec<i64> = {
            let r = received.lock().unwrap();
            seqs.iter()
                .filter(|s| !r.times.contains_key(s))
                .copied()
                .collect()
        };
        if missing.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{} changes never delivered, the first {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

crate::on_every_backend! {
/// A destination that starts at the beginning receives the whole history, then what comes.
async fn a_destination_from_the_beginning_gets_the_whole_history(db) {
    let server = TestServer::start(&db).await;
    for i in 0..40 {
        server.send(&missed(&format!("H{i}"))).await;
    }
    let (url, received) = slow_receiver(std::time::Duration::ZERO).await;
    create(&server, json!({"url": url, "start": "beginning", "ordering": "none"})).await;
    server.send(&missed("H-live")).await;
    let seqs: Vec<i64> = crate::feed::all_changes(&server, 0, "").await
        .iter().map(|c| c["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs.len(), 41);
    until_every_change(&received, &seqs, std::time::Duration::from_secs(20)).await;
    assert_eq!(received.lock().unwrap().deliveries, 41, "once each");
    server.stop().await;
}

/// SIGKILL while deliveries are under way, twice: after the restarts every change is delivered,
/// a repeat only ever with the same webhook-id, never two at once.
async fn a_crash_during_delivery_loses_nothing(db) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let database = db.database();
    let extra: Vec<&str> = match &database {
        Some(url) => vec!["--database", url],
        None => vec![],
    };
    let mut server = serve_process(db.path(), port, &extra);
    let (url, received) = slow_receiver(std::time::Duration::from_millis(20)).await;
    let client = reqwest::Client::new();
    let response = client.post(format!("{base}/api/destinations")).bearer_auth(TOKEN)
        .body(json!({"url": url, "max_in_flight": 8}).to_string()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let sim = tokio::spawn(crate::sim::simulate(crate::sim::sim_args(&base, 400, &[
        "--concurrency", "16", "--max-retries", "200", "--max-backoff", "200", "--timeout", "2000",
    ])));
    for wait in [700, 900] {
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        server.kill().unwrap();
        server.wait().unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        server = serve_process(db.path(), port, &extra);
    }
    let (ok, report) = sim.await.unwrap();
    assert!(ok, "{report:#}");
    let seqs: Vec<i64> = crate::feed::changes_of(&base, 0, "").await
        .iter().map(|c| c["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs.len() as u64, report["acknowledged"].as_u64().unwrap());
    until_every_change(&received, &seqs, std::time::Duration::from_secs(60)).await;
    let r = received.lock().unwrap();
    assert_eq!(r.concurrent_twice, 0, "a change was being delivered twice at once");
    assert!(r.ids.values().all(|ids| ids.len() == 1), "one webhook-id per change");
    println!(
        "{} changes, {} deliveries ({} repeats after the crashes)",
        seqs.len(),
        r.deliveries,
        r.deliveries - seqs.len()
    );
    drop(r);
    server.kill().unwrap();
    server.wait().unwrap();
}
}

/// PostgreSQL, two instances, one destination: one instance at a time delivers to it (no change
/// goes out twice at once, none twice at all while both live); when the one delivering is
/// killed, the other takes over within a lease and delivers the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set ALOHOOK_TEST_POSTGRES_URL to run it"
)]
async fn two_instances_share_a_destination_and_take_over_from_a_dead_one() {
    let db = Db::postgres().await;
    let database = db.database().unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let dir_b = tempfile::tempdir().unwrap();
    let extra = ["--database", database.as_str()];
    let (pg, connection) = tokio_postgres::connect(&database, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let lease_owner = async || -> Option<String> {
        pg.query_opt("SELECT lease_owner FROM destinations", &[])
            .await
            .unwrap()
            .and_then(|row| row.get(0))
    };
    // A alone first, so that it takes the destination's lease; then B.
    let mut a = serve_process(db.path(), port_a, &extra);
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    let (url, received) = slow_receiver(std::time::Duration::from_millis(5)).await;
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{base_a}/api/destinations"))
        .bearer_auth(TOKEN)
        .body(json!({"url": url, "ordering": "none"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let mut a_holds = None;
    for _ in 0..100 {
        a_holds = lease_owner().await;
        if a_holds.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let a_holds = a_holds.expect("A takes the lease");
    let mut b = serve_process(dir_b.path(), port_b, &extra);
    let mut args = crate::sim::sim_args(&base_a, 300, &["--concurrency", "32"]);
    args.extend(["--url".to_string(), format!("{base_b}/webhooks/alohub")]);
    let (ok, report) = crate::sim::simulate(args).await;
    assert!(ok, "{report:#}");
    let seqs: Vec<i64> = crate::feed::changes_of(&base_a, 0, "")
        .await
        .iter()
        .map(|c| c["seq"].as_i64().unwrap())
        .collect();
    until_every_change(&received, &seqs, std::time::Duration::from_secs(60)).await;
    {
        let r = received.lock().unwrap();
        assert_eq!(r.concurrent_twice, 0);
        assert_eq!(
            r.deliveries,
            seqs.len(),
            "each change once while both instances live"
        );
    }
    // A still holds it (B never took it while A lived); kill A: B takes over within a lease.
    assert_eq!(lease_owner().await.as_ref(), Some(&a_holds));
    a.kill().unwrap();
    a.wait().unwrap();
    let survivor = &base_b;
    let killed = std::time::Instant::now();
    for i in 0..20 {
        let response = client
            .post(format!("{survivor}/webhooks/alohub"))
            .header("authorization", KEY)
            .body(missed(&format!("after-{i}")).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let seqs: Vec<i64> = crate::feed::changes_of(survivor, 0, "")
        .await
        .iter()
        .map(|c| c["seq"].as_i64().unwrap())
        .collect();
    until_every_change(&received, &seqs, std::time::Duration::from_secs(70)).await;
    println!(
        "delivered by the survivor {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(received.lock().unwrap().concurrent_twice, 0);
    b.kill().unwrap();
    b.wait().unwrap();
    db.cleanup().await;
}

crate::on_every_backend! {
/// The simulator's traffic (resends and reordering on), two destinations with different filters,
/// one failing at random 30 % of the time: every matching change is delivered to each, none that
/// does not match, every signature verifies, one webhook-id per change, per-call order kept.
async fn simulated_traffic_reaches_two_destinations_one_failing_at_random(db) {
    let server = TestServer::start_with(fast_retries(&db), None).await;
    let (all_url, all) = receiver(|_| (200, None)).await;
    let flaky_answers = std::sync::Arc::new(std::sync::Mutex::new(fastrand::Rng::with_seed(7)));
    let (flaky_url, flaky) = receiver(move |_| {
        if flaky_answers.lock().unwrap().u8(..100) < 30 { (500, None) } else { (200, None) }
    })
    .await;
    let everything = create(&server, json!({"url": all_url, "ordering": "none"})).await;
    let missed_only = create(&server, json!({"url": flaky_url,
        "filter": {"status": "missed"}, "types": ["call.ended", "call.updated"]})).await;
    let (ok, report) = crate::sim::simulate(crate::sim::sim_args(&server.base, 300,
        &["--duplicates", "0.1", "--reorder", "0.2", "--concurrency", "16"])).await;
    assert!(ok, "{report:#}");
    let changes = crate::feed::all_changes(&server, 0, "").await;
    let matching = crate::feed::all_changes(&server, 0, "&status=missed&types=call.ended,call.updated").await;
    assert!(!matching.is_empty() && matching.len() < changes.len());
    let delivered = |r: &Received| r.requests.iter().filter(|q| q.2 == 200).count();
    until_received(&all, |r| delivered(r) >= changes.len()).await;
    until_received(&flaky, |r| delivered(r) >= matching.len()).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for (destination, received, expected) in [
        (&everything, &all, &changes),
        (&missed_only, &flaky, &matching),
    ] {
        let verifier =
            standardwebhooks::Webhook::new(destination["secret"].as_str().unwrap()).unwrap();
        let requests = std::mem::take(&mut received.lock().unwrap().requests);
        let mut ids: std::collections::HashMap<i64, String> = Default::default();
        let mut got: Vec<Value> = Vec::new();
        let mut per_call: std::collections::HashMap<String, Vec<i64>> = Default::default();
        for (headers, body, status) in &requests {
            verifier.verify(body.as_bytes(), headers).expect("the signature verifies");
            let change: Value = serde_json::from_str(body).unwrap();
            let seq = change["seq"].as_i64().unwrap();
            let id = headers["webhook-id"].to_str().unwrap().to_string();
            assert_eq!(ids.entry(seq).or_insert_with(|| id.clone()), &id);
            if *status == 200 {
                per_call.entry(change["call"]["call_id"].as_str().unwrap_or("").to_string())
                    .or_default().push(seq);
                got.push(change);
            }
        }
        got.sort_by_key(|c| c["seq"].as_i64());
        assert_eq!(&got, expected, "every matching change delivered once, nothing else");
        if destination["ordering"] == "per_call" {
            for (call, seqs) in per_call {
                assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{call}: {seqs:?}");
            }
        }
    }
    server.stop().await;
}
}

/// A JetStream stream of its own on the machine's NATS server (127.0.0.1:4222), taking the
/// subjects under a prefix of its own; answers the context, the stream and the prefix.
async fn jetstream_stream() -> (async_nats::jetstream::Context, String, String) {
    let client = async_nats::connect("127.0.0.1:4222")
        .await
        .expect("these tests need NATS with JetStream on 127.0.0.1:4222 (nats-server -js)");
    let context = async_nats::jetstream::new(client);
    let prefix = format!("alohook_test_{:016x}", fastrand::u64(..));
    let name = prefix.to_uppercase();
    context
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: std::time::Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .expect("making a JetStream stream");
    (context, name, prefix)
}

crate::on_every_backend! {
/// 10 000 changes and more forwarded to a JetStream stream: every one there once, on the subject
/// of its type, with its webhook-id as Nats-Msg-Id and a signature that verifies; a republish
/// of one (same Nats-Msg-Id) is dropped by JetStream as a duplicate.
async fn changes_are_published_to_jetstream_once_each(db) {
    let (context, name, prefix) = jetstream_stream().await;
    let server = TestServer::start(&db).await;
    let destination = create(&server, json!({"url": "nats://127.0.0.1:4222",
        "subject": format!("{prefix}.{{type}}"), "ordering": "none", "max_in_flight": 64})).await;
    assert_eq!(destination["subject"], format!("{prefix}.{{type}}"));
    let (ok, report) = crate::sim::simulate(crate::sim::sim_args(&server.base, 6400,
        &["--concurrency", "32"])).await;
    assert!(ok, "{report:#}");
    let changes = crate::feed::all_changes(&server, 0, "").await;
    assert!(changes.len() >= 10_000, "{} changes", changes.len());
    let id = destination["id"].as_str().unwrap();
    let stats = until_stats_within(&server, id, std::time::Duration::from_secs(180),
        |s| s["delivered"].as_u64() == Some(changes.len() as u64)).await;
    assert_eq!(stats["stats"]["pending"], 0, "{stats}");
    // A publish JetStream acknowledged is a success in the figures, not a failed attempt.
    assert_eq!(stats["stats"]["failed_attempts"], 0, "{stats}");
    assert_eq!(stats["stats"]["last_error"], Value::Null, "{stats}");
    assert!(stats["stats"]["last_success_at"].is_string(), "{stats}");
    let mut stream = context.get_stream(&name).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, changes.len() as u64, "once each");

    let verifier = standardwebhooks::Webhook::new(destination["secret"].as_str().unwrap()).unwrap();
    let mut seen = std::collections::HashMap::new();
    for n in 1..=changes.len() as u64 {
        let message = stream.get_raw_message(n).await.unwrap();
        let change: Value = serde_json::from_slice(&message.payload).unwrap();
        let seq = change["seq"].as_i64().unwrap();
        assert_eq!(message.subject.as_str(), format!("{prefix}.{}", change["type"].as_str().unwrap()));
        let msg_id = message.headers.get("Nats-Msg-Id").unwrap().as_str().to_string();
        let mut headers = axum::http::HeaderMap::new();
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            let value = message.headers.get(name).unwrap().as_str();
            headers.insert(name, value.parse().unwrap());
        }
        assert_eq!(headers["webhook-id"].to_str().unwrap(), msg_id);
        assert!(message.headers.get("user-agent").unwrap().as_str().starts_with("alohook/"));
        verifier.verify(&message.payload, &headers).expect("the signature verifies");
        assert!(seen.insert(seq, msg_id).is_none(), "change {seq} twice");
    }
    let mut delivered: Vec<i64> = seen.keys().copied().collect();
    delivered.sort();
    let expected: Vec<i64> = changes.iter().map(|c| c["seq"].as_i64().unwrap()).collect();
    assert_eq!(delivered, expected);

    // A republish with the same Nats-Msg-Id (what a retry or a replay sends) is a duplicate.
    let (seq, msg_id) = seen.iter().next().unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id.as_str());
    let ack = context.publish_with_headers(format!("{prefix}.call.updated"), headers,
        format!("{{\"seq\":{seq}}}").into()).await.unwrap().await.unwrap();
    assert!(ack.duplicate);
    assert_eq!(stream.info().await.unwrap().state.messages, changes.len() as u64);
    server.stop().await;
    context.delete_stream(&name).await.unwrap();
}

/// A NATS destination with no stream for its subject fails its attempts (JetStream has no
/// responder), and delivers once the stream is there; a bad subject is a 400 naming it.
async fn jetstream_without_a_stream_retries(db) {
    let mut patient = settings(&db);
    patient.retry_schedule = Some(vec!["300ms"; 30].join(","));
    let server = TestServer::start_with(patient, None).await;
    let (status, error) = send_json(&server, reqwest::Method::POST, "/api/destinations",
        Some(json!({"url": "nats://127.0.0.1:4222", "subject": "a b.{type}"}))).await;
    assert_eq!((status, error["parameter"].clone()), (StatusCode::BAD_REQUEST, json!("subject")));
    let prefix = format!("alohook_test_{:016x}", fastrand::u64(..));
    let destination = create(&server, json!({"url": "nats://127.0.0.1:4222",
        "subject": format!("{prefix}.{{type}}")})).await;
    let id = destination["id"].as_str().unwrap();
    server.send(&missed("N1")).await;
    let shown = until_stats(&server, id, |s| s["failed_attempts"].as_i64() >= Some(1)).await;
    assert!(shown["stats"]["last_error"].as_str().is_some(), "{shown}");
    let client = async_nats::connect("127.0.0.1:4222").await.unwrap();
    let context = async_nats::jetstream::new(client);
    let name = prefix.to_uppercase();
    context.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(), subjects: vec![format!("{prefix}.>")], ..Default::default()
    }).await.unwrap();
    let changes = crate::feed::all_changes(&server, 0, "").await.len();
    until_stats(&server, id, |s| s["delivered"].as_u64() == Some(changes as u64)).await;
    let mut stream = context.get_stream(&name).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, changes as u64);
    server.stop().await;
    context.delete_stream(&name).await.unwrap();
}
}

/// A receiver on loopback that answers each request with `answer(body)`; what it was sent, as
/// (webhook-id, seq, status), in order.
async fn body_receiver(
    answer: impl Fn(&str) -> u16 + Send + Sync + 'static,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, i64, u16)>>>,
) {
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let state = received.clone();
    let answer = std::sync::Arc::new(answer);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let (state, answer) = (state.clone(), answer.clone());
            async move {
                let status = answer(&body);
                let seq = serde_json::from_str::<Value>(&body).unwrap()["seq"]
                    .as_i64()
                    .unwrap();
                let id = headers["webhook-id"].to_str().unwrap().to_string();
                state.lock().unwrap().push((id, seq, status));
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// The job once it is no longer running.
async fn until_job_done(server: &TestServer, id: &str) -> Value {
    for _ in 0..400 {
        let (status, job) = server.get(&format!("/api/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        if job["state"] != "running" {
            return job;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the job {id} did not end within 20 s");
}

async fn replay(server: &TestServer, destination: &str, filter: Value) -> (StatusCode, Value) {
    send_json(
        server,
        reqwest::Method::POST,
        &format!("/api/destinations/{destination}/replay"),
        Some(filter),
    )
    .await
}

crate::on_every_backend! {
/// Replay queues again every change its filter matches, as a job: the dead ones once the
/// receiver is back, or every missed call's changes; each keeps its webhook-id, per-call order
/// holds where asked, and bad fields are named.
async fn replay_queues_every_match_again(db) {
    let server = TestServer::start_with(fast_retries(&db), None).await;
    let healed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = healed.clone();
    let (url, received) = body_receiver(move |body| {
        if body.contains("\"R-dead") && !flag.load(std::sync::atomic::Ordering::SeqCst) { 500 } else { 200 }
    }).await;
    let (ordered_url, ordered) = body_receiver(|_| 200).await;
    let destination = create(&server, json!({"url": url, "ordering": "none"})).await;
    let id = destination["id"].as_str().unwrap().to_string();
    let ordered_destination = create(&server, json!({"url": ordered_url})).await;
    let ordered_id = ordered_destination["id"].as_str().unwrap().to_string();
    for i in 0..4 {
        server.send(&missed(&format!("R-ok-{i}"))).await;
        server.send(&json!({"call_id": format!("R-ok-{i}"), "call_status": "answered"})).await;
    }
    for i in 0..2 {
        server.send(&missed(&format!("R-dead-{i}"))).await;
    }
    let changes = crate::feed::all_changes(&server, 0, "").await;
    let dead: Vec<i64> = changes.iter()
        .filter(|c| c["call"]["call_id"].as_str().unwrap_or("").starts_with("R-dead"))
        .map(|c| c["seq"].as_i64().unwrap()).collect();
    assert_eq!(dead.len(), 2);
    let total = changes.len() as i64;
    until_stats(&server, &id, |s| s["dead"] == json!(2) && s["delivered"] == json!(total - 2)).await;
    until_stats(&server, &ordered_id, |s| s["delivered"] == json!(total)).await;
    let first_ids: std::collections::HashMap<i64, String> = received.lock().unwrap().iter()
        .map(|(id, seq, _)| (*seq, id.clone())).collect();

    // The dead ones, now that the receiver takes them.
    healed.store(true, std::sync::atomic::Ordering::SeqCst);
    received.lock().unwrap().clear();
    let (status, started) = replay(&server, &id, json!({"state": "dead"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["matched"], 2);
    let job = until_job_done(&server, started["job_id"].as_str().unwrap()).await;
    assert_eq!((job["state"].clone(), job["matched"].clone(), job["queued"].clone()),
        (json!("done"), json!(2), json!(2)), "{job}");
    until_stats(&server, &id, |s| s["dead"] == json!(0) && s["delivered"] == json!(total)).await;
    let mut again: Vec<(String, i64, u16)> = received.lock().unwrap().clone();
    again.sort_by_key(|r| r.1);
    assert_eq!(again.iter().map(|r| r.1).collect::<Vec<_>>(), dead);
    for (webhook_id, seq, status) in &again {
        assert_eq!((webhook_id, *status), (&first_ids[seq], 200), "the same webhook-id");
    }

    // Every change of a missed call, all of them (not a page).
    received.lock().unwrap().clear();
    let missed_changes = crate::feed::all_changes(&server, 0, "&status=missed").await;
    let (status, started) = replay(&server, &id, json!({"status": "missed", "from": "2000-01-01"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["matched"], missed_changes.len());
    let job = until_job_done(&server, started["job_id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "done", "{job}");
    until_stats(&server, &id, |s| s["pending"] == json!(0)).await;
    let mut got: Vec<i64> = received.lock().unwrap().iter().map(|r| r.1).collect();
    got.sort();
    let want: Vec<i64> = missed_changes.iter().map(|c| c["seq"].as_i64().unwrap()).collect();
    assert_eq!(got, want);
    let (_, none) = replay(&server, &id, json!({"from": "2000-01-01", "to": "2000-01-02"})).await;
    assert_eq!(none["matched"], 0);

    // Everything again to a per-call destination: each call's changes in order.
    ordered.lock().unwrap().clear();
    let (_, started) = replay(&server, &ordered_id, json!({})).await;
    assert_eq!(started["matched"], total);
    let job = until_job_done(&server, started["job_id"].as_str().unwrap()).await;
    assert_eq!((job["state"].clone(), job["queued"].clone()), (json!("done"), json!(total)), "{job}");
    for _ in 0..600 {
        if ordered.lock().unwrap().len() as i64 >= total { break; }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let sent: Vec<i64> = ordered.lock().unwrap().iter().map(|r| r.1).collect();
    assert_eq!(sent.len() as i64, total, "{sent:?}");
    let call_of: std::collections::HashMap<i64, String> = changes.iter()
        .map(|c| (c["seq"].as_i64().unwrap(), c["call"]["call_id"].as_str().unwrap_or("").to_string()))
        .collect();
    let mut per_call: std::collections::HashMap<&str, Vec<i64>> = Default::default();
    for seq in &sent {
        per_call.entry(call_of[seq].as_str()).or_default().push(*seq);
    }
    for (call, seqs) in per_call {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{call}: {seqs:?}");
    }

    for (filter, parameter) in [
        (json!({"colour": "red"}), "colour"),
        (json!({"state": "pending"}), "state"),
        (json!({"from": "yesterday"}), "from"),
        (json!({"types": ["call.bogus"]}), "types"),
        (json!({"direction": "sideways"}), "direction"),
        (json!([1]), "body"),
    ] {
        let (status, error) = replay(&server, &id, filter.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{filter}");
        assert_eq!(error["parameter"], parameter, "{filter}: {error}");
    }
    let (status, _) = replay(&server, "dst_nope", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, error) = server.get("/api/jobs/job_nope").await;
    assert_eq!((status, error["error"].clone()), (StatusCode::NOT_FOUND, json!("not_found")));
    server.stop().await;
}
}

/// The line of a metric with the destination's label, if /metrics has one.
fn metric_line(metrics: &str, name: &str, destination: &str) -> Option<f64> {
    let prefix = format!("{name}{{destination=\"{destination}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

crate::on_every_backend! {
/// A destination that is down shows on /metrics: its failed attempts, its backlog and the age
/// of its oldest pending change (what operators alert on); once it is removed, its gauges go.
async fn a_down_destination_shows_on_the_metrics(db) {
    let server = TestServer::start(&db).await;
    let destination = create(&server, json!({"url": "http://127.0.0.1:9/hook"})).await;
    let id = destination["id"].as_str().unwrap().to_string();
    for i in 0..3 {
        server.send(&missed(&format!("M{i}"))).await;
    }
    let mut metrics = String::new();
    for _ in 0..300 {
        metrics = server.metrics().await;
        if metric_line(&metrics, "alohook_delivery_pending", &id) == Some(3.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(metric_line(&metrics, "alohook_delivery_pending", &id), Some(3.0), "{metrics}");
    assert!(metric_line(&metrics, "alohook_delivery_oldest_pending_seconds", &id).unwrap() >= 0.0);
    // Nothing given up yet, and the series is there to alert on.
    assert_eq!(metric_line(&metrics, "alohook_delivery_dead_total", &id), Some(0.0), "{metrics}");
    assert!(metrics.contains(&format!(
        "alohook_deliveries_total{{destination=\"{id}\",outcome=\"failed\"}}")), "{metrics}");
    assert!(metrics.contains("alohook_delivery_attempt_seconds_count"), "{metrics}");
    let (status, _) = send_json(&server, reqwest::Method::DELETE,
        &format!("/api/destinations/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for _ in 0..300 {
        metrics = server.metrics().await;
        if metric_line(&metrics, "alohook_delivery_pending", &id).is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(metric_line(&metrics, "alohook_delivery_oldest_pending_seconds", &id), None, "{metrics}");
    assert_eq!(metric_line(&metrics, "alohook_delivery_dead_total", &id), None, "{metrics}");
    server.stop().await;
}
}

crate::on_every_backend! {
/// Each kind of failure is a failed attempt, tried again with the same webhook-id: a 429 whose
/// Retry-After holds the next attempt back, a redirect (not followed), no answer within the
/// destination's time limit, a refused connection; then a 200 delivers.
async fn each_kind_of_failure_is_retried(db) {
    use axum::response::IntoResponse;
    let server = TestServer::start_with(fast_retries(&db), None).await;
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>> = Default::default();
    let state = seen.clone();
    let followed = seen.clone();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(move |headers: axum::http::HeaderMap| {
            let state = state.clone();
            async move {
                let n = {
                    let mut seen = state.lock().unwrap();
                    seen.push((std::time::Instant::now(), headers["webhook-id"].to_str().unwrap().to_string()));
                    seen.len()
                };
                match n {
                    1 => (axum::http::StatusCode::TOO_MANY_REQUESTS, [("retry-after", "2")]).into_response(),
                    2 => (axum::http::StatusCode::FOUND, [("location", "/elsewhere")]).into_response(),
                    3 => {
                        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                        axum::http::StatusCode::OK.into_response()
                    }
                    _ => axum::http::StatusCode::OK.into_response(),
                }
            }
        }))
        .route("/elsewhere", axum::routing::any(move || {
            followed.lock().unwrap().push((std::time::Instant::now(), "a redirect followed".into()));
            async { axum::http::StatusCode::OK }
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let created = create(&server, json!({"url": url, "timeout_seconds": 1})).await;
    let id = created["id"].as_str().unwrap().to_string();
    let refused = create(&server, json!({"url": "http://127.0.0.1:9/hook"})).await;
    let refused_id = refused["id"].as_str().unwrap().to_string();
    server.send(&missed("F1")).await;
    until_stats_within(&server, &id, std::time::Duration::from_secs(20),
        |s| s["delivered"] == json!(1)).await;

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen.iter().all(|(_, webhook_id)| *webhook_id == seen[0].1), "one webhook-id");
    let held_back = seen[1].0 - seen[0].0;
    assert!(held_back >= std::time::Duration::from_millis(1900), "Retry-After: 2 waited {held_back:?}");
    let (_, page) = server.get(&format!("/api/deliveries?destination={id}")).await;
    let delivery = &page["items"][0];
    assert_eq!(delivery["state"], "delivered", "{page}");
    assert_eq!(delivery["webhook_id"], seen[0].1.as_str());
    let attempts = delivery["attempts"].as_array().unwrap();
    let statuses: Vec<Value> = attempts.iter().map(|a| a["status"].clone()).collect();
    assert_eq!(statuses, vec![json!(429), json!(302), Value::Null, json!(200)], "{delivery}");
    assert!(attempts[2]["error"].as_str().unwrap().contains("no answer within 1 s"), "{delivery}");
    assert!(attempts[2]["duration_ms"].as_i64().unwrap() >= 900);
    assert_eq!(attempts[3]["error"], Value::Null);

    // Nothing listens on port 9: every attempt is refused, and then the delivery is dead.
    let shown = until_stats_within(&server, &refused_id, std::time::Duration::from_secs(20),
        |s| s["dead"] == json!(1)).await;
    assert!(shown["stats"]["last_error"].as_str().unwrap().to_lowercase().contains("connect"), "{shown}");
    let (_, page) = server.get(&format!("/api/deliveries?destination={refused_id}&state=dead")).await;
    assert_eq!(page["items"][0]["attempts"].as_array().unwrap().len(), 4, "{page}");
    server.stop().await;
}
}

crate::on_every_backend! {
/// Retries follow the schedule and Retry-After on every attempt, not only the first: an
/// attempt's outcome is not yet saved when the next look for due retries comes, and that look
/// must not send the change again at once.
async fn later_attempts_keep_to_the_schedule(db) {
    let server = TestServer::start_with(fast_retries(&db), None).await;
    let seen: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<std::time::Instant>>>> =
        Default::default();
    let state = seen.clone();
    let app = axum::Router::new().route("/hook", axum::routing::post(
        move |headers: axum::http::HeaderMap| {
            let state = state.clone();
            async move {
                use axum::response::IntoResponse;
                let id = headers["webhook-id"].to_str().unwrap().to_string();
                let n = {
                    let mut seen = state.lock().unwrap();
                    let times = seen.entry(id).or_default();
                    times.push(std::time::Instant::now());
                    times.len()
                };
                match n {
                    1 => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    2 => (axum::http::StatusCode::TOO_MANY_REQUESTS, [("retry-after", "2")]).into_response(),
                    _ => axum::http::StatusCode::OK.into_response(),
                }
            }
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let created = create(&server, json!({"url": url, "ordering": "none"})).await;
    let id = created["id"].as_str().unwrap().to_string();
    for i in 0..8 {
        server.send(&missed(&format!("L{i}"))).await;
    }
    let changes = crate::feed::all_changes(&server, 0, "").await.len() as i64;
    until_stats_within(&server, &id, std::time::Duration::from_secs(30),
        |s| s["delivered"] == json!(changes)).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len() as i64, changes);
    for (webhook_id, times) in seen {
        assert_eq!(times.len(), 3, "{webhook_id}: 500, 429, 200 and nothing more");
        let second_wait = times[2] - times[1];
        assert!(second_wait >= std::time::Duration::from_millis(1900),
            "{webhook_id}: Retry-After: 2 on the second attempt, the third came after {second_wait:?}");
    }
    server.stop().await;
}
}
